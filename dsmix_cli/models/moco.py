"""The momentum-contrast network of `qep --pretext qpt` (MoCo v2's construction).

`MomentumContrastNet` holds the query encoder (`encoder`, the ResNet that is exported and
probed) with its projection head, a momentum copy of both (the key encoder, never trained by
gradients) and the queue of earlier keys with its pointer. Everything is a parameter or a
buffer, so the state dict, and therefore every checkpoint, holds the whole training state.

One `forward` does MoCo's step: the queries; then, without gradients, the momentum update of
the key encoder, the keys, and the enqueueing of the keys of the whole (all-rank) batch.
Under DDP the keys are computed with MoCo's *shuffle BN*: the key images of all ranks are
gathered, permuted by a permutation every rank draws from the same seed, split back over the
ranks, encoded, and restored to their order, so no rank's BatchNorm statistics tell a query
where its positive key is.
"""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist
from torch import nn

from dsmix_cli.models.resnet import ResNetBackbone
from dsmix_cli.qpt import enqueue, momentum_update, normalize


class ProjectionHead(nn.Sequential):
    """MoCo v2's MLP head: Linear(in, hidden) -> ReLU -> Linear(hidden, out) (2048-2048-128 on ResNet-50)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int):
        super().__init__(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_dim))


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@torch.no_grad()
def all_gather_cat(x: torch.Tensor) -> torch.Tensor:
    """The rank-ordered concatenation of every rank's equally shaped `x` (no gradient)."""
    _, world = _world()
    if world == 1:
        return x
    x = x.contiguous()
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x)
    return torch.cat(parts)


class MomentumContrastNet(nn.Module):
    """Query encoder + projection head, their momentum copies, and the key queue.

    Args:
        encoder: the ResNet backbone being trained (exported as the quality encoder).
        dim: the embedding width (projection output).
        hidden: the projection head's hidden width (None: the encoder's feature width).
        queue_size: keys kept in the queue.
        momentum: the key encoder's momentum m.
        queue_seed: seed of the queue's initial random unit vectors (as MoCo, a random start).
    """

    def __init__(self, encoder: ResNetBackbone, dim: int = 128, hidden: int | None = None,
                 queue_size: int = 65536, momentum: float = 0.999, queue_seed: int = 0):
        super().__init__()
        self.momentum = float(momentum)
        self.encoder = encoder
        self.head = ProjectionHead(encoder.feature_dim, hidden or encoder.feature_dim, dim)
        self.momentum_encoder = copy.deepcopy(encoder).requires_grad_(False)
        self.momentum_head = copy.deepcopy(self.head).requires_grad_(False)
        g = torch.Generator().manual_seed(int(queue_seed))
        self.register_buffer("queue", normalize(torch.randn(queue_size, dim, generator=g)))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    @property
    def backbone(self) -> ResNetBackbone:
        """The query encoder (what is exported and probed)."""
        return self.encoder

    def query_params(self) -> list[torch.Tensor]:
        return [*self.encoder.parameters(), *self.head.parameters()]

    def key_params(self) -> list[torch.Tensor]:
        return [*self.momentum_encoder.parameters(), *self.momentum_head.parameters()]

    def _embed_keys(self, x: torch.Tensor) -> torch.Tensor:
        return normalize(self.momentum_head(self.momentum_encoder(x)))

    @torch.no_grad()
    def keys(self, x: torch.Tensor, shuffle_seed: int | None = None) -> torch.Tensor:
        """Keys of every rank's images, in rank order: (world * n, D).

        With more than one rank the images are shuffled across ranks (shuffle BN) with a
        permutation drawn from `shuffle_seed`, identical on every rank.
        """
        rank, world = _world()
        if world == 1:
            return self._embed_keys(x)
        fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous() \
            else torch.contiguous_format
        x_all = all_gather_cat(x)
        g = torch.Generator().manual_seed(int(shuffle_seed or 0))
        perm = torch.randperm(x_all.shape[0], generator=g).to(x.device)
        mine = perm.view(world, -1)[rank]
        k_mine = self._embed_keys(x_all[mine].contiguous(memory_format=fmt))
        k_shuffled = all_gather_cat(k_mine)  # row i is the key of x_all[perm[i]]
        k_all = torch.empty_like(k_shuffled)
        k_all[perm] = k_shuffled
        return k_all

    def forward(self, x: torch.Tensor, shuffle_seed: int | None = None,
                kd_images: torch.Tensor | None = None) -> dict:
        """MoCo's step on a batch of patches.

        Returns:
            dict with `q` (n, D) normalised queries (with gradient), `keys` (world * n, D) the
            normalised keys of the global batch, `queue` (K, D) the queue as it was before these
            keys were enqueued, and, with `kd_images`, `stages`: the query encoder's layer1..4
            outputs on them (for semantic KD).
        """
        out = {"q": normalize(self.head(self.encoder(x)))}
        if kd_images is not None:
            out["stages"] = self.encoder.forward_stages(kd_images)
        with torch.no_grad():
            momentum_update(self.key_params(), self.query_params(), self.momentum)
            keys = self.keys(x, shuffle_seed)
            out["queue"] = self.queue.clone()
            self.queue_ptr.fill_(enqueue(self.queue, int(self.queue_ptr), keys))
        out["keys"] = keys
        return out
