"""The distorted crops of an on-the-fly QEP batch (`qep --refs DIR --on-the-fly`).

`distort_on_the_fly` distorts a batch's reference crops with the (type, level) each item drew,
as its whole image would be distorted (docs/qep.md, the on-the-fly rescale); `same_crop_partners`
makes the other distortions of the same crops that `--mix-partners same` pastes in. Both run in
the training step, on the training device, and take the distortion function as an argument
(tests pass a stand-in).
"""

from __future__ import annotations

import torch

from dsmix_cli.imageio import to_float


def distort_on_the_fly(batch: dict, ref: torch.Tensor, gen: torch.Generator, distort=None) -> torch.Tensor:
    """The distorted crops of an on-the-fly batch, on `ref`'s device: the ones made in the loader
    workers (`premade`), the others distorted here with `distort` (`distort_batch`), each crop
    rescaled as its whole image when the batch carries `in_range` (`--rescale image`). A flipped
    crop is distorted unflipped, then flipped: as a whole image is distorted, then cropped and
    flipped (JPEG's block coding is not mirror-symmetric)."""
    if distort is None:
        from dsmix_cli.distortions import distort_batch as distort
    device = ref.device
    types, levels = batch["type"].long().to(device), batch["level"].long().to(device)
    premade = batch["premade"].bool().to(device)
    dist = ref.clone()
    if premade.any():
        dist[premade] = to_float(batch["dist"].to(device, non_blocking=True))
    todo = (~premade).nonzero().flatten()
    if len(todo):  # CPU-only types were distorted in the loader workers already
        whole = {}
        if "in_range" in batch:
            rows = todo.cpu()
            from dsmix_cli.distortions import crop_out_range

            whole = {"in_range": batch["in_range"][rows].to(device), "histogram": batch["histogram"][rows].to(device),
                     "out_range": crop_out_range(batch["type"][rows].tolist(), batch["level"][rows].tolist(), device)}
        flipped = batch["offset"][:, 2].bool().to(device)[todo] if "offset" in batch else None
        src = ref[todo]
        if flipped is not None and flipped.any():
            src[flipped] = src[flipped].flip(-1)
        with torch.autocast(device.type, enabled=False):  # distortions in full precision
            out = distort(src, types[todo], levels[todo], generator=gen, **whole).float().clamp(0, 1)
        if flipped is not None and flipped.any():
            out[flipped] = out[flipped].flip(-1)
        dist[todo] = out
    return dist


def same_crop_partners(batch: dict, ref: torch.Tensor, dist: torch.Tensor, types: torch.Tensor,
                       levels: torch.Tensor, cfg, gen: torch.Generator, distort=None):
    """`--mix-partners same`: `cfg.mix - 1` more distortions of every crop of the batch, each with its
    own (type, level) drawn uniformly from `cfg.types` x `cfg.levels` (with `gen`), distorted here as
    the batch's own are (same crop, flip and whole-image range). Returns the pool (K B images: the
    batch's, then each partner set), its types and levels, and the (K - 1, B) partner indices for
    `mix`: paste j of sample b is the j-th other distortion of b's reference crop."""
    n, dev = ref.shape[0], ref.device
    pool, pool_t, pool_l = [dist], [types], [levels]
    t_choices = torch.as_tensor(cfg.types, device=dev)
    l_choices = torch.as_tensor(cfg.levels, device=dev)
    for _ in range(cfg.mix - 1):
        t = t_choices[torch.randint(len(cfg.types), (n,), generator=gen, device=gen.device).to(dev)]
        lv = l_choices[torch.randint(len(cfg.levels), (n,), generator=gen, device=gen.device).to(dev)]
        other = dict(batch, type=t.cpu(), level=lv.cpu(), premade=torch.zeros(n, dtype=torch.bool))
        pool.append(distort_on_the_fly(other, ref, gen, distort))
        pool_t.append(t)
        pool_l.append(lv)
    partners = torch.arange(n, device=dev)[None] + n * torch.arange(1, cfg.mix, device=dev)[:, None]
    return torch.cat(pool), torch.cat(pool_t), torch.cat(pool_l), partners
