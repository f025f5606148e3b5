"""File names that are not valid UTF-8, and folder walks and globs over links, loops and FIFOs."""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path

import pytest

from dsmix_cli.errors import ImageReadError
from dsmix_cli.fileio import to_json
from dsmix_cli.paths import glob_files, path_text, text_path, walk_files


# ------------------------------------------------------------------------------ point 1: names

@pytest.mark.parametrize("raw", [b"plain.png", "caf\u00e9.png".encode(), b"caf\xe9.png", b"\xff\xfe.jpg",
                                 b"a\\xff.png", b"a\\x41\xe9.png", b"back\\slash.png", b"\x80" * 3 + b".bmp",
                                 b"emoji-\xf0\x9f\x98\x80.png", b"half-\xf0\x9f.png"])
def test_names_round_trip_through_their_text(raw):
    name = os.fsdecode(raw)
    text = path_text(name)
    text.encode("utf-8")  # always valid UTF-8
    assert text_path(text) == Path(name)
    assert os.fsencode(str(text_path(text))) == raw  # the very bytes of the name
    if raw.decode("utf-8", errors="replace") == raw.decode("utf-8", errors="ignore") and b"\\x" not in raw:
        assert text == name  # a valid UTF-8 name is written as it is


def test_every_single_byte_round_trips():
    for b in range(1, 256):
        if b == ord("/"):
            continue
        raw = b"x" + bytes([b]) + b".png"
        assert os.fsencode(str(text_path(path_text(os.fsdecode(raw))))) == raw, b


def test_json_holds_no_lone_surrogates():
    name = os.fsdecode(b"caf\xe9.png")
    text = to_json({"path": Path(name), "error": f"{name}: truncated"})
    assert "\\ud" not in text
    record = json.loads(text)
    assert text_path(record["path"]) == Path(name) and record["error"] == "caf\\xe9.png: truncated"


def test_error_messages_name_undecodable_files_printably(tmp_path):
    name = tmp_path / os.fsdecode(b"\xff.png")
    err = ImageReadError("empty file", name)
    str(err).encode("utf-8")
    assert str(err) == f"{tmp_path}/\\xff.png: empty file"


# ------------------------------------------------------------------------------ point 3: walks and globs

@pytest.fixture
def tree(tmp_path):
    """d/{a.png, b.jpg, .h.png, notes.txt, sub/c.png, sub/deep/e.png} plus, with links: a loop to
    d, a loop to sub's parent, a link out (to a folder with x.png), a link in, a dangling link, a
    second name of a.png, a FIFO."""
    d = tmp_path / "d"
    (d / "sub" / "deep").mkdir(parents=True)
    for rel in ("a.png", "b.jpg", ".h.png", "notes.txt", "sub/c.png", "sub/deep/e.png"):
        (d / rel).write_bytes(b"x")
    out = tmp_path / "out"
    out.mkdir()
    (out / "x.png").write_bytes(b"x")
    return d, out


def _add_links(d: Path, out: Path) -> None:
    os.symlink(".", d / "self")
    os.symlink("..", d / "sub" / "up")
    os.symlink(out, d / "out-link")
    os.symlink("sub/deep", d / "in-link")
    os.symlink("missing.png", d / "dangling.png")
    os.symlink("a.png", d / "z-second-name.png")
    if hasattr(os, "mkfifo"):
        os.mkfifo(d / "pipe.png")


def _images(name: str) -> bool:
    return name.endswith((".png", ".jpg"))


def test_globs_match_the_shell_where_there_are_no_links(tree, monkeypatch):
    d, _ = tree
    monkeypatch.chdir(d.parent)
    for pattern in ("d/*.png", "d/**/*.png", "d/**", "d/*/*.png", "d/s?b/*", "d/[ab].*", "*/*.jpg",
                    "d/**/deep/*.png", str(d / "**" / "*.png"), "d/.h*"):
        want = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file() and _images(p))
        assert glob_files(pattern, _images).files == want, pattern


def test_walks_and_globs_follow_no_link_to_a_folder(tree, monkeypatch):
    d, out = tree
    monkeypatch.chdir(d.parent)
    plain = walk_files("d", _images).files
    _add_links(d, out)
    walk = walk_files("d", _images)
    assert walk.files == plain  # each real file once, nothing through the links
    skipped = "\n".join(walk.skipped)
    for what in ("self: skipped: link loop", "sub/up: skipped: link loop", "out-link: skipped: link to a folder out of",
                 "dangling.png: skipped: dangling link (to missing.png)",
                 "z-second-name.png: skipped: another name of a file already listed"):
        assert what in skipped, what
    if hasattr(os, "mkfifo"):
        assert "pipe.png: skipped: not a regular file" in skipped
    assert "in-link" not in skipped  # its files are listed where they are
    g = glob_files("d/**/*.png", _images)
    assert g.files == [p for p in plain if p.suffix == ".png" and not p.name.startswith(".")]
    assert not any("x.png" in str(p) for p in g.files)


def test_a_link_named_on_the_command_line_is_followed(tree):
    d, out = tree
    os.symlink(out, d / "out-link")
    assert walk_files(d / "out-link", _images).files == [d / "out-link" / "x.png"]
