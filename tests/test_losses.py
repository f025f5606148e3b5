"""Soft cross-entropy (Eq. 6), the KD loss (Eq. 7) and the QEP heads, against numpy by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from dsmix_cli.models.heads import MLPHead, QualityEncoderNet
from dsmix_cli.models.losses import kd_loss, soft_cross_entropy
from dsmix_cli.models.resnet import build_resnet


def test_soft_cross_entropy_matches_numpy_and_hard_labels():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 7, generator=g)
    target = torch.rand(5, 7, generator=g)
    target = target / target.sum(1, keepdim=True)
    z = logits.numpy().astype(np.float64)
    log_p = z - np.log(np.exp(z).sum(1, keepdims=True))
    want = -(target.numpy() * log_p).sum(1).mean()
    assert soft_cross_entropy(logits, target).item() == pytest.approx(want, rel=1e-5)
    labels = torch.tensor([0, 3, 6, 1, 2])
    hard = nn.functional.one_hot(labels, 7).float()
    assert soft_cross_entropy(logits, hard).item() == pytest.approx(
        nn.functional.cross_entropy(logits, labels).item(), rel=1e-6)


def _np_kd(student, teacher, alpha, beta):
    fr = cos = 0.0
    for s, t in zip(student, teacher):
        s, t = s.numpy().astype(np.float64), t.numpy().astype(np.float64)
        fr += np.abs(s - t).mean()
        per = []
        for n in range(s.shape[0]):
            a, b = s[n].ravel(), t[n].ravel()
            per.append(1 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
        cos += np.mean(per)
    return alpha * fr + beta * cos, fr, cos


def test_kd_loss_matches_numpy_and_weights_its_terms():
    g = torch.Generator().manual_seed(1)
    shapes = [(3, 4, 8, 8), (3, 8, 4, 4), (3, 16, 2, 2), (3, 32, 1, 1)]
    student = [torch.randn(s, generator=g) for s in shapes]
    teacher = [torch.randn(s, generator=g) for s in shapes]
    for alpha, beta in [(1.0, 1.0), (0.1, 10.0), (0.0, 0.0)]:
        total, fr, cosd = kd_loss(student, teacher, alpha, beta)
        w_total, w_fr, w_cos = _np_kd(student, teacher, alpha, beta)
        assert fr.item() == pytest.approx(w_fr, rel=1e-5)
        assert cosd.item() == pytest.approx(w_cos, rel=1e-5)
        assert total.item() == pytest.approx(w_total, rel=1e-5, abs=1e-7)
    same = kd_loss(teacher, teacher)
    assert same[1].item() == 0.0 and same[2].item() == pytest.approx(0.0, abs=1e-6)
    # cosine distance ignores scale, MAE does not
    scaled = kd_loss([2 * t for t in teacher], teacher)
    assert scaled[2].item() == pytest.approx(0.0, abs=1e-6) and scaled[1].item() > 0


def test_kd_loss_gradient_reaches_student_only_and_shapes_must_match():
    s = [torch.randn(2, 3, 4, 4, requires_grad=True)]
    t = [torch.randn(2, 3, 4, 4, requires_grad=True)]
    kd_loss(s, t)[0].backward()
    assert s[0].grad is not None and t[0].grad is None
    with pytest.raises(ValueError, match="teacher of the student's architecture"):
        kd_loss([torch.zeros(1, 3, 2, 2)], [torch.zeros(1, 4, 2, 2)])


def test_heads_follow_method_section_4():
    head = MLPHead(2048, 26)
    kinds = [type(m) for m in head]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert (head[0].in_features, head[0].out_features, head[3].out_features) == (2048, 1024, 26)
    net = QualityEncoderNet(build_resnet("resnet18"), joint_head=True, hidden=64)
    x = torch.rand(2, 3, 32, 32)
    logits, stages = net(x, return_stages=True)
    assert {k: tuple(v.shape) for k, v in logits.items()} == {"type": (2, 26), "level": (2, 6), "joint": (2, 126)}
    assert [s.shape[1] for s in stages] == [64, 128, 256, 512]
    net.eval()
    torch.testing.assert_close(net(x)["type"], net.heads["type"](net.backbone(x)))
    assert set(QualityEncoderNet(build_resnet("resnet18"), hidden=8).heads) == {"type", "level"}
