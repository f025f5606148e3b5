"""Checkpoint format: the one module that writes and reads training state and model weights.

* Training checkpoints (`last.pt`, `best.pt`) are `torch.save` dicts of tensors and plain
  Python values: `format_version`, `kind` (the stage), `config` (the resolved run config),
  `step`, `model`, `optimizer`, `scheduler`, `scaler`, ... . They are written atomically and read
  back with `torch.load(weights_only=True)`, so loading never unpickles arbitrary objects.
* Exported weights (`<name>.safetensors`) hold a model's state dict and, as safetensors
  metadata, a JSON `dsmix` record (format version, kind, the config that rebuilds the model).
  These are what later stages and other users load.

A file that is not what it claims (a pickle that would run code, a crafted safetensors header,
`dsmix` metadata that is not a JSON object) is refused with one line naming it
(`CheckpointError`, exit code 2), never with the loader's own multi-line advice.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from dsmix_cli.errors import CheckpointError
from dsmix_cli.fileio import atomic_open

FORMAT_VERSION = 1
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def _refusal(exc: Exception, what: str) -> str:
    """One line saying why `torch.load(weights_only=True)` or safetensors refused a file."""
    text = str(exc)
    if "Weights only load failed" in text:
        found = _GLOBAL.search(text)
        if found:
            return (f"refused: it holds pickled Python objects ({found.group(1)}) that would run code when "
                    f"loaded, not a {what} of tensors and plain values; dsmix never runs code from a file "
                    f"(export the weights as a plain state dict or safetensors)")
        return f"not a readable {what} (not a file torch.save wrote, or damaged)"
    first = text.strip().splitlines()[0] if text.strip() else ""
    return f"not a readable {what} ({type(exc).__name__}{': ' + first[:200] if first else ''})"


def _torch_load(path: Path):
    """`torch.load(weights_only=True)` on the CPU, its pickle-protocol warnings kept quiet."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(path, map_location="cpu", weights_only=True)


def save_checkpoint(path: str | Path, *, kind: str, config: dict, **state: Any) -> None:
    """Write a training checkpoint atomically.

    Args:
        path: destination (`.../last.pt`).
        kind: the stage that wrote it (`pretrain-dsm`, `qep`, ...); checked on load.
        config: the resolved run config (JSON-able); a checkpoint rebuilds its model alone.
        **state: tensors, state dicts and plain values (step, model, optimizer, ...).
    """
    payload = {"format_version": FORMAT_VERSION, "kind": kind, "config": config, **state}
    with atomic_open(path, "wb") as fh:
        torch.save(payload, fh)


def load_checkpoint(path: str | Path, kind: str | None = None) -> dict:
    """Read a training checkpoint safely (`weights_only=True`) and check its format and kind."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError("checkpoint not found", path)
    try:
        payload = _torch_load(path)
    except Exception as exc:  # noqa: BLE001 - any failure here means "not a checkpoint we trust"
        raise CheckpointError(_refusal(exc, "dsmix checkpoint"), path) from None
    if not isinstance(payload, dict) or "format_version" not in payload:
        raise CheckpointError("not a dsmix checkpoint (no format_version)", path)
    if not isinstance(payload["format_version"], int) or isinstance(payload["format_version"], bool):
        raise CheckpointError(f"not a dsmix checkpoint (format_version {payload['format_version']!r} is not an "
                              "integer)", path)
    if payload["format_version"] > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint format {payload['format_version']} is newer than this dsmix supports "
            f"({FORMAT_VERSION}); upgrade dsmix", path)
    if kind is not None and payload.get("kind") != kind:
        raise CheckpointError(f"is a {payload.get('kind')!r} checkpoint, expected {kind!r}", path)
    missing = [k for k in ("config", "step", "model") if k not in payload]
    if missing or not isinstance(payload.get("config"), dict) or not isinstance(payload.get("model"), dict):
        raise CheckpointError(f"incomplete dsmix checkpoint (missing or malformed: "
                              f"{', '.join(missing) or 'config/model'})", path)
    return payload


def export_weights(path: str | Path, state_dict: dict[str, torch.Tensor], meta: dict) -> None:
    """Write a state dict as safetensors with a JSON `dsmix` metadata record, atomically."""
    from safetensors.torch import save

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    record = {"format_version": FORMAT_VERSION, **meta}
    blob = save(tensors, metadata={"dsmix": json.dumps(record)})
    with atomic_open(path, "wb") as fh:
        fh.write(blob)


def load_weights(path: str | Path, kind: str | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """Read exported weights: returns (state_dict, meta). Checks format version and kind."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError("weights file not found", path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            raw_meta = (fh.metadata() or {}).get("dsmix")
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(_refusal(exc, "safetensors file"), path) from None
    if raw_meta is None:
        raise CheckpointError("safetensors file has no dsmix metadata (not written by dsmix)", path)
    meta = parse_meta(raw_meta, path)
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError("weights format is newer than this dsmix supports; upgrade dsmix", path)
    if kind is not None and meta.get("kind") != kind:
        raise CheckpointError(f"holds {meta.get('kind')!r} weights, expected {kind!r}", path)
    return tensors, meta


def parse_meta(raw: str, path: str | Path) -> dict:
    """The `dsmix` metadata record of a safetensors file: a JSON object whose `format_version`
    (if present) is an integer and whose `kind` (if present) is a string.

    Raises:
        CheckpointError: anything else (not JSON, a list, a string version, ...).
    """
    try:
        meta = json.loads(raw)
    except (json.JSONDecodeError, TypeError, RecursionError):
        raise CheckpointError("its dsmix metadata is not valid JSON (not written by dsmix, or damaged)", path) from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"its dsmix metadata is a JSON {type(meta).__name__}, not an object (not written by "
                              "dsmix, or damaged)", path)
    version = meta.get("format_version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise CheckpointError(f"its dsmix metadata has format_version {version!r}, not an integer (not written by "
                              "dsmix, or damaged)", path)
    if "kind" in meta and not isinstance(meta["kind"], str):
        raise CheckpointError(f"its dsmix metadata has kind {meta['kind']!r}, not a name (damaged?)", path)
    return meta


def load_state_dict_file(path: str | Path, what: str = "weights") -> dict[str, torch.Tensor]:
    """Read a plain state dict from a `.safetensors` file or a `.pth`/`.pt` file (with
    `weights_only=True`); a `{"state_dict": ...}` wrapper is unwrapped.

    Raises:
        CheckpointError: missing file, unreadable file, or not a dict of tensors; names `what`.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} file not found", path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = _torch_load(path)
    except Exception as exc:  # noqa: BLE001 - any failure means "not a state dict we can use"
        raise CheckpointError(_refusal(exc, f"{what} state dict"), path) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"expected a {what} state dict of tensors", path)
    return state


def load_state_dict_strict(module: torch.nn.Module, state_dict: dict, source: str | Path) -> None:
    """Load weights asserting the exact expected keys; a mismatch names what is missing/extra."""
    result = module.load_state_dict(state_dict, strict=False)
    if result.missing_keys or result.unexpected_keys:
        parts = []
        if result.missing_keys:
            parts.append(f"missing keys {result.missing_keys[:5]}{' ...' if len(result.missing_keys) > 5 else ''}")
        if result.unexpected_keys:
            parts.append(f"unexpected keys {result.unexpected_keys[:5]}"
                         f"{' ...' if len(result.unexpected_keys) > 5 else ''}")
        raise CheckpointError("weights do not match the model: " + "; ".join(parts), source)
