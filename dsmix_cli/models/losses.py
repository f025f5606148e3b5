"""The QEP losses: soft cross-entropy (Eq. 6) and the semantic KD loss (Eq. 7), docs/method.md section 5."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Eq. 6: L_CE = -(1/N) sum_i sum_c y~_ic log softmax(z_i)_c, computed in float32.

    Args:
        logits: (N, C) raw scores.
        target: (N, C) soft targets (rows sum to 1).

    Returns:
        The scalar mean over the N samples.
    """
    log_p = F.log_softmax(logits.float(), dim=1)
    return -(target.float() * log_p).sum(dim=1).mean()


def cosine_distance(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """CosD of one stage: 1 - cos(vec(F_s[n]), vec(F_t[n])), averaged over samples n (ours, docs/method.md 5)."""
    s = student.float().flatten(1)
    t = teacher.float().flatten(1)
    return (1.0 - F.cosine_similarity(s, t, dim=1, eps=1e-8)).mean()


def kd_loss(student_stages: list[torch.Tensor], teacher_stages: list[torch.Tensor],
            alpha: float = 1.0, beta: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eq. 7: L_KD = alpha L_FR + beta L_CosD over the given stages (layer1..layer4).

    L_FR = sum_i MAE(F_s^i, F_t^i) (mean absolute difference over all elements of stage i);
    L_CosD = sum_i CosD(F_s^i, F_t^i) (see `cosine_distance`). Computed in float32; the teacher
    features carry no gradient.

    Args:
        student_stages, teacher_stages: matching lists of (N, C_i, H_i, W_i) stage outputs.
        alpha, beta: the weights of the two terms (lost from the paper's text; ours: 1 and 1).

    Returns:
        (total, fr, cosd): the weighted total and the two unweighted sums.
    """
    if len(student_stages) != len(teacher_stages):
        raise ValueError(f"kd_loss: {len(student_stages)} student stages vs {len(teacher_stages)} teacher stages")
    fr = student_stages[0].new_zeros((), dtype=torch.float32)
    cosd = fr.clone()
    for s, t in zip(student_stages, teacher_stages):
        if s.shape != t.shape:
            raise ValueError(f"kd_loss: student stage {tuple(s.shape)} vs teacher stage {tuple(t.shape)} "
                             f"(use a teacher of the student's architecture)")
        t = t.detach()
        fr = fr + (s.float() - t.float()).abs().mean()
        cosd = cosd + cosine_distance(s, t)
    return alpha * fr + beta * cosd, fr, cosd
