"""The checks every label-file reader applies to its entries, before any work starts.

* **Once each**: a name listed twice (whatever its scores) would count twice and could land on
  both sides of a split. `Unique` refuses the second occurrence, naming the file and both lines.
* **Inside the dataset folder**: an entry that resolves outside the folder it is read from
  (an absolute path, `..`, or a symbolic link leading elsewhere) is refused unless the user
  allows it (`--allow-outside-root`). `Confinement` decides, first on the path as written
  (`..` collapsed), then on the path with every symbolic link resolved, so a link inside the
  folder that points out of it is caught too. Resolving is cached per folder, and a folder is
  listed once to learn which of its entries are links, so a 700k-entry label file costs one
  listing per folder, not one system call per entry.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path
from typing import Any

from dsmix_cli.errors import DatasetError


def name_key(name: str) -> str:
    """A label-file name in a comparable form: `./a//b.png` and `a/b.png` are the same name."""
    return posixpath.normpath(name.strip().replace("\\", "/"))


class Unique:
    """Refuses a key seen before in the same label file.

    Args:
        file: the label file (named in the error).
        what: what a key is, for the message ("name", "distorted image", "reference").
        unit: "line" for text files, "entry" for MATLAB files.
    """

    def __init__(self, file: Path, what: str = "name", unit: str = "line"):
        self.file, self.what, self.unit = file, what, unit
        self._seen: dict[Any, tuple[int | None, str]] = {}

    def add(self, key: Any, line: int | None, shown: str | None = None, detail: str = "") -> None:
        """Record `key` (from `line`); raise `DatasetError` when it was listed before.

        Args:
            shown: how the entry reads in the file (default: the key).
            detail: what this occurrence says (e.g. its score), shown beside the first one's.
        """
        first = self._seen.get(key)
        if first is None:
            self._seen[key] = (line, detail)
            return
        first_line, first_detail = first
        at = f"{self.unit} {line}: " if line is not None else ""
        was = f"{self.unit} {first_line}" if first_line is not None else "an earlier entry"
        details = f" ({first_detail} there, {detail} here)" if detail and first_detail else ""
        shown = shown if shown is not None else repr(key)
        raise DatasetError(f"{at}{self.what} {shown} is listed twice, first at "
                           f"{was}{details}; each image may appear once (a repeated image counts twice and can "
                           f"land on both sides of a split)", self.file)


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


class Confinement:
    """Whether label entries lie inside a dataset folder, symbolic links resolved.

    Args:
        root: the dataset folder.
        allow: accept everything (`--allow-outside-root`); then no check costs anything.
        option: how the folder is named in messages ("--root", "the --data folder").
        extra_roots: further folders entries may lie in (e.g. the references folder a
            `dsmix synthesize` run recorded for its manifest).
    """

    def __init__(self, root: str | Path, allow: bool = False, option: str = "--root",
                 extra_roots: tuple[str | Path, ...] = ()):
        self.allow, self.option = allow, option
        self.root = os.path.abspath(os.path.expanduser(root))
        self._roots = [self.root] + [os.path.abspath(os.path.expanduser(str(r))) for r in extra_roots]
        self._real_roots: list[str] | None = None
        self._real_dirs: dict[str, str] = {}
        self._links: dict[str, frozenset[str]] = {}
        self._folder_inside: dict[str, bool] = {}

    def _links_in(self, folder: str) -> frozenset[str]:
        links = self._links.get(folder)
        if links is None:
            try:
                with os.scandir(folder) as it:
                    links = frozenset(e.name for e in it if e.is_symlink())
            except OSError:
                links = frozenset()
            self._links[folder] = links
        return links

    def real_path(self, path: str | Path) -> str:
        """`os.path.realpath(path)`, with the folder part resolved once per folder."""
        return self._real(os.path.abspath(path))

    def _real(self, p: str) -> str:
        parent, name = os.path.split(p)
        real_parent = self._real_dirs.get(parent)
        if real_parent is None:
            real_parent = self._real_dirs[parent] = os.path.realpath(parent)
        full = os.path.join(real_parent, name)
        if name in self._links_in(real_parent):
            full = os.path.realpath(full)
        return full

    def check(self, path: str | Path, file: Path, line: int | None, name: str, unit: str = "line",
              resolve: bool = True) -> None:
        """Raise `DatasetError` (naming `file` and `line`) when `path`, the place entry `name`
        points at, lies outside the folder (as written, `..` collapsed) or, with `resolve`,
        resolves outside it (symbolic links followed)."""
        if self.allow:
            return
        at = f"{unit} {line}: " if line is not None else ""
        how = (f"; pass --allow-outside-root to accept entries outside {self.option}")
        lexical = os.path.abspath(path)  # `..` collapsed, symbolic links kept
        if not any(_within(lexical, r) for r in self._roots):
            raise DatasetError(f"{at}{name!r} lies outside {self.option} {self.root} (at {lexical}){how}", file)
        if not resolve:
            return
        if self._real_roots is None:
            self._real_roots = [os.path.realpath(r) for r in self._roots]
        real = self._real(lexical)
        if not any(_within(real, r) for r in self._real_roots):
            raise DatasetError(f"{at}{name!r} resolves outside {self.option} {self.root} through a symbolic link "
                               f"(to {real}){how}", file)

    def check_entry(self, folder: str | Path, rel: str, file: Path, line: int | None, name: str,
                    unit: str = "line") -> None:
        """`check` of `folder/rel` as written (no symbolic links followed), fast for the common
        case of a plain relative name in a folder already known to lie inside."""
        if self.allow:
            return
        folder = str(folder)
        parts = rel.replace("\\", "/").split("/")
        if not os.path.isabs(rel) and ".." not in parts:  # stays inside `folder`: is `folder` inside?
            inside = self._folder_inside.get(folder)
            if inside is None:
                f = os.path.abspath(folder)
                inside = self._folder_inside[folder] = any(_within(f, r) for r in self._roots)
            if inside:
                return
        self.check(os.path.join(folder, rel), file, line, name, unit, resolve=False)
