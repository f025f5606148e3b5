"""The documentation a user gets is self-contained and its examples are real commands.

1. README.md, docs/**/*.md and every command's `--help` refer only to places that exist in the
   repository: every Markdown link and every `NAME.md` mention names a file that is there (and
   a `#section` of a page names one of its headings), every `../` path stays inside the
   repository and exists, and nothing points at an issue tracker ("issue 5").
2. Every command line in a shell block of README.md and docs/ that runs `dsmix` (also through
   `python -m dsmix_cli` or `torchrun ... -m dsmix_cli`) is accepted by the CLI's own parser:
   the command exists, every option is known, takes a valid value, and required options are
   given.

3. Every help page (`dsmix --help`, each group's and each command's) shows one `Example: dsmix ...`
   line that the same parser accepts and that fits 80 columns, and shows placeholders (`DIR`, `N`)
   where Typer would print Python types (`<path>`, `<int range>`, `{paths}...`).

Pages and help texts still being rewritten are listed in PENDING and expected to fail
(strictly: once one passes, its entry must go).
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

try:  # recent Typer ships its own copy of Click; its commands and errors are that copy's
    from typer import _click as click
    import typer._click.exceptions  # noqa: F401  (makes click.exceptions available)
except ImportError:  # pragma: no cover - Typer on top of Click
    import click
    import click.exceptions  # noqa: F401

from dsmix_cli.cli import app

REPO = Path(__file__).resolve().parents[1]
DOCS = sorted([REPO / "README.md", *(REPO / "docs").rglob("*.md")])
ROOT = typer.main.get_command(app)

# Pages or help texts known to fail while they are rewritten (none now). Strict xfail: an entry
# that starts passing fails the suite, so the list can only shrink.
PENDING = {
    "refs": set(),
    "commands": set(),
    "examples": set(),
}


def _rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def _pending(kind: str, name: str):
    if name in PENDING[kind]:
        return pytest.param(name, marks=pytest.mark.xfail(strict=True, reason="second pass of this page pending"))
    return name


# ----------------------------------------------------------------------------- references

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
MD_NAME = re.compile(r"(?<![\w./-])((?:\.{1,2}/)?[\w./-]*[\w-]\.md)(#[\w-]+)?(?![\w/-])")
PARENT = re.compile(r"(?<![\w./~-])(\.\./[\w./-]*)")
ISSUE = re.compile(r"\bissues?\s*#?\d+", re.IGNORECASE)
URL = re.compile(r"\b[a-z][a-z0-9+.-]*://\S+|\bmailto:\S+", re.IGNORECASE)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*\*?|__?", "", heading.strip().lower())
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    in_code = False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            in_code = not in_code
        if in_code or not line.startswith("#"):
            continue
        base = slug(line.lstrip("#"))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def _inside(path: Path) -> bool:
    try:
        path.resolve().relative_to(REPO)
        return True
    except ValueError:
        return False


def _exists(target: str, base: Path | None) -> Path | None:
    """The repository path `target` names, relative to `base` (a page's folder) or to the
    repository root; a bare file name may be any file of that name in the repository."""
    for start in ([base] if base is not None else []) + [REPO]:
        p = (start / target)
        if _inside(p) and p.exists():
            return p.resolve()
    if "/" not in target and target in _repo_files():
        return _repo_files()[target]
    return None


_FILES: dict[str, Path] = {}


def _repo_files() -> dict[str, Path]:
    """File name -> a path of that name in the repository (hidden and build folders skipped)."""
    if not _FILES:
        for folder, dirs, files in os.walk(REPO):
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in {"runs", "__pycache__"}
                             and not d.endswith(".egg-info"))
            for f in files:
                _FILES.setdefault(f, Path(folder, f))
    return _FILES


def dangling(text: str, base: Path | None, page: Path | None = None) -> list[str]:
    """The references in `text` that lead nowhere in the repository (`base`: the page's folder,
    None for help text, whose paths are read from the repository root)."""
    problems = []
    text_wo_urls = URL.sub(" ", text)
    for m in ISSUE.finditer(text_wo_urls):
        problems.append(f"{m.group(0)!r}: an issue number is not a place in the repository")
    for m in LINK.finditer(text):
        target = m.group(1)
        if URL.match(target) or target.startswith("mailto:"):
            continue
        path, _, anchor = target.partition("#")
        where = page if not path else None
        if path:
            p = (base or REPO) / path
            if not (_inside(p) and p.exists()):
                problems.append(f"link ({target}): {path} does not exist")
                continue
            where = p.resolve()
        if anchor and where is not None and where.suffix == ".md" and anchor not in anchors(where):
            problems.append(f"link ({target}): no heading #{anchor} in {_rel(where)}")
    plain = LINK.sub(" ", text_wo_urls)
    for m in MD_NAME.finditer(plain):
        name, anchor = m.group(1), (m.group(2) or "")[1:]
        found = _exists(name, base)
        if found is None:
            problems.append(f"{name!r} is not a file in the repository")
        elif anchor and anchor not in anchors(found):
            problems.append(f"{name}#{anchor}: no such heading in {_rel(found)}")
    for m in PARENT.finditer(plain):
        target = m.group(1).rstrip(".")
        p = (base or REPO) / target
        if not (_inside(p) and p.exists()):
            problems.append(f"{target!r} leads outside the repository or nowhere")
    return problems


def _is_group(cmd) -> bool:
    return hasattr(cmd, "list_commands")


def _commands(cmd, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = [path]
    if _is_group(cmd):
        for name in cmd.list_commands(click.Context(cmd)):
            out += _commands(cmd.get_command(click.Context(cmd), name), path + (name,))
    return out


COMMANDS = _commands(ROOT)


def help_text(path: tuple[str, ...], width: int = 200) -> str:
    res = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": str(width)}, terminal_width=width)
    assert res.exit_code == 0, res.output
    return res.stdout


def test_every_command_and_data_subcommand_is_walked():
    names = {" ".join(p) for p in COMMANDS}
    assert {"", "data", "data list", "data check", "qep", "probe", "score", "demo", "contact-sheet"} <= names


@pytest.mark.parametrize("page", [_pending("refs", _rel(p)) for p in DOCS])
def test_doc_references_lead_somewhere(page):
    path = REPO / page
    problems = dangling(path.read_text(encoding="utf-8"), path.parent, path)
    assert not problems, f"{page}:\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("command", [_pending("refs", "help: " + " ".join(("dsmix",) + p)) for p in COMMANDS])
def test_help_references_lead_somewhere(command):
    path = tuple(command.split()[2:])
    problems = dangling(help_text(path), None)
    assert not problems, f"{command}:\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("text, bad", [
    ("see METHOD.md section 3", "METHOD.md"),
    ("as [the spec](../shared/spec/CLI.md) says", "../shared/spec/CLI.md"),
    ("(issue 5, item 4)", "issue 5"),
    ("python prep.py ../shared/data/clive-subset out/", "../shared/data/clive-subset"),
    ("[datasets](docs/datasets.md#no-such-section)", "no-such-section"),
    ("docs/datasets.md#nope", "nope"),
])
def test_the_reference_check_catches_each_kind(text, bad):
    problems = dangling(text, REPO)
    assert problems and bad in " ".join(problems)


@pytest.mark.parametrize("text", [
    "[datasets](docs/datasets.md) and docs/dsm.md and `docs/method.md`",
    "[the ground truth](docs/method.md#1-the-ground-truth-dsm)",
    "see [benchmarks](../benchmarks/README.md)",
    "weights from https://huggingface.co/timm/x/README.md and ~/../x",
    "LICENSES.md next to the images; --root .../ChallengeDB_release",
])
def test_the_reference_check_accepts_what_exists(text):
    base = REPO / "docs" if "../benchmarks" in text else REPO
    assert dangling(text, base) == []


# ----------------------------------------------------------------------------- example commands

FENCE = re.compile(r"^\s*```\s*([\w-]*)\s*$")
SHELL = {"bash", "sh", "shell", "console", ""}
ASSIGN = re.compile(r"^([A-Za-z_]\w*)=(.*)$")


def shell_blocks(text: str) -> list[tuple[int, list[str]]]:
    """(first line number, lines) of every shell (or unlabelled) fenced block."""
    blocks, lines, lang, start = [], None, None, 0
    for no, line in enumerate(text.splitlines(), 1):
        m = FENCE.match(line)
        if m and lines is None:
            lines, lang, start = [], m.group(1).lower(), no + 1
        elif line.strip().startswith("```") and lines is not None:
            if lang in SHELL:
                blocks.append((start, lines))
            lines = None
        elif lines is not None:
            lines.append(line)
    return blocks


def command_lines(lines: list[str]) -> list[tuple[int, list[str]]]:
    """(offset, argv) of every `dsmix` invocation in a block: continuations joined, comments
    and prompts dropped, `NAME=value` assignments of the block expanded, `&&`/`;`/`|` split."""
    env: dict[str, str] = {}
    out = []
    i = 0
    while i < len(lines):
        offset, line = i, lines[i]
        while line.rstrip().endswith("\\") and i + 1 < len(lines):
            i += 1
            line = line.rstrip()[:-1] + " " + lines[i]
        i += 1
        line = re.sub(r"^\s*\$\s+", "", line)
        for name, value in env.items():
            line = line.replace("${" + name + "}", value)
            line = re.sub(r"\$" + name + r"\b", lambda _m, v=value: v, line)
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split, lexer.commenters = True, "#"
        tokens = list(lexer)
        segment: list[str] = []
        for tok in tokens + [";"]:
            if tok in {"&&", "||", ";", "|", "&"}:
                if len(segment) == 1 and ASSIGN.match(segment[0]):
                    name, value = ASSIGN.match(segment[0]).groups()
                    env[name] = value
                elif segment:
                    argv = _dsmix_argv(segment)
                    if argv is not None:
                        out.append((offset, argv))
                segment = []
            else:
                segment.append(tok)
    return out


def _dsmix_argv(words: list[str]) -> list[str] | None:
    if words[0] == "dsmix":
        return words[1:]
    if "-m" in words and words[0] in {"python", "python3", "torchrun"}:
        k = words.index("-m")
        if k + 1 < len(words) and words[k + 1] == "dsmix_cli":
            return words[k + 2:]
    return None


def parse_command(argv: list[str]):
    """Run the CLI's own parser over `argv` (no command body runs); raises click's UsageError."""
    cmd = ROOT
    ctx = cmd.make_context("dsmix", list(argv))
    while _is_group(cmd):
        rest = [*getattr(ctx, "_protected_args", []), *ctx.args]
        if not rest:
            raise click.exceptions.UsageError("missing command", ctx)
        name, sub, rest = cmd.resolve_command(ctx, rest)
        ctx = sub.make_context(name, rest, parent=ctx)
        cmd = sub
    return cmd


EXAMPLES = [(f"{_rel(page)}:{start + offset}", argv)
            for page in DOCS
            for start, lines in shell_blocks(page.read_text(encoding="utf-8"))
            for offset, argv in command_lines(lines)]


def test_examples_were_found():
    pages = {name.split(":")[0] for name, _ in EXAMPLES}
    assert {"README.md", "docs/datasets.md", "docs/dsm.md", "docs/training.md"} <= pages
    assert len(EXAMPLES) > 50


@pytest.mark.parametrize("where, argv", [
    pytest.param(where, argv, id=where,
                 marks=[pytest.mark.xfail(strict=True, reason="second pass pending")]
                 if where.split(":")[0] in PENDING["commands"] else [])
    for where, argv in EXAMPLES])
def test_example_command_parses(where, argv):
    try:
        parse_command(argv)
    except click.exceptions.ClickException as exc:
        pytest.fail(f"{where}: dsmix {shlex.join(argv)}\n  {exc.format_message()}")


def test_the_parser_check_catches_bad_lines():
    with pytest.raises(click.exceptions.NoSuchOption):
        parse_command(["qep", "--data", "d", "--batchsize", "8"])
    with pytest.raises(click.exceptions.BadParameter):
        parse_command(["qep", "--data", "d", "--epochs", "many"])
    with pytest.raises(click.exceptions.MissingParameter):
        parse_command(["make-gt-dsm", "--data", "d"])  # --out is required
    with pytest.raises(click.exceptions.UsageError):
        parse_command(["no-such-command"])
    with pytest.raises(click.exceptions.UsageError):
        parse_command(["data"])
    assert parse_command(["-q", "data", "check", "clive", "--root", "x"]).name == "check"


def test_command_lines_handle_continuations_comments_variables_and_chains():
    block = [
        "# a comment line",
        'COMMON="--refs r --on-the-fly --max-steps 2"',
        "dsmix -q qep $COMMON --out a   # trailing comment",
        "dsmix qep ${COMMON} \\",
        "  --label-mode area --out b",
        "python3 -m venv .venv && . .venv/bin/activate && pip install -e . && dsmix demo",
        "torchrun --nproc_per_node 4 -m dsmix_cli pretrain-dsm --data k/",
        "$ dsmix data list",
        'dsmix contact-sheet --ref p.jpg --caption "a # is kept"',
    ]
    got = [argv for _, argv in command_lines(block)]
    assert got == [
        ["-q", "qep", "--refs", "r", "--on-the-fly", "--max-steps", "2", "--out", "a"],
        ["qep", "--refs", "r", "--on-the-fly", "--max-steps", "2", "--label-mode", "area", "--out", "b"],
        ["demo"],
        ["pretrain-dsm", "--data", "k/"],
        ["data", "list"],
        ["contact-sheet", "--ref", "p.jpg", "--caption", "a # is kept"],
    ]
    assert [offset for offset, _ in command_lines(block)] == [2, 3, 5, 6, 7, 8]


def test_pending_entries_name_real_pages_and_commands():
    pages = {_rel(p) for p in DOCS} | {"help: " + " ".join(("dsmix",) + p) for p in COMMANDS}
    assert PENDING["refs"] <= pages and PENDING["commands"] <= {_rel(p) for p in DOCS}
    assert PENDING["examples"] <= pages


# ----------------------------------------------------------------------------- help pages

EXAMPLE = re.compile(r"^\s*Example:\s*(dsmix\b.*?)\s*$", re.MULTILINE)
TYPE_METAVAR = re.compile(r"<(?:int|str|float|path|bool|list\[[^\]]*\])(?: range)?>")


def _command_at(path: tuple[str, ...]):
    cmd = ROOT
    for name in path:
        cmd = cmd.get_command(click.Context(cmd), name)
    return cmd


def help_examples(text: str) -> list[str]:
    """The `Example: dsmix ...` lines of a help page (the command, without the label)."""
    return EXAMPLE.findall(text)


@pytest.mark.parametrize("command", [
    pytest.param("help: " + " ".join(("dsmix",) + p),
                 marks=[pytest.mark.xfail(strict=True, reason="second pass of this help pending")]
                 if "help: " + " ".join(("dsmix",) + p) in PENDING["examples"] else [])
    for p in COMMANDS])
def test_every_help_page_has_an_example_that_parses_and_fits_80_columns(command):
    path = tuple(command.split()[2:])
    examples = help_examples(help_text(path))
    assert examples, f"{command}: no 'Example: dsmix ...' line"
    narrow = help_text(path, width=80)
    for line in examples:
        argv = shlex.split(line)[1:]
        try:
            cmd = parse_command(argv)
        except click.exceptions.ClickException as exc:
            pytest.fail(f"{command}: the example `{line}` does not parse: {exc.format_message()}")
        if not _is_group(_command_at(path)):  # a command's example runs that command
            assert cmd is _command_at(path), f"{command}: the example `{line}` runs another command"
        assert line in help_examples(narrow), f"{command}: the example is cut or wrapped at 80 columns"
        assert len("  Example: " + line) <= 80, f"{command}: the example is wider than 80 columns"


def test_the_example_check_reads_the_example_line():
    text = "Usage: dsmix x\n\n  Does x.\n\n  Example: dsmix data list clive\n\nOptions:\n"
    assert help_examples(text) == ["dsmix data list clive"]
    assert help_examples("  Examples of layouts: see below\n") == []


@pytest.mark.parametrize("command", ["help: " + " ".join(("dsmix",) + p) for p in COMMANDS])
def test_help_pages_show_placeholders_not_python_types(command):
    text = help_text(tuple(command.split()[2:]), width=80)
    usage = text.splitlines()[0]
    assert not TYPE_METAVAR.findall(text), f"{command}: {sorted(set(TYPE_METAVAR.findall(text)))}"
    assert "{" not in usage, f"{command}: {usage}"


def test_placeholders_of_arguments_in_usage_lines():
    assert help_text(("score",)).splitlines()[0] == "Usage: dsmix score [OPTIONS] IMAGE..."
    assert help_text(("data", "list")).splitlines()[0] == "Usage: dsmix data list [OPTIONS] [NAME]"
    assert help_text(("data", "check")).splitlines()[0] == "Usage: dsmix data check [OPTIONS] NAME"
    assert TYPE_METAVAR.findall("--workers <int range>  --refs <path>  IMAGE... <list[str]>") == \
        ["<int range>", "<path>", "<list[str]>"]


def _option_help(path: tuple[str, ...], option: str) -> str:
    """The help text of one option, read from the command's parameters."""
    for param in _command_at(path).params:
        if option in getattr(param, "opts", ()):
            return param.help or ""
    raise AssertionError(f"{' '.join(path)} has no {option}")


def test_help_says_only_what_each_option_does():
    for path in (("synthesize",), ("contact-sheet",)):  # no crops, splits or initial weights there
        seed = _option_help(path, "--seed").lower()
        assert "distortion" in seed and not any(w in seed for w in ("crop", "split", "initialis"))
    for option in ("--fresh-crops", "--seed"):  # cross-eval has no splits
        assert "split" not in _option_help(("cross-eval",), option)
    assert "split" in _option_help(("probe",), "--seed")
    for option in ("--train-root", "--test-root"):
        assert "$DSMIX_DATA" in _option_help(("cross-eval",), option)


if os.environ.get("DSMIX_DOCS_REPORT"):  # a developer's aid: print every problem at once
    def test_report_all_problems(capsys):
        with capsys.disabled():
            for p in DOCS:
                for prob in dangling(p.read_text(encoding="utf-8"), p.parent, p):
                    print(f"{_rel(p)}: {prob}")
            for c in COMMANDS:
                for prob in dangling(help_text(c), None):
                    print(f"help dsmix {' '.join(c)}: {prob}")
            for where, argv in EXAMPLES:
                try:
                    parse_command(argv)
                except click.exceptions.ClickException as exc:
                    print(f"{where}: {exc.format_message()}")


# ----------------------------------------------------------------------------- Python snippets

def python_blocks(text: str) -> list[str]:
    blocks, lines = [], None
    for line in text.splitlines():
        if lines is None and re.match(r"^\s*```python\s*$", line):
            lines = []
        elif lines is not None and line.strip().startswith("```"):
            blocks.append("\n".join(lines))
            lines = None
        elif lines is not None:
            lines.append(line)
    return blocks


# the snippets that need no data set (the others name a dataset folder or a training run)
RUNNABLE = ["README.md", "docs/distortions.md"]


@pytest.mark.parametrize("page", RUNNABLE)
def test_python_snippets_run_as_written_on_a_cpu_machine(page, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on a machine without a GPU
    blocks = python_blocks((REPO / page).read_text(encoding="utf-8"))
    assert blocks, page
    for code in blocks:
        namespace: dict = {}
        exec(compile(code, f"{page} snippet", "exec"), namespace)  # noqa: S102 - our own docs
        tensors = [v for v in namespace.values() if isinstance(v, torch.Tensor)]
        assert tensors and all(t.device.type == "cpu" for t in tensors)
