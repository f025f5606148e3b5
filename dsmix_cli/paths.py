"""File names and folder walks: names that are not valid UTF-8, links, loops.

Names. On Linux and macOS a file name is a string of bytes; Python shows the bytes that are not
valid UTF-8 as lone surrogates, which no UTF-8 file (CSV, JSON) or terminal can hold. Every name
the tool writes (CSV, JSON, tables, messages) goes through `path_text`: a valid UTF-8 name is
written as it is; each byte that is not part of valid UTF-8 is written `\\xNN` (two lowercase hex
digits, as Python prints such bytes), and a backslash of the name that is itself followed by
`x` and two hex digits is written `\\x5c`, so the text is unambiguous. `text_path` turns such a
text back into the exact name (`text_path(path_text(p)) == p`).

Walks. `walk_files` lists the files under a folder and `glob_files` the files a pattern matches,
each real file once and in sorted order. Neither leaves the folder through a link to a
directory: directory links are never followed (their targets inside the folder are visited
where they really are), so a link loop or a link out of the folder cannot add files. A link to
a file is followed (it names one file; a second name of a file already listed is dropped). What
is skipped is returned as one line per item (loops, links out of the folder, dangling links,
special files such as FIFOs and devices, folders that cannot be listed).
"""

from __future__ import annotations

import errno
import fnmatch
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

_SURROGATE = re.compile("[\udc80-\udcff]")
_OTHER_SURROGATE = re.compile("[\ud800-\udfff]")
_LITERAL_ESCAPE = re.compile(r"\\(?=x[0-9a-fA-F]{2})")
_ESCAPE = re.compile(r"\\x([0-9a-fA-F]{2})")
_MAGIC = re.compile(r"[*?[]")


def path_text(path: str | os.PathLike | None) -> str:
    """The text form of a file name for CSV, JSON, tables and messages (always valid UTF-8).

    Undecodable bytes become `\\xNN`; a literal backslash before `xNN` becomes `\\x5c`; any
    other name is returned unchanged.
    """
    if path is None:
        return ""
    text = os.fspath(path)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if "\\" in text:
        text = _LITERAL_ESCAPE.sub(r"\\x5c", text)
    if _OTHER_SURROGATE.search(text):
        text = _SURROGATE.sub(lambda m: f"\\x{ord(m.group()) - 0xDC00:02x}", text)
        # surrogates outside the escape range (Windows names that are not valid UTF-16)
        text = _OTHER_SURROGATE.sub(lambda m: "".join(f"\\x{b:02x}" for b in m.group().encode("utf-8", "surrogatepass")),
                                    text)
    return text


def text_path(text: str) -> Path:
    """The file name a `path_text` text stands for (the inverse of `path_text`)."""

    def unescape(m: re.Match) -> str:
        byte = int(m.group(1), 16)
        return chr(byte) if byte < 0x80 else chr(0xDC00 + byte)

    return Path(_ESCAPE.sub(unescape, text))


@dataclass
class Walk:
    """What a walk found: the files (sorted, each real file once) and one line per skipped item."""

    files: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def _is_inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


