"""The QPT pretext's pure parts: chains and their space, patches, pair roles, the loss, the MoCo machinery."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dsmix_cli.distortions import distort, distort_batch
from dsmix_cli.models.moco import MomentumContrastNet
from dsmix_cli.models.resnet import build_resnet
from dsmix_cli.qpt import (CONTENT_NEGATIVE, DEGRADATION_NEGATIVE, POSITIVE, SELF, apply_chains, chain_space_size,
                           crop_patches, draw_chain, draw_chain_pair, draw_patch_offsets, encode_chains,
                           enqueue, enumerate_chains, momentum_update, pair_roles, qpt_loss)

# ------------------------------------------------------------------------------ chains


@pytest.mark.parametrize("n_types,n_levels,steps,skip", [(3, 2, 2, 0.5), (3, 2, 3, 0.3), (4, 1, 2, 0.5),
                                                          (3, 2, 2, 0.0), (3, 2, 3, 0.0), (2, 3, 1, 0.9)])
def test_space_size_equals_the_enumerated_chains(n_types, n_levels, steps, skip):
    types, levels = list(range(1, n_types + 1)), list(range(1, n_levels + 1))
    chains = enumerate_chains(types, levels, steps, skip)
    assert len(chains) == chain_space_size(n_types, n_levels, steps, skip)
    for chain in chains:  # distinct types, known levels, at most `steps` steps; all of them without skips
        assert len({t for t, _ in chain}) == len(chain) <= steps
        assert all(t in types and lv in levels for t, lv in chain)
        if skip == 0:
            assert len(chain) == steps


def test_space_size_by_hand():
    # 3 types, 2 levels, up to 2 steps: the identity, 3 x 2 one-step chains, 3 x 2 x 2 x 2 two-step ones
    assert chain_space_size(3, 2, 2, 0.5) == 1 + 6 + 24
    # the defaults: 25 types, 5 levels, up to 3 steps
    assert chain_space_size(25, 5, 3, 0.5) == 1 + 25 * 5 + 25 * 24 * 5 ** 2 + 25 * 24 * 23 * 5 ** 3 == 1_740_126


def test_draw_chain_reaches_the_whole_space_with_the_skip_rate():
    types, levels, steps, skip = [2, 7, 11], [1, 4], 2, 0.5
    space = enumerate_chains(types, levels, steps, skip)
    g = torch.Generator().manual_seed(0)
    drawn = [draw_chain(g, types, levels, steps, skip) for _ in range(3000)]
    assert set(drawn) == space  # every chain drawn is reachable, and all 31 come up
    empty = sum(c == () for c in drawn) / len(drawn)
    assert abs(empty - skip ** steps) < 4 * math.sqrt(0.25 * 0.75 / 3000)
    # a chain is a function of its generator's seed
    assert draw_chain(torch.Generator().manual_seed(5), types, levels, 2, 0.5) == \
        draw_chain(torch.Generator().manual_seed(5), types, levels, 2, 0.5)


def test_the_two_chains_of_a_reference_differ():
    g = torch.Generator().manual_seed(1)
    for _ in range(200):  # a space of two chains: (1, 1) and (1, 2)
        a, b = draw_chain_pair(g, [1], [1, 2], 1, 0.0)
        assert a != b


def test_encode_chains_pads_with_zero():
    t, lv = encode_chains([((3, 2), (9, 5)), ()], 3)
    assert t.tolist() == [[3, 9, 0], [0, 0, 0]] and lv.tolist() == [[2, 5, 0], [0, 0, 0]]


def test_apply_chains_is_the_sequence_of_its_steps():
    """Deterministic types (Gaussian blur, brighten, JPEG2000, sharpen): the batched chains equal
    applying each image's steps one by one, and `start` / `stop` cut the chain where asked."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 24, 24, generator=g)
    chains = [((1, 3), (16, 2), (24, 4)), ((16, 5),), ((24, 1), (1, 2))]
    types, levels = encode_chains(chains, 3)
    out = apply_chains(x, types, levels, distort_batch)
    for i, chain in enumerate(chains):
        ref = x[i:i + 1]
        for t, lv in chain:
            ref = distort(ref, t, lv)
        assert torch.allclose(out[i:i + 1], ref, atol=1e-6), i
    # the first step of image 0 done elsewhere, and only the first two steps wanted
    first = distort(x[:1], 1, 3)
    done = x.clone()
    done[0] = first[0]
    part = apply_chains(done, types, levels, distort_batch, start=torch.tensor([1, 0, 0]), stop=2)
    assert torch.allclose(part[0:1], distort(first, 16, 2), atol=1e-6)
    assert torch.allclose(part[2:3], distort(distort(x[2:3], 24, 1), 1, 2), atol=1e-6)
    assert torch.equal(apply_chains(x, *encode_chains([(), (), ()], 3), distort_batch), x)


