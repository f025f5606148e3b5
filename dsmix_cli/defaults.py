"""The chain of defaults (docs/training.md, "Which runs later stages use by default"): which run a
command uses when the user names none.

`pretrain-dsm` records the DSM model `qep` uses, `qep` the encoder `probe`/`cross-eval` use,
`probe` (or `demo`) the model `score`/`evaluate` use. The records live in `$DSMIX_HOME`
(default `~/.dsmix`) as `defaults.json`; the environment variables `DSMIX_DSM_MODEL`,
`DSMIX_ENCODER` and `DSMIX_MODEL` override them.

Only a *finished* training run is recorded: `pretrain-dsm` and `qep` call `record_default` when
their schedule ran to its end, never for a run stopped by `--max-steps` (a smoke test must not
become the DSM network or encoder that later stages use silently).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from dsmix_cli.errors import DsmixError
from dsmix_cli.fileio import write_json

# kind -> (environment variable, the command that makes one)
KINDS = {
    "dsm_model": ("DSMIX_DSM_MODEL", "dsmix pretrain-dsm --data DIR"),
    "encoder": ("DSMIX_ENCODER", "dsmix qep --data DIR (or --refs DIR --on-the-fly)"),
    "model": ("DSMIX_MODEL", "dsmix probe --dataset NAME (or dsmix demo)"),
}
# kind -> the option that names one explicitly
OPTIONS = {"dsm_model": "--dsm-model", "encoder": "--encoder", "model": "--model"}


def dsmix_home() -> Path:
    """The folder of the tool's own state: `$DSMIX_HOME`, else `~/.dsmix`."""
    return Path(os.environ.get("DSMIX_HOME") or Path.home() / ".dsmix")


def _records_path() -> Path:
    return dsmix_home() / "defaults.json"


def _read_records() -> dict:
    path = _records_path()
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, json.JSONDecodeError):
        return {}


def record_default(kind: str, run: str | Path) -> None:
    """Remember `run` (a finished run folder) as the default of `kind`."""
    if kind not in KINDS:
        raise ValueError(f"unknown default kind {kind!r}")
    records = _read_records()
    records[kind] = str(Path(run).resolve())
    write_json(_records_path(), records)


@dataclass(frozen=True)
class Resolved:
    """A resolved default: the value and where it came from (shown to the user)."""

    value: str
    source: str  # "option", "env:DSMIX_...", "recorded"


def resolve_default(kind: str, explicit: str | Path | None) -> Resolved:
    """The value to use for `kind`: the explicit option, else the env variable, else the record.

    Raises:
        DsmixError: nothing to default to; the message names the command that makes one.
    """
    env_var, maker = KINDS[kind]
    if explicit is not None and str(explicit) != "":
        return Resolved(str(explicit), "option")
    env = os.environ.get(env_var)
    if env:
        return Resolved(env, f"env:{env_var}")
    option = OPTIONS[kind]
    recorded = _read_records().get(kind)
    if recorded:
        if not Path(recorded).exists():
            raise DsmixError(
                f"the recorded default {kind.replace('_', ' ')} {recorded} no longer exists; "
                f"name one with {option} RUN (or set {env_var}), or make a new one with `{maker}`"
            )
        return Resolved(recorded, "recorded")
    raise DsmixError(
        f"no {kind.replace('_', ' ')} given and none recorded yet: pass {option}, set {env_var}, "
        f"or make one with `{maker}`"
    )
