"""QPT-style quality-aware contrastive pre-training: the pure parts.

The pretext rests on one assumption (from the QPT abstract): patches of the same distorted
image have similar quality; they differ from patches of the same image under another
degradation, and from patches of other images. One training sample is therefore:

* a reference region, and two independent *degradation chains* applied to it (chain 0, 1);
* from each degraded region, two patches at different positions (patch 0, 1).

So a reference gives four patches, indexed `4 b + 2 c + p` (reference b, chain c, patch p).
For the query patch (b, c, p):

* the positive is the key of (b, c, 1 - p): the other patch of the same degraded image;
* the *degradation negatives* are the keys of (b, 1 - c, 0) and (b, 1 - c, 1): the same
  content under the other chain;
* the *content negatives* are the keys of every patch of the other references of the (global)
  batch, and the momentum queue of earlier keys;
* its own key (b, c, p) is left out: it is the same image, not a second view.

The loss is InfoNCE over those sets with a momentum (key) encoder and a queue, as MoCo v2
builds them. A degradation chain draws `steps` distinct types in a random order, skips each
step with probability `skip` and draws each level uniformly (`draw_chain`, counted exactly by
`chain_space_size`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import permutations, product
from typing import Callable, Iterable, Sequence

import torch
from torch.nn import functional as F

# Roles of a (query, key) pair in `pair_roles`.
SELF, POSITIVE, DEGRADATION_NEGATIVE, CONTENT_NEGATIVE = 0, 1, 2, 3
PATCHES_PER_REF = 4  # 2 chains x 2 patches

Chain = tuple[tuple[int, int], ...]  # ((type, level), ...) in the order applied


@dataclass
class QPTOptions:
    """The options of `qep --pretext qpt` (recorded in config.json under `qpt`).

    The temperature, queue size, key-encoder momentum and projection head are MoCo v2's
    published defaults (the QPT abstract does not give them); the chain rules are this
    project's.

    Attributes:
        steps: the most degradation steps in a chain (N).
        skip: the probability that each step is skipped (0 <= skip < 1).
        region: side of the reference region the chains degrade, in pixels; the patches (the
            `--image-size` crops) are cut from it. None: 3/2 of the patch size.
        temperature: the InfoNCE temperature (MoCo v2: 0.2).
        queue: the number of keys in the momentum queue (MoCo: 65536).
        momentum: the key encoder's momentum (MoCo: 0.999).
        dim: the projection head's output width (MoCo: 128).
        hidden: the projection head's hidden width. None: the encoder's feature width, as MoCo
            v2 (2048 for ResNet-50: 2048 -> 2048 -> 128).
    """

    steps: int = 3
    skip: float = 0.5
    region: int | None = None
    temperature: float = 0.2
    queue: int = 65536
    momentum: float = 0.999
    dim: int = 128
    hidden: int | None = None


def default_region(patch: int) -> int:
    """The default region side for a patch side: 3/2 of it (336 for 224)."""
    return (3 * patch) // 2


# ------------------------------------------------------------------------------ degradation chains

def chain_from_draws(order: Sequence[int], skipped: Sequence[bool], level_index: Sequence[int],
                     types: Sequence[int], levels: Sequence[int]) -> Chain:
    """The chain that a set of draws defines: step i applies type `types[order[i]]` at level
    `levels[level_index[i]]` unless `skipped[i]`; the steps that remain keep their order."""
    return tuple((int(types[o]), int(levels[li])) for o, s, li in zip(order, skipped, level_index) if not s)


def draw_chain(g: torch.Generator, types: Sequence[int], levels: Sequence[int], steps: int,
               skip: float) -> Chain:
    """One random degradation chain: `steps` distinct types in a random (shuffled) order, each
    step skipped with probability `skip`, each level uniform over `levels`.

    The draws come from `g` only, in a fixed order (permutation, skips, levels), so a sample's
    chain is a function of its generator's seed.
    """
    order = torch.randperm(len(types), generator=g)[:steps].tolist()
    skipped = (torch.rand(steps, generator=g) < skip).tolist()
    level_index = torch.randint(len(levels), (steps,), generator=g).tolist()
    return chain_from_draws(order, skipped, level_index, types, levels)


def draw_chain_pair(g: torch.Generator, types: Sequence[int], levels: Sequence[int], steps: int,
                    skip: float) -> tuple[Chain, Chain]:
    """Two independent chains for one reference; the second is drawn again while it equals the
    first, so the degradation negatives really carry another degradation."""
    first = draw_chain(g, types, levels, steps, skip)
    second = draw_chain(g, types, levels, steps, skip)
    while second == first:
        second = draw_chain(g, types, levels, steps, skip)
    return first, second


def chain_space_size(num_types: int, num_levels: int, steps: int, skip: float) -> int:
    """The exact number of distinct chains `draw_chain` can produce.

    With 0 < skip < 1 a chain keeps any n of its N = `steps` slots (n = 0 is the identity), and
    an n-step chain is an ordered choice of n distinct types with a level each:
    sum_{n=0}^{N} T! / (T - n)! * L^n. With skip = 0 only the N-step chains occur.
    """
    if not 1 <= steps <= num_types:
        raise ValueError(f"steps {steps} must lie in 1..{num_types}")
    lengths = [steps] if skip <= 0 else range(steps + 1)
    return sum(math.perm(num_types, n) * num_levels ** n for n in lengths)


def enumerate_chains(types: Sequence[int], levels: Sequence[int], steps: int, skip: float) -> set[Chain]:
    """Every chain reachable through `chain_from_draws` (brute force over all draws; tiny cases only)."""
    skip_masks: Iterable[tuple[bool, ...]] = ([(False,) * steps] if skip <= 0
                                              else product((False, True), repeat=steps))
    skip_masks = list(skip_masks)
    out: set[Chain] = set()
    for order in permutations(range(len(types)), steps):
        for mask in skip_masks:
            for lv in product(range(len(levels)), repeat=steps):
                out.add(chain_from_draws(order, mask, lv, types, levels))
    return out


def encode_chains(chains: Sequence[Chain], steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Chains as (len, steps) type and level tensors; unused steps are 0."""
    t = torch.zeros(len(chains), steps, dtype=torch.long)
    lv = torch.zeros(len(chains), steps, dtype=torch.long)
    for i, chain in enumerate(chains):
        for s, (ty, le) in enumerate(chain):
            t[i, s], lv[i, s] = ty, le
    return t, lv


