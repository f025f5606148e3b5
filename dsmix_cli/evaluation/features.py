"""Frozen-encoder features of a dataset's views, encoded once and cached on disk.

A view set is made of components, each encoded once per (encoder, dataset, component):

| component | views per image |
|---|---|
| `train` | K random crop+flip views at full scale (the DSMix probe's training views) |
| `five` | the five test crops at full scale |
| `half` | the five crops of the image at half scale (ARNIQA) |

`paper` = `train` + `five` (train on the random views, test on the five crops); `arniqa` =
`five` and `half` side by side: crop k's feature is `[full-scale crop k, half-scale crop k]`
(2 x 2048 for a ResNet-50), used for training and for testing. `probe --protocol all` asks for the
union once, so the five full-scale crops are shared by both view sets.

The cache is one safetensors file per component in the cache folder (default
`$DSMIX_HOME/feature-cache`), named by a SHA-256 key of: the encoder's weights digest, its input
normalisation and class; the dataset's image files (path, size, modification time) in order;
and the component (kind, views, crop size, seed, the protocol's image size). Files are written
atomically and read with safetensors (nothing is unpickled); a file that does not match its key
or shape is ignored and encoded again.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch

from dsmix_cli.data.catalog import Dataset
from dsmix_cli.engine.checkpoint import export_weights, load_weights
from dsmix_cli.errors import CheckpointError, DatasetError
from dsmix_cli.evaluation.heads import encoder_threads
from dsmix_cli.evaluation.views import NUM_TEST_VIEWS, ViewDataset, encode_views

VIEW_SETS = ("paper", "arniqa")
CACHE_KIND = "feature-cache"
VIEWS_VERSION = 1  # bump when the cropping code changes what a component holds
_BIG = 1 << 30     # components larger than this (as float32) are stored as float16


def default_cache_dir() -> Path:
    from dsmix_cli.defaults import dsmix_home

    return dsmix_home() / "feature-cache"


def components_for(view_set: str, train_views: int, fresh_crops: bool = False) -> dict[str, int]:
    """The components (name -> views per image) a view set needs."""
    if view_set == "paper":
        return {"five": NUM_TEST_VIEWS} if fresh_crops else {"train": train_views, "five": NUM_TEST_VIEWS}
    if view_set == "arniqa":
        return {"five": NUM_TEST_VIEWS, "half": NUM_TEST_VIEWS}
    raise DatasetError(f"unknown view set {view_set!r}; choose one of {', '.join(VIEW_SETS)}")


def encoder_fingerprint(encoder, digest: str | None = None) -> str:
    """What the features depend on, on the encoder's side (the weights' content hash first)."""
    record = {"digest": digest or encoder.digest(), "mean": list(encoder.mean), "std": list(encoder.std),
              "module": type(encoder.module).__name__, "dim": encoder.feature_dim,
              "spec": getattr(encoder.module, "feature_spec", None)}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def files_fingerprint(paths: list[Path]) -> str:
    """The dataset's image files in order, with their sizes and modification times."""
    h = hashlib.sha256()
    for p in paths:
        try:
            st = os.stat(p)
            h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
        except OSError:
            h.update(f"{p}|missing\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


@dataclass
class ImageFeatures:
    """Features of every image by component (`parts[name]` is (N, V, D)) and the read errors."""

    parts: dict[str, torch.Tensor]
    errors: list[str]
    cached: list[str]   # components read from the cache
    encoded: list[str]  # components encoded in this call

    @property
    def ok(self) -> torch.Tensor:
        return torch.tensor([not e for e in self.errors], dtype=torch.bool)

    def select(self, keep: torch.Tensor) -> "ImageFeatures":
        """Only the images where `keep` (N,) is true."""
        idx = [i for i, k in enumerate(keep.tolist()) if k]
        return ImageFeatures({k: v[keep] for k, v in self.parts.items()}, [self.errors[i] for i in idx],
                             self.cached, self.encoded)

    def view_set(self, name: str, l2: bool = False) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(training views, test views) of a view set, each (N, V, D'); `l2` normalises each scale's
        feature to unit length first. `paper` with fresh crops has no cached training views (None)."""
        part = {k: (torch.nn.functional.normalize(v.float(), dim=-1) if l2 else v) for k, v in self.parts.items()}
        if name == "paper":
            return part.get("train"), part["five"]
        if name == "arniqa":
            both = torch.cat([part["five"], part["half"]], dim=-1)
            return both, both
        raise DatasetError(f"unknown view set {name!r}; choose one of {', '.join(VIEW_SETS)}")


class FeatureCache:
    """One safetensors file per component in `folder` (None: no cache)."""

    def __init__(self, folder: str | Path | None, on_info: Callable[[str], None] | None = None):
        self.folder = Path(folder) if folder is not None else None
        self.say = on_info or (lambda _m: None)

    def _path(self, key: str) -> Path:
        return self.folder / f"{key[:40]}.safetensors"

    def load(self, key: str, n: int, views: int) -> tuple[torch.Tensor, list[str]] | None:
        if self.folder is None or not self._path(key).is_file():
            return None
        try:
            state, meta = load_weights(self._path(key), kind=CACHE_KIND)
            feats = state["features"]
        except (CheckpointError, KeyError, json.JSONDecodeError):
            self.say(f"feature cache file {self._path(key)} is unreadable; encoding again")
            return None
        if meta.get("key") != key or feats.ndim != 3 or tuple(feats.shape[:2]) != (n, views):
            self.say(f"feature cache file {self._path(key)} does not match; encoding again")
            return None
        errors = [""] * n
        for i, e in (meta.get("errors") or {}).items():
            errors[int(i)] = str(e)
        return feats, errors

    def save(self, key: str, feats: torch.Tensor, errors: list[str], record: dict) -> None:
        if self.folder is None:
            return
        meta = {"kind": CACHE_KIND, "key": key, **record,
                "errors": {str(i): e for i, e in enumerate(errors) if e}}
        try:
            export_weights(self._path(key), {"features": feats.contiguous()}, meta)
        except OSError as exc:  # a full or read-only cache folder must not lose the run
            self.say(f"could not write the feature cache ({exc}); going on without it")


def component_key(enc_fp: str, files_fp: str, name: str, views: int, *, image_size: int, seed: int,
                  resize_to) -> str:
    spec = {"version": VIEWS_VERSION, "encoder": enc_fp, "files": files_fp, "component": name, "views": views,
            "image_size": image_size, "seed": seed if name == "train" else None,
            "resize_to": list(resize_to) if resize_to else None}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def extract_features(encoder, paths: list[Path], components: dict[str, int], *, image_size: int, seed: int,
                     workers: int = 0, resize_to=None, cache: FeatureCache | None = None,
                     encoder_digest: str | None = None,
                     on_progress: Callable[[int], None] | None = None) -> ImageFeatures:
    """Features of `components` for every image: read from the cache, or encoded in one pass.

    Args:
        encoder: the frozen `models.encoders.Encoder`.
        paths: the images, in dataset order.
        components: name -> views per image (`components_for`).
        image_size: the crop side.
        seed: the seed of the random training views.
        resize_to: (W, H) every image is resized to on load (a protocol's fixed size), or None.
        cache: where components are read from and written to.
        on_progress: called with the number of images encoded after each batch (not for a full hit).
    """
    cache = cache or FeatureCache(None)
    enc_fp = encoder_fingerprint(encoder, encoder_digest)
    files_fp = files_fingerprint(paths) if cache.folder is not None else ""
    keys = {name: component_key(enc_fp, files_fp, name, views, image_size=image_size, seed=seed,
                                resize_to=resize_to) for name, views in components.items()}
    parts: dict[str, torch.Tensor] = {}
    errors = [""] * len(paths)
    cached = []
    for name, views in components.items():
        hit = cache.load(keys[name], len(paths), views)
        if hit is not None:
            parts[name] = hit[0]
            errors = [a or b for a, b in zip(errors, hit[1])]
            cached.append(name)
    todo = [name for name in components if name not in parts]
    if todo:
        ds = ViewDataset(paths, image_size, train_views=components.get("train", 0) if "train" in todo else 0,
                         test_views="five" in todo, seed=seed, half_views="half" in todo, resize_to=resize_to)
        big = len(paths) * ds.views_per_image * encoder.feature_dim * 4 > _BIG
        out = encode_views(encoder, ds, workers=workers, dtype=torch.float16 if big else torch.float32,
                           on_progress=on_progress)
        errors = [a or b for a, b in zip(errors, out.errors)]
        start = 0
        for name in ("train", "five", "half"):  # the order ViewDataset stacks them in
            if name in todo:
                views = components[name]
                parts[name] = out.features[:, start:start + views].contiguous()
                start += views
                cache.save(keys[name], parts[name], out.errors,
                           {"component": name, "views": views, "encoder": encoder.spec, "images": len(paths),
                            "image_size": image_size})
    return ImageFeatures({k: parts[k] for k in components}, errors, cached, todo)


def fresh_view_sampler(encoder, paths: list, *, image_size: int, seed: int, workers: int, key: tuple,
                       resize_to=None) -> Callable[[int], torch.Tensor]:
    """Epoch -> features of a new random crop+flip of every image (the paper's literal protocol)."""

    def encode(epoch: int) -> torch.Tensor:
        ds = ViewDataset(paths, image_size, train_views=1, test_views=False, seed=seed,
                         key=("fresh", *key, epoch), resize_to=resize_to)
        with encoder_threads():
            out = encode_views(encoder, ds, workers=workers)
        bad = [e for e in out.errors if e]
        if bad:
            raise DatasetError(f"an image became unreadable during training: {bad[0]}")
        return out.features[:, 0]

    return encode


def drop_unreadable(dataset: Dataset, feats: ImageFeatures, skip_missing: bool) -> tuple[Dataset, ImageFeatures, list[str]]:
    """Remove images the encoder pass could not read (with `skip_missing`), else refuse."""
    bad = [e for e in feats.errors if e]
    if not bad:
        return dataset, feats, []
    if not skip_missing:
        raise DatasetError(f"{len(bad)} of {len(dataset.items)} images cannot be read (e.g. {bad[0]}); "
                           "pass --skip-missing to go on without them")
    keep = feats.ok
    idx = [i for i, k in enumerate(keep.tolist()) if k]
    out = replace(dataset, items=[dataset.items[i] for i in idx],
                  unreadable=list(dataset.unreadable) + [dataset.items[i].path for i, k in enumerate(keep.tolist()) if not k],
                  split_columns={k: [v[i] for i in idx] for k, v in dataset.split_columns.items()})
    return out, feats.select(keep), bad
