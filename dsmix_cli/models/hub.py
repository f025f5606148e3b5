"""Pretrained weights from the Hugging Face hub (timm): know early when they cannot be had.

timm downloads pretrained weights through the Hugging Face hub client, which on an offline
machine retries for about a minute before failing. `hub_unreachable` answers at once whether a
download can work, so commands can give their clear "how to get the weights" message instead.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse


def hub_unreachable(hub_id: str) -> bool:
    """True when the weights are not in the local Hugging Face cache and the hub's host does not
    even resolve (or HF_HUB_OFFLINE is set): downloading cannot work, so say so at once."""
    try:
        from huggingface_hub import try_to_load_from_cache

        for name in ("model.safetensors", "pytorch_model.bin"):  # what timm loads from the hub
            if isinstance(try_to_load_from_cache(hub_id.split("@")[0], name), str):
                return False
    except Exception:  # noqa: BLE001 - no usable cache information: let timm try
        return False
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    host = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname or "huggingface.co"
    try:
        socket.getaddrinfo(host, 443)  # a name look-up only, as the download itself would start with
    except OSError:
        return True
    return False


def timm_hub_id(name: str) -> str | None:
    """The hub repository of a timm model's default pretrained weights (None if unknown)."""
    try:
        import timm.models

        cfg = timm.models.get_pretrained_cfg(name)
    except Exception:  # noqa: BLE001 - unknown model or no pretrained config
        return None
    return getattr(cfg, "hf_hub_id", None) or None