def apply_chains(x: torch.Tensor, types: torch.Tensor, levels: torch.Tensor, distort: Callable,
                 generator=None, start: torch.Tensor | None = None, stop: int | None = None) -> torch.Tensor:
    """Apply one chain per image: step s of every chain in one batched call per step.

    Args:
        x: (M, 3, H, W) images in [0, 1].
        types, levels: (M, N) chains from `encode_chains` (type 0 = no step).
        distort: `distort(images, types, levels, generator=...)`, e.g.
            `dsmix_cli.distortions.distort_batch`.
        generator: passed to `distort`.
        start: (M,) steps already applied to each image (they are not applied again).
        stop: apply the steps before this index only (default: all).

    Returns:
        A new tensor: x after steps [start, stop) of its chain.
    """
    out = x.clone()
    stop = types.shape[1] if stop is None else stop
    start = torch.zeros(x.shape[0], dtype=torch.long, device=types.device) if start is None else start
    for s in range(stop):
        rows = ((types[:, s] > 0) & (start <= s)).nonzero().flatten()
        if len(rows):
            idx = rows.to(x.device)
            out[idx] = distort(out[idx], types[rows, s], levels[rows, s], generator=generator)
    return out


def draw_patch_offsets(g: torch.Generator, region: int, patch: int) -> torch.Tensor:
    """Two different (top, left) patch positions in a region, uniform: a (2, 2) tensor."""
    span = region - patch + 1
    if span < 2:
        raise ValueError(f"a region of {region} px holds a single {patch} px patch position")
    first = torch.randint(span, (2,), generator=g)
    second = torch.randint(span, (2,), generator=g)
    while torch.equal(first, second):
        second = torch.randint(span, (2,), generator=g)
    return torch.stack([first, second])


def crop_patches(regions: torch.Tensor, offsets: torch.Tensor, size: int) -> torch.Tensor:
    """Cut square patches out of regions in one gather.

    Args:
        regions: (M, C, R, R) images.
        offsets: (M, K, 2) (top, left) of K patches per region.
        size: the patch side.

    Returns:
        (M * K, C, size, size): patch k of region m at row m * K + k.
    """
    m, k = offsets.shape[:2]
    ar = torch.arange(size, device=regions.device)
    off = offsets.to(regions.device).reshape(m * k, 2)
    ys = (off[:, 0:1] + ar)[:, None, :, None]
    xs = (off[:, 1:2] + ar)[:, None, None, :]
    rows = torch.arange(m, device=regions.device).repeat_interleave(k)[:, None, None, None]
    chans = torch.arange(regions.shape[1], device=regions.device)[None, :, None, None]
    return regions[rows, chans, ys, xs]


# ------------------------------------------------------------------------------ pairs and the loss

