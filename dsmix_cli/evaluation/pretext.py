"""Held-out accuracy of the QEP pretext heads: counts of predictions, and the metrics from them.

The heads of `models.heads.QualityEncoderNet` answer, for every image, a distortion type (26-way,
class 0 = pristine) and a level (6-way, class 0 = pristine). On unmixed crops with a known type
and level (and on pristine reference crops), `count_predictions` tallies what they answer;
counts from several batches (or ranks) add up (`PretextCounts.add`, `as_tensor`), and
`pretext_metrics` turns them into accuracies:

* type / level accuracy: top-1 over the distorted crops, all classes (answering "pristine" for a
  distorted crop is wrong);
* the same with the pristine class left out of the argmax (`*_no_pristine`): what the heads know
  of the distortion once told that there is one;
* pristine accuracy: the share of reference crops whose type answer is "pristine";
* called pristine: the share of distorted crops whose type answer is "pristine";
* per type, and per (type, level), accuracy of both heads.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

NUM_TYPES = 25
NUM_LEVELS = 5
# the per-cell tallies, indexed by (true type, true level); (0, 0) holds the pristine crops
_N, _TYPE_OK, _LEVEL_OK, _TYPE_OK_NP, _LEVEL_OK_NP = range(5)


@dataclass
class PretextCounts:
    """Tallies of the heads' answers.

    Attributes:
        type_confusion: (26, 26) int64, rows = true type (0 = pristine crops), columns = answer.
        level_confusion: (6, 6) int64, rows = true level (0 = pristine crops), columns = answer.
        cells: (26, 6, 5) int64 per (true type, true level): crops, type right, level right, type
            right and level right with the pristine class left out of the argmax.
    """

    type_confusion: torch.Tensor
    level_confusion: torch.Tensor
    cells: torch.Tensor

    @classmethod
    def zeros(cls, device: torch.device | str = "cpu") -> "PretextCounts":
        z = lambda *s: torch.zeros(*s, dtype=torch.int64, device=device)  # noqa: E731
        return cls(z(NUM_TYPES + 1, NUM_TYPES + 1), z(NUM_LEVELS + 1, NUM_LEVELS + 1), z(NUM_TYPES + 1, NUM_LEVELS + 1, 5))

    def add(self, other: "PretextCounts") -> "PretextCounts":
        self.type_confusion += other.type_confusion.to(self.type_confusion.device)
        self.level_confusion += other.level_confusion.to(self.level_confusion.device)
        self.cells += other.cells.to(self.cells.device)
        return self

    def as_tensor(self) -> torch.Tensor:
        """All tallies in one flat int64 tensor (to sum over ranks); `from_tensor` inverts it."""
        return torch.cat([self.type_confusion.flatten(), self.level_confusion.flatten(), self.cells.flatten()])

    @classmethod
    def from_tensor(cls, flat: torch.Tensor) -> "PretextCounts":
        a, b = (NUM_TYPES + 1) ** 2, (NUM_LEVELS + 1) ** 2
        return cls(flat[:a].view(NUM_TYPES + 1, NUM_TYPES + 1).clone(),
                   flat[a:a + b].view(NUM_LEVELS + 1, NUM_LEVELS + 1).clone(),
                   flat[a + b:].view(NUM_TYPES + 1, NUM_LEVELS + 1, 5).clone())


def count_predictions(type_logits: torch.Tensor, level_logits: torch.Tensor, types: torch.Tensor,
                      levels: torch.Tensor) -> PretextCounts:
    """Tally the heads' top-1 answers for a batch of crops.

    Args:
        type_logits: (N, 26) type-head scores (class 0 = pristine).
        level_logits: (N, 6) level-head scores (class 0 = pristine).
        types, levels: (N,) true type 1..25 and level 1..5 of each crop, or 0 and 0 for a
            pristine crop.
    """
    device = type_logits.device
    types, levels = types.long().to(device), levels.long().to(device)
    t_hat, l_hat = type_logits.argmax(1), level_logits.argmax(1)
    t_hat_np = type_logits[:, 1:].argmax(1) + 1  # the pristine class left out
    l_hat_np = level_logits[:, 1:].argmax(1) + 1
    counts = PretextCounts.zeros(device)
    counts.type_confusion.index_put_((types, t_hat), torch.ones_like(types), accumulate=True)
    counts.level_confusion.index_put_((levels, l_hat), torch.ones_like(levels), accumulate=True)
    per_crop = torch.stack([torch.ones_like(types), (t_hat == types).long(), (l_hat == levels).long(),
                            (t_hat_np == types).long(), (l_hat_np == levels).long()], dim=1)
    flat = counts.cells.view(-1, 5)
    flat.index_add_(0, types * (NUM_LEVELS + 1) + levels, per_crop)
    return counts


def _ratio(num: torch.Tensor | float, den: torch.Tensor | float) -> float:
    den = float(den)
    return float(num) / den if den > 0 else float("nan")


def pretext_metrics(counts: PretextCounts) -> dict:
    """Accuracies from the tallies (NaN where there is nothing to count).

    Returns:
        A dict of scalars `val_type_acc`, `val_level_acc`, `val_type_acc_no_pristine`,
        `val_level_acc_no_pristine`, `val_pristine_acc`, `val_called_pristine` and `val_acc` (the
        mean of the type and level accuracies), plus `per_type` (type -> {"type_acc",
        "level_acc", "n"}) and `per_type_level` ({"type_acc", "level_acc", "n"}: 25 x 5 lists).
    """
    c = counts.cells.double()
    dist = c[1:, 1:]
    n = dist[..., _N].sum()
    tc = counts.type_confusion.double()
    out = {
        "val_type_acc": _ratio(dist[..., _TYPE_OK].sum(), n),
        "val_level_acc": _ratio(dist[..., _LEVEL_OK].sum(), n),
        "val_type_acc_no_pristine": _ratio(dist[..., _TYPE_OK_NP].sum(), n),
        "val_level_acc_no_pristine": _ratio(dist[..., _LEVEL_OK_NP].sum(), n),
        "val_pristine_acc": _ratio(tc[0, 0], tc[0].sum()),
        "val_called_pristine": _ratio(tc[1:, 0].sum(), tc[1:].sum()),
    }
    out["val_acc"] = (out["val_type_acc"] + out["val_level_acc"]) / 2
    by_type = dist.sum(1)
    out["per_type"] = {t: {"type_acc": _ratio(by_type[t - 1, _TYPE_OK], by_type[t - 1, _N]),
                           "level_acc": _ratio(by_type[t - 1, _LEVEL_OK], by_type[t - 1, _N]),
                           "n": int(by_type[t - 1, _N])} for t in range(1, NUM_TYPES + 1)}
    cells = dist.tolist()
    out["per_type_level"] = {
        "type_acc": [[_ratio(cell[_TYPE_OK], cell[_N]) for cell in row] for row in cells],
        "level_acc": [[_ratio(cell[_LEVEL_OK], cell[_N]) for cell in row] for row in cells],
        "n": [[int(cell[_N]) for cell in row] for row in cells],
    }
    return out


SCALARS = ("val_type_acc", "val_level_acc", "val_pristine_acc", "val_called_pristine", "val_type_acc_no_pristine",
           "val_level_acc_no_pristine", "val_acc")
