"""The resume rule every training stage follows, decided once.

A resumed run (`--resume`) continues the run saved in its folder, so every field of the saved
config must match the new one: the options that define the objective, the data and the
schedule, and the resolved values recorded beside them (the DSM network used, steps per epoch,
training-set sizes, ...). Only the **run-control** fields listed in `RUN_CONTROL` may differ:
they change how the run is carried out, not what it trains. A refused resume names every
differing field with its saved and its new value.

`--resume` with no other option continues the run as it was started: `restore_options` takes
every option the user did not type from the saved config (`config.json` of the run folder),
except `max_steps`, so that a resumed run goes on to the end of its schedule unless told to
stop earlier.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from dsmix_cli.errors import CheckpointError

CONFIG_FILE = "config.json"

# Fields that may change when a run is resumed, with the reason (the one list of them).
RUN_CONTROL: dict[str, str] = {
    "out": "the run folder itself",
    "resume": "the request to continue",
    "max_steps": "stops a run early without changing its schedule",
    "workers": "data-loading processes (the data order does not depend on them)",
    "log_every": "cadence of metrics.jsonl",
    "checkpoint_every": "cadence of last.pt",
    "preview_images": "how many images the preview picture shows",
    "device": "where the run executes",
    "device_resolved": "where the run executes",
    "amp": "mixed precision: numerics of the same computation",
    "amp_resolved": "mixed precision: numerics of the same computation",
    "channels_last": "memory format",
    "compile": "torch.compile of the same model",
    "deterministic": "kernel selection",
    "skip_missing": "a permission; the data actually used is compared through the recorded counts",
    "allow_outside_root": "a permission; the data actually used is compared through the recorded counts",
    "skip_bad": "a permission: a run stopped by an unreadable image continues past it with --skip-bad",
    "dsm_model": "the option as typed; the network used is compared as dsm_model_resolved",
}
# Options `restore_options` never takes from the saved config.
NOT_RESTORED = ("out", "resume", "max_steps")

_ABSENT = object()


@dataclass(frozen=True)
class Difference:
    """One field whose new value differs from the saved run's."""

    field: str
    saved: Any
    new: Any

    def __str__(self) -> str:
        show = lambda v: "(not recorded)" if v is _ABSENT else repr(v)  # noqa: E731
        return f"{self.field} was {show(self.saved)}, now {show(self.new)}"


def _same(a: Any, b: Any) -> bool:
    """Equal values; two strings also match when they name the same place on disk."""
    if a == b:
        return True
    if isinstance(a, str) and isinstance(b, str) and a and b:
        try:
            return os.path.realpath(os.path.expanduser(a)) == os.path.realpath(os.path.expanduser(b))
        except (OSError, ValueError):
            return False
    return False


def field_defaults(cls: type) -> dict:
    """The default value of every field of the dataclass `cls` that has one (nested option
    dataclasses as dicts, as a saved config holds them)."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            continue
        out[f.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
    return out


def config_differences(saved: dict, new: dict, keys: Iterable[str] | None = None,
                       defaults: dict | None = None) -> list[Difference]:
    """The fields outside `RUN_CONTROL` whose values differ between `saved` and `new`.

    Args:
        saved: the config the run was started with.
        new: the config of the resumed run.
        keys: compare only these fields (default: every field of either config). A field
            present on one side only is a difference...
        defaults: ...unless the saved config lacks it, its new value is the default given here,
            and so the run was started by a version without the option, which did what its
            default does.
    """
    names = list(keys) if keys is not None else list(dict.fromkeys([*saved, *new]))
    out = []
    for name in names:
        if name in RUN_CONTROL:
            continue
        a, b = saved.get(name, _ABSENT), new.get(name, _ABSENT)
        if a is _ABSENT and b is not _ABSENT and defaults is not None and name in defaults \
                and _same(b, defaults[name]):
            continue  # an option newer than the run, left at the behaviour the run had
        if a is _ABSENT or b is _ABSENT:
            if a is not b:
                out.append(Difference(name, a, b))
        elif not _same(a, b):
            out.append(Difference(name, a, b))
    return out


def check_resume_config(saved: dict, new: dict, where: str | Path, keys: Iterable[str] | None = None,
                        defaults: dict | None = None) -> None:
    """Refuse a resume that would change anything but run-control fields (`defaults`: as in
    `config_differences`).

    Raises:
        CheckpointError: (exit 2) naming every differing field with its saved and new value.
    """
    diff = config_differences(saved, new, keys, defaults)
    if diff:
        raise CheckpointError(
            "--resume would change what this run trains: " + "; ".join(str(d) for d in diff)
            + ". A resumed run keeps its objective, data and schedule; only run-control settings may change "
            "(--max-steps, --workers, --device, --amp, logging and checkpoint intervals, ...). Run `--resume "
            "--out RUN` alone to continue with the saved settings, or start a new run in another --out", where)


def read_run_config(run_dir: str | Path) -> dict:
    """The saved config of a run folder (`RUN/config.json`).

    Raises:
        CheckpointError: no such file, or not a JSON object.
    """
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"--resume: no {CONFIG_FILE} here (not a run folder written by dsmix?)", Path(run_dir))
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"not a readable run config ({exc})", path) from None
    if not isinstance(data, dict):
        raise CheckpointError("not a run config (expected a JSON object)", path)
    return data


def restore_options(options: Any, saved: dict, given: Iterable[str]) -> Any:
    """A copy of the options dataclass `options` with every field the user did not give
    (`given`: field names; "group.field" for a field of a nested options dataclass) taken from
    the saved config, except `NOT_RESTORED`.

    Path-typed fields get `Path` values back; fields the saved config lacks keep their value.
    """
    given = set(given)
    changes = {}
    for f in dataclasses.fields(options):
        if f.name in given or f.name in NOT_RESTORED or f.name not in saved:
            continue
        value = saved[f.name]
        current = getattr(options, f.name)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            # a group of options (e.g. `qpt`): each sub-option the user did not give ("qpt.steps")
            # comes from the saved config, the given ones stay
            prefix = f.name + "."
            value = restore_options(current, value, {g[len(prefix):] for g in given if g.startswith(prefix)})
        elif value is not None and "Path" in str(f.type):
            value = Path(value)
        changes[f.name] = value
    return dataclasses.replace(options, **changes)