def pair_roles(refs_per_rank: int, rank: int = 0, world_size: int = 1,
               device: torch.device | str = "cpu") -> torch.Tensor:
    """The role of every (local query, global key) pair.

    Queries are this rank's 4 * refs_per_rank patches; keys are all ranks' patches in rank
    order (this rank's at columns 4 * refs_per_rank * rank on). Patch index 4 b + 2 c + p.

    Returns:
        (4 B, 4 B W) long: SELF (its own key, left out), POSITIVE (same reference and chain,
        other patch), DEGRADATION_NEGATIVE (same reference, other chain) or CONTENT_NEGATIVE
        (another reference).
    """
    n = PATCHES_PER_REF * refs_per_rank
    q = torch.arange(n, device=device) + n * rank  # the queries' global indices
    k = torch.arange(n * world_size, device=device)
    same_ref = (q[:, None] // 4) == (k[None, :] // 4)
    same_chain = same_ref & ((q[:, None] // 2) == (k[None, :] // 2))
    same = q[:, None] == k[None, :]
    roles = torch.full((n, n * world_size), CONTENT_NEGATIVE, dtype=torch.long, device=device)
    roles[same_ref] = DEGRADATION_NEGATIVE
    roles[same_chain] = POSITIVE
    roles[same] = SELF
    return roles


def qpt_loss(q: torch.Tensor, keys: torch.Tensor, roles: torch.Tensor, queue: torch.Tensor | None,
             temperature: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The quality-aware InfoNCE loss, in float32.

    For query i with positive key k+ and negative set N_i (its degradation and content
    negatives in the batch, and every queue entry):

        L_i = -log( exp(q_i . k+ / t) / (exp(q_i . k+ / t) + sum_{n in N_i} exp(q_i . n / t)) )

    and the loss is the mean of L_i over the queries. Inputs are L2-normalised embeddings, so
    the dot products are cosine similarities.

    Args:
        q: (n, D) queries (with gradient).
        keys: (m, D) keys of the batch (no gradient), columns of `roles`.
        roles: (n, m) from `pair_roles`: exactly one POSITIVE per row.
        queue: (K, D) earlier keys (content negatives), or None.
        temperature: t.

    Returns:
        (loss, parts): parts hold the mean similarity of each kind of pair (`sim_pos`,
        `sim_deg`, `sim_content`, `sim_queue`) and `acc`, the fraction of queries whose
        positive has the highest similarity among its candidates.
    """
    with torch.autocast(device_type=q.device.type, enabled=False):
        q, keys = q.float(), keys.float().detach()
        pos_mask = roles == POSITIVE
        if not bool((pos_mask.sum(1) == 1).all()):
            raise ValueError("every query needs exactly one positive key")
        sim = q @ keys.T
        cand = [sim.masked_fill(roles == SELF, float("-inf"))]
        if queue is not None and queue.shape[0]:
            sim_q = q @ queue.float().detach().T
            cand.append(sim_q)
        logits = torch.cat(cand, dim=1) / temperature
        pos = sim[pos_mask] / temperature  # one per row, in row order
        loss = (torch.logsumexp(logits, dim=1) - pos).mean()
        with torch.no_grad():
            best = logits.max(dim=1).values
            parts = {
                "sim_pos": sim[pos_mask].mean(),
                "sim_deg": sim[roles == DEGRADATION_NEGATIVE].mean(),
                "sim_content": (sim[roles == CONTENT_NEGATIVE].mean() if bool((roles == CONTENT_NEGATIVE).any())
                                else sim.new_zeros(())),
                "sim_queue": cand[1].mean() if len(cand) > 1 else sim.new_zeros(()),
                "acc": (pos >= best).float().mean(),
            }
    return loss, parts


# ------------------------------------------------------------------------------ MoCo machinery

@torch.no_grad()
def momentum_update(target: Iterable[torch.Tensor], source: Iterable[torch.Tensor], momentum: float) -> None:
    """theta_k <- m theta_k + (1 - m) theta_q, in place, for matching parameter lists (MoCo)."""
    for k, q in zip(target, source):
        k.mul_(momentum).add_(q.detach(), alpha=1.0 - momentum)


@torch.no_grad()
def enqueue(queue: torch.Tensor, ptr: int, keys: torch.Tensor) -> int:
    """Write `keys` into the ring buffer `queue` (K, D) from row `ptr` on, wrapping around, and
    return the new pointer. More keys than K: the last K are kept, ending at the new pointer."""
    size, n = queue.shape[0], keys.shape[0]
    if n == 0:
        return ptr
    if n > size:
        ptr, keys = (ptr + n - size) % size, keys[n - size:]
        n = size
    rows = (ptr + torch.arange(n, device=queue.device)) % size
    queue[rows] = keys.to(queue.dtype)
    return int((ptr + n) % size)


def normalize(x: torch.Tensor) -> torch.Tensor:
    """L2-normalise the rows of an embedding, in float32."""
    return F.normalize(x.float(), dim=1)