# ------------------------------------------------------------------------------ patches


def test_patch_offsets_are_two_different_positions_inside_the_region():
    g = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(300):
        off = draw_patch_offsets(g, 6, 4)  # 3 x 3 positions
        assert off.shape == (2, 2) and not torch.equal(off[0], off[1])
        assert int(off.min()) >= 0 and int(off.max()) <= 2
        seen.add(tuple(off[0].tolist()))
    assert len(seen) == 9
    with pytest.raises(ValueError):
        draw_patch_offsets(g, 4, 4)


def test_crop_patches_matches_slicing():
    g = torch.Generator().manual_seed(0)
    regions = torch.rand(3, 3, 10, 12, generator=g)
    offsets = torch.tensor([[[0, 0], [2, 5]], [[6, 1], [3, 3]], [[1, 8], [0, 7]]])
    out = crop_patches(regions, offsets, 4)
    assert out.shape == (6, 3, 4, 4)
    for m in range(3):
        for k in range(2):
            top, left = offsets[m, k].tolist()
            assert torch.equal(out[2 * m + k], regions[m, :, top:top + 4, left:left + 4])


# ------------------------------------------------------------------------------ roles and the loss


def test_pair_roles_name_the_positive_and_negative_sets():
    roles = pair_roles(3)  # 3 references x 2 chains x 2 patches: patch index 4b + 2c + p
    assert roles.shape == (12, 12)
    for b in range(3):
        for c in range(2):
            for p in range(2):
                i = 4 * b + 2 * c + p
                assert roles[i, i] == SELF
                assert roles[i, 4 * b + 2 * c + (1 - p)] == POSITIVE
                assert roles[i, 4 * b + 2 * (1 - c)] == DEGRADATION_NEGATIVE
                assert roles[i, 4 * b + 2 * (1 - c) + 1] == DEGRADATION_NEGATIVE
                others = [j for j in range(12) if j // 4 != b]
                assert all(roles[i, j] == CONTENT_NEGATIVE for j in others)
    counts = [(roles == r).sum(1).tolist() for r in (SELF, POSITIVE, DEGRADATION_NEGATIVE, CONTENT_NEGATIVE)]
    assert counts == [[1] * 12, [1] * 12, [2] * 12, [8] * 12]


def test_pair_roles_on_the_second_of_two_ranks():
    roles = pair_roles(2, rank=1, world_size=2)  # queries are global patches 8..15
    assert roles.shape == (8, 16)
    assert roles[0, 8] == SELF and roles[0, 9] == POSITIVE and roles[0, 10] == DEGRADATION_NEGATIVE
    assert (roles[:, :8] == CONTENT_NEGATIVE).all()  # rank 0's references are other content
    assert roles[5, 13] == SELF and roles[5, 12] == POSITIVE and roles[5, 15] == DEGRADATION_NEGATIVE


def test_loss_hand_worked_three_images():
    """3 references; the key of every patch is the unit vector of its (reference, chain), and so
    is the query: a query matches its positive and its own key (cos 1) and nothing else (cos 0).
    The own key is left out, so each query sees e^(1/t) against 2 + 8 + K terms of e^0."""
    t, k_queue = 0.2, 5
    basis = torch.eye(16)
    idx = torch.arange(12) // 2  # (reference, chain) of each patch: 0..5
    q = basis[idx]
    keys = basis[idx]
    queue = basis[10:10 + k_queue]  # orthogonal to every query
    loss, parts = qpt_loss(q, keys, pair_roles(3), queue, t)
    expected = -math.log(math.exp(1 / t) / (math.exp(1 / t) + 2 + 8 + k_queue))
    assert float(loss) == pytest.approx(expected, rel=1e-5)  # float32
    assert float(parts["sim_pos"]) == 1 and float(parts["sim_deg"]) == 0 and float(parts["acc"]) == 1
    # without the queue the denominator loses its K terms
    loss, _ = qpt_loss(q, keys, pair_roles(3), None, t)
    assert float(loss) == pytest.approx(-math.log(math.exp(5) / (math.exp(5) + 10)), rel=1e-5)


def test_loss_with_known_similarities_against_an_independent_sum():
    """Queries and keys at chosen angles in the plane (cos = known values), 3 references, a
    2-key queue; the loss is summed query by query from the definition, in numpy."""
    t = 0.5
    rng = np.random.default_rng(3)
    q_ang, k_ang, queue_ang = rng.uniform(0, 2 * np.pi, 12), rng.uniform(0, 2 * np.pi, 12), np.array([0.3, 2.0])

    def vec(a):
        return np.stack([np.cos(a), np.sin(a)], axis=1)

    q, k, queue = vec(q_ang), vec(k_ang), vec(queue_ang)
    total = 0.0
    for b in range(3):
        for c in range(2):
            for p in range(2):
                i = 4 * b + 2 * c + p
                pos = np.cos(q_ang[i] - k_ang[4 * b + 2 * c + 1 - p])  # cos of the angle between them
                negs = [np.cos(q_ang[i] - k_ang[4 * b + 2 * (1 - c) + pp]) for pp in range(2)]
                negs += [np.cos(q_ang[i] - k_ang[j]) for j in range(12) if j // 4 != b]
                negs += [np.cos(q_ang[i] - a) for a in queue_ang]
                assert len(negs) == 2 + 8 + 2
                total += -np.log(np.exp(pos / t) / (np.exp(pos / t) + np.exp(np.array(negs) / t).sum()))
    loss, _ = qpt_loss(torch.tensor(q), torch.tensor(k), pair_roles(3), torch.tensor(queue), t)
    assert float(loss) == pytest.approx(total / 12, rel=1e-5)


def test_loss_gradient_reaches_the_queries_only():
    g = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(8, 4, generator=g), dim=1).requires_grad_(True)
    k = torch.nn.functional.normalize(torch.randn(8, 4, generator=g), dim=1).requires_grad_(True)
    loss, _ = qpt_loss(q, k, pair_roles(2), None, 0.2)
    loss.backward()
    assert q.grad is not None and q.grad.abs().sum() > 0 and k.grad is None
    with pytest.raises(ValueError, match="exactly one positive"):
        qpt_loss(q, k, torch.full((8, 8), CONTENT_NEGATIVE), None, 0.2)


# ------------------------------------------------------------------------------ MoCo machinery


def test_momentum_update_is_the_moving_average():
    k = [torch.tensor([1.0, 2.0]), torch.tensor([[0.0]])]
    q = [torch.tensor([3.0, -2.0]), torch.tensor([[10.0]])]
    momentum_update(k, q, 0.9)
    assert torch.allclose(k[0], torch.tensor([0.9 * 1 + 0.1 * 3, 0.9 * 2 - 0.1 * 2]))
    assert torch.allclose(k[1], torch.tensor([[1.0]]))


def test_enqueue_is_a_ring_buffer():
    queue = torch.zeros(5, 2)
    ring, ptr = np.zeros((5, 2)), 0
    for n, start in ((2, 1.0), (4, 10.0), (7, 100.0), (0, 0.0), (5, 1000.0)):
        keys = torch.arange(start, start + 2 * n).view(n, 2) if n else torch.zeros(0, 2)
        for row in keys.numpy():  # one row at a time, what a ring buffer does
            ring[ptr % 5] = row
            ptr += 1
        new = enqueue(queue, int((ptr - n) % 5), keys)
        assert new == ptr % 5
        np.testing.assert_array_equal(queue.numpy(), ring)


def test_model_step_moves_the_key_encoder_and_fills_the_queue():
    torch.manual_seed(0)
    net = MomentumContrastNet(build_resnet("resnet18"), dim=8, hidden=16, queue_size=10, momentum=0.5)
    with torch.no_grad():  # make the query side differ from the key side
        for p in net.query_params():
            p.add_(0.01)
    before_k = [p.clone() for p in net.key_params()]
    q_params = [p.clone() for p in net.query_params()]
    queue0 = net.queue.clone()
    x = torch.rand(4, 3, 32, 32)
    out = net(x)
    for k0, q0, k1 in zip(before_k, q_params, net.key_params()):
        assert torch.allclose(k1, 0.5 * k0 + 0.5 * q0)
    assert torch.allclose(out["q"].norm(dim=1), torch.ones(4)) and out["q"].requires_grad
    assert torch.equal(out["queue"], queue0)  # the loss sees the queue before this batch
    assert torch.equal(net.queue[:4], out["keys"]) and torch.equal(net.queue[4:], queue0[4:])
    assert int(net.queue_ptr) == 4 and not out["keys"].requires_grad
    # the keys are the momentum encoder's normalised embeddings (BN in training mode, as MoCo)
    ref = torch.nn.functional.normalize(net.momentum_head(net.momentum_encoder(x)), dim=1)
    assert torch.allclose(out["keys"], ref, atol=1e-5)
    assert set(net.state_dict()) >= {"queue", "queue_ptr", "momentum_encoder.conv1.weight", "encoder.conv1.weight"}