class _Walker:
    """One walk over a folder: `visit(folder)` adds files to `walk`, never following directory links."""

    def __init__(self, root: Path, accept: Callable[[str], bool], max_depth: int | None):
        self.root = root
        self.real_root = os.path.realpath(root)
        self.accept = accept
        self.max_depth = max_depth
        self.walk = Walk()
        self.seen_files: set[str] = set()
        self.seen_dirs: set[tuple[int, int]] = set()
        self.found: list[tuple[Path, tuple[str, ...]]] = []
        self.skips: list[tuple[str, tuple[str, ...] | None]] = []  # (line, parts of a skipped file)

    def skip(self, path: Path, why: str, parts: tuple[str, ...] | None = None) -> None:
        """Note a skipped item; `parts` (its path below the root) marks a file, None a folder."""
        line = f"{path_text(path)}: skipped: {why}"
        self.walk.skipped.append(line)
        self.skips.append((line, parts))

    def _add_file(self, path: Path, real: str, parts: tuple[str, ...]) -> None:
        if real in self.seen_files:
            self.skip(path, "another name of a file already listed", parts)
            return
        self.seen_files.add(real)
        self.found.append((path, parts))

    def _link(self, path: Path, parts: tuple[str, ...], depth: int) -> None:
        real = os.path.realpath(path)
        try:
            st = os.stat(path)
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # a chain of links that never ends
                if self.accept(path.name):
                    self.skip(path, "link loop", parts)
            elif self.accept(path.name):
                try:
                    target = path_text(os.readlink(path))
                except OSError:
                    target = "?"
                self.skip(path, f"dangling link (to {target})", parts)
            return
        if stat.S_ISDIR(st.st_mode):
            if self.max_depth is not None and depth + 1 >= self.max_depth:
                return  # the walk would not go down there anyway
            here = os.path.realpath(path.parent)
            if _is_inside(here, real):
                self.skip(path, f"link loop (it points to {path_text(real)}, a folder this walk is in)")
            elif not _is_inside(real, self.real_root):
                self.skip(path, f"link to a folder out of {path_text(self.root)} (not followed)")
            # a link to another folder inside the walk: its files are listed where they are
            return
        if self.accept(path.name):
            if stat.S_ISREG(st.st_mode):
                self._add_file(path, real, parts)
            else:
                self.skip(path, "not a regular file (a FIFO, socket or device)", parts)

    def visit(self, folder: Path, parts: tuple[str, ...] = (), depth: int = 0) -> None:
        try:
            st = os.stat(folder)
            key = (st.st_dev, st.st_ino)
            if key in self.seen_dirs:  # a bind mount or similar loop that is not a symlink
                self.skip(folder, "folder already visited (a mount loop)")
                return
            self.seen_dirs.add(key)
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            self.skip(folder, f"cannot list the folder ({exc.strerror})")
            return
        for entry in entries:
            path = folder / entry.name
            sub = parts + (entry.name,)
            try:
                if entry.is_symlink():
                    self._link(path, sub, depth)
                elif entry.is_dir(follow_symlinks=False):
                    if self.max_depth is None or depth + 1 < self.max_depth:
                        self.visit(path, sub, depth + 1)
                elif entry.is_file(follow_symlinks=False):
                    if self.accept(entry.name):
                        self._add_file(path, os.path.realpath(path), sub)
                elif self.accept(entry.name):
                    self.skip(path, "not a regular file (a FIFO, socket or device)", sub)
            except OSError as exc:
                self.skip(path, f"cannot read ({exc.strerror})", sub)


def walk_files(folder: str | os.PathLike, accept: Callable[[str], bool] = lambda name: True,
               max_depth: int | None = None) -> Walk:
    """The files under `folder` (recursively) whose name `accept` takes, sorted by path.

    Args:
        folder: where to start; a link given here is followed (the user named it).
        accept: takes a file name, e.g. `imageio.is_image_file`.
        max_depth: 1 = the folder's own files only; None = no limit.

    Returns:
        A `Walk`: every real file once, directory links not followed, skips named.
    """
    walker = _Walker(Path(folder), accept, max_depth)
    walker.visit(Path(folder))
    walker.walk.files = sorted((p for p, _ in walker.found), key=str)
    return walker.walk


def has_magic(text: str) -> bool:
    """True when `text` holds a glob wildcard (`*`, `?` or `[`)."""
    return bool(_MAGIC.search(text))


def _match(pattern: tuple[str, ...], parts: tuple[str, ...]) -> bool:
    """Glob semantics on path components: `**` spans any number of folders, `*`, `?` and
    `[...]` stay within one name and, as in the shell, do not match a leading dot."""
    if not pattern:
        return not parts
    head = pattern[0]
    if head == "**":
        for k in range(len(parts) + 1):
            if any(p.startswith(".") for p in parts[:k]):
                break
            if _match(pattern[1:], parts[k:]):
                return True
        return False
    if not parts:
        return False
    name = parts[0]
    if name.startswith(".") and not head.startswith("."):
        return False
    return fnmatch.fnmatch(name, head) and _match(pattern[1:], parts[1:])


def glob_files(pattern: str, accept: Callable[[str], bool] = lambda name: True) -> Walk:
    """The files a glob pattern matches (`**` = any depth), sorted, without following directory
    links: the walk starts at the pattern's fixed leading folders and stays under them."""
    parts = Path(pattern).parts
    fixed = 0
    while fixed < len(parts) and not has_magic(parts[fixed]):
        fixed += 1
    base = Path(*parts[:fixed]) if fixed else Path(".")
    rest = tuple(parts[fixed:])
    if not rest:
        return Walk(files=[base] if base.is_file() else [])
    depth = None if "**" in rest else len(rest)
    if not base.is_dir():
        return Walk()
    walker = _Walker(base, accept, depth)
    walker.visit(base)
    files = [p for p, rel in walker.found if _match(rest, rel)]
    skipped = [line for line, rel in walker.skips if rel is None or _match(rest, rel)]
    return Walk(files=sorted(files, key=str), skipped=skipped)
