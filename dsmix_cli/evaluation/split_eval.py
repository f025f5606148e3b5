"""`dsmix evaluate --split test`: the images of one part of the split a probe used.

By default the split comes from the model's record: the probe run writes the exact splits it
used (`RUN/splits.json`, image names per part) and the bundle names that file and its seed. With
`--splits-seed S` other than the recorded seed, split I is drawn again with the probe's
ratios and seed S (split I does not depend on how many splits there are); `--splits-from FILE`
reads a split file instead. The numbers are held out only when the model's head was trained on
that split's training part (`probe --no-final-head` keeps split 0's head); a bundle's default
head was trained on every image, and the result then says so.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from dsmix_cli.data.catalog import Dataset
from dsmix_cli.data.split_files import read_splits
from dsmix_cli.data.splits import make_splits
from dsmix_cli.errors import DsmixError
from dsmix_cli.evaluation.protocols import resolve_protocols

PARTS = ("all", "train", "val", "test")


def select_part(dataset: Dataset, meta: dict, part: str, *, seed: int | None = None, index: int | None = None,
                splits_from: str | Path | None = None) -> tuple[Dataset, dict]:
    """(the dataset restricted to `part` of split `index`, a record of which split it is).

    Args:
        dataset: the loaded dataset.
        meta: the model bundle's metadata (its probe config, splits file, head split).
        part: all, train, val or test.
        seed: the splits' seed (default: the recorded one).
        index: the split (default: the one the head was trained on, else 0).
        splits_from: a split file instead of the record.

    Raises:
        DsmixError: an unknown part, a split index the record does not have, or an empty part.
    """
    if part not in PARTS:
        raise DsmixError(f"--split {part!r}: choose one of {', '.join(PARTS)}")
    if part == "all":
        return dataset, {"split": "all"}
    config = meta.get("config") or {}
    recorded_seed = int(config.get("seed", 0))
    head_split = meta.get("head_split")
    index = int(index if index is not None else (head_split if head_split is not None else 0))
    record = meta.get("splits_file")
    if splits_from is not None:
        splits, source, used_seed = read_splits(splits_from, dataset).splits, str(splits_from), None
    elif (seed is None or seed == recorded_seed) and record and Path(record).is_file():
        splits, source, used_seed = read_splits(record, dataset).splits, f"{record} (the probe's record)", recorded_seed
    else:
        used_seed = recorded_seed if seed is None else int(seed)
        protocol = resolve_protocols(meta.get("protocol") or config.get("protocol") or "dsmix",
                                     train_ratio=config.get("train_ratio"), val_ratio=config.get("val_ratio"))[0]
        splits = make_splits(dataset, index + 1, protocol.train_ratio, protocol.val_ratio, used_seed)
        source = (f"split {index} drawn again: {protocol.train_ratio:g}/{protocol.val_ratio:g} of "
                  f"{dataset.name}, seed {used_seed}")
    chosen = next((s for s in splits if s.index == index), None)
    if chosen is None:
        raise DsmixError(f"--split-index {index}: the splits have indices {splits[0].index}..{splits[-1].index}")
    idx = getattr(chosen, part)
    if not idx:
        raise DsmixError(f"the {part} part of split {index} holds no image of {dataset.name}")
    subset = replace(dataset, items=[dataset.items[i] for i in idx],
                     split_columns={k: [v[i] for i in idx] for k, v in dataset.split_columns.items()})
    if meta.get("trained_on") == "all images":
        held_out = False
        note = ("the model's head was trained on every image of its dataset, this part included: "
                "training-set numbers (probe with --no-final-head to keep split 0's head)")
    elif part == "test" and head_split == index and (seed is None or seed == recorded_seed):
        held_out, note = True, f"held out: the head was trained on the training part of split {index}"
    else:
        held_out = False
        note = (f"the model's head was trained on the training part of split {head_split}, which is not "
                f"disjoint from this {part} part of split {index}")
    return subset, {"split": part, "split_index": index, "splits_seed": used_seed, "splits_source": source,
                    "held_out": held_out, "note": note}
