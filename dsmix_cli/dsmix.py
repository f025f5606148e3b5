"""DSMix: DSM-weighted CutMix of distorted images and its soft labels (docs/method.md, sections 3-4).

Everything here is a pure, batched, device-agnostic tensor function; randomness comes from a
`torch.Generator` (a CPU generator drives a CUDA batch: the draws are made on the generator's
device and moved). The pipeline of one training step (docs/method.md section 6, steps 2-4):

1. `mix(x, n_sources=3, generator)` pastes `n_sources - 1` CutMix boxes into the base batch,
   from independent batch permutations; later boxes hide earlier ones. It returns the mixed
   images, the source index of every layer (`sources`, (K, B)) and the final visible mask of
   every source (`visible`, (K, B, H, W)).
2. `mix_weights(visible, dsm[sources])` turns the masks and each source's DSM into the label
   weights lambda_k of Eqs. 4-5 (rebuilt, docs/method.md 3.3) generalised to K sources (3.4).
3. `soft_targets(types[sources], levels[sources], weights)` builds the type / level / joint
   targets of docs/method.md section 4; `pristine_targets` the one-hot targets of the reference images.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dsmix_cli.errors import DsmixError

LABEL_MODES = ("normalized", "absolute", "area", "one-sided")
NUM_TYPES = 25  # KADIS-700k distortion types (docs/method.md section 4); type class 0 = pristine
NUM_LEVELS = 5  # levels per type; level class 0 = pristine


@dataclass
class MixResult:
    """The output of `mix`.

    Attributes:
        images: (B, C, H, W) mixed images.
        sources: (K, B) long: row 0 is `arange(B)` (the base), row j the permutation (or the `partners` row) of paste j;
            `images[b]` shows pixels of `x[sources[k, b]]` where `visible[k, b]` is 1.
        visible: (K, B, H, W) float 0/1 masks of the pixels each source still shows; they
            partition the image (they sum to 1 at every pixel).
        boxes: (K - 1, B, 4) long boxes (y0, x0, y1, x1) of the pastes, in paste order.
    """

    images: torch.Tensor
    sources: torch.Tensor
    visible: torch.Tensor
    boxes: torch.Tensor


def _rand(n: int, generator: torch.Generator | None) -> torch.Tensor:
    device = generator.device if generator is not None else "cpu"
    return torch.rand(n, generator=generator, device=device)


def sample_boxes(batch: int, height: int, width: int, generator: torch.Generator | None = None,
                 device: torch.device | str = "cpu") -> torch.Tensor:
    """One CutMix box per sample (ours: the CutMix recipe, docs/method.md 3.2).

    The area fraction is rho ~ U(0, 1) (Beta(1, 1), "uniformly"); the box is sqrt(rho) H tall
    and sqrt(rho) W wide, its centre uniform over the image, and it is clipped to the image, so
    the real (clipped) area is what the masks and weights use. A box may be empty.

    Args:
        batch: number of boxes B.
        height, width: image size H, W.
        generator: the source of randomness (its own device).
        device: where the result goes.

    Returns:
        (B, 4) long boxes (y0, x0, y1, x1), half-open: rows y0..y1-1, columns x0..x1-1.
    """
    rho = _rand(batch, generator)
    cy = _rand(batch, generator) * height
    cx = _rand(batch, generator) * width
    side = rho.sqrt()
    half_h, half_w = side * height / 2, side * width / 2
    y0 = (cy - half_h).round().clamp(0, height)
    y1 = (cy + half_h).round().clamp(0, height)
    x0 = (cx - half_w).round().clamp(0, width)
    x1 = (cx + half_w).round().clamp(0, width)
    return torch.stack([y0, x0, y1, x1], dim=1).long().to(device)


def box_masks(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Boolean masks (B, H, W) of half-open boxes (y0, x0, y1, x1) given as (B, 4)."""
    ys = torch.arange(height, device=boxes.device)
    xs = torch.arange(width, device=boxes.device)
    in_y = (ys[None, :] >= boxes[:, 0:1]) & (ys[None, :] < boxes[:, 2:3])
    in_x = (xs[None, :] >= boxes[:, 1:2]) & (xs[None, :] < boxes[:, 3:4])
    return in_y[:, :, None] & in_x[:, None, :]


def mix(x: torch.Tensor, n_sources: int = 3, generator: torch.Generator | None = None,
        paste_prob: float = 1.0, partners: torch.Tensor | None = None) -> MixResult:
    """DSMix cut-and-paste with K = `n_sources` sources (Eq. 3; docs/method.md 3.2 and 3.4).

    The base image of sample b is x[b]. For j = 1..K-1 a permutation pi_j of the batch and one
    box per sample are drawn; x[pi_j[b]] is pasted into sample b inside its box at the same
    location (CutMix), hiding whatever was there: earlier sources lose those pixels.
    "Mix = 3" (the paper's setting) is the base plus two pastes; `n_sources=1` does no mixing.

    Args:
        x: (B, C, H, W) images (distorted crops; references are never mixed).
        n_sources: K >= 1.
        generator: randomness for permutations, boxes and the paste coin.
        paste_prob: probability that each paste happens for a sample (the method keeps it
            at 1.0, docs/method.md 3.4); a paste that does not happen gets an empty box.
        partners: (K - 1, B) long indices into `x` of the images pasted into the B base images
            `x[:B]`, in paste order, instead of random permutations of the batch (e.g. other
            distortions of the base's own reference stacked after the batch); no permutation
            is drawn then.

    Returns:
        A `MixResult`.
    """
    if n_sources < 1:
        raise DsmixError(f"mix: n_sources must be >= 1, got {n_sources}")
    if partners is not None and (partners.dim() != 2 or partners.shape[0] != n_sources - 1
                                 or not 0 < partners.shape[1] <= x.shape[0]):
        raise DsmixError(f"mix: partners must be ({n_sources - 1}, B) with B <= {x.shape[0]}, "
                         f"got {tuple(partners.shape)}")
    batch, _, height, width = x.shape
    if partners is not None:
        batch = partners.shape[1]
    gen_device = generator.device if generator is not None else torch.device("cpu")
    images = x[:batch].clone()
    sources = [torch.arange(batch, device=x.device)]
    visible = [torch.ones(batch, height, width, dtype=torch.bool, device=x.device)]
    boxes = []
    for j in range(n_sources - 1):
        if partners is None:
            perm = torch.randperm(batch, generator=generator, device=gen_device).to(x.device)
        else:
            perm = partners[j].to(x.device).long()
        box = sample_boxes(batch, height, width, generator, device=x.device)
        if paste_prob < 1.0:
            keep = (_rand(batch, generator) < paste_prob).to(x.device)
            box = torch.where(keep[:, None], box, torch.zeros_like(box))
        m = box_masks(box, height, width)
        images = torch.where(m[:, None], x[perm], images)
        visible = [v & ~m for v in visible]  # the new box hides every earlier source there
        visible.append(m)
        sources.append(perm)
        boxes.append(box)
    box_tensor = torch.stack(boxes) if boxes else torch.zeros(0, batch, 4, dtype=torch.long, device=x.device)
    return MixResult(images=images, sources=torch.stack(sources), visible=torch.stack(visible).to(x.dtype),
                     boxes=box_tensor)


def upsample_dsm(dsm: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear upsampling U(.) of (..., h, w) maps to (..., H, W), align_corners=False (docs/method.md 3.1)."""
    lead = dsm.shape[:-2]
    flat = dsm.reshape(-1, 1, *dsm.shape[-2:]).float()
    up = F.interpolate(flat, size=(height, width), mode="bilinear", align_corners=False)
    return up.reshape(*lead, height, width)


def mix_weights(visible: torch.Tensor, dsm: torch.Tensor, mode: str = "normalized",
                eps: float = 1e-8) -> torch.Tensor:
    """The label weight lambda_k of every source of a DSMix sample (Eqs. 4-5, docs/method.md 3.3-3.4).

    With V_k the visible mask of source k and S~_k = U(max(DSM_k, 0)) its upsampled DSM:

    * ``normalized`` (default, rebuilt Eqs. 4-5 generalised to K): r_k = sum(V_k S~_k) /
      (sum S~_k + eps), lambda_k = r_k / sum_j r_j. Each source is credited with the fraction of
      its own distortion-sensitivity mass still visible.
    * ``absolute`` (an alternative reading: visible DSM mass compared across sources):
      lambda_k = sum(V_k S~_k) / (sum_j sum(V_j S~_j) + eps).
    * ``area`` (plain CutMix, the ablation baseline): lambda_k = sum(V_k) / (H W); ignores the DSM.
    * ``one-sided`` (an alternative reading: only the pasted image's map counts; K = 2 only):
      lambda_B = r_B, lambda_A = 1 - r_B.

    A source with no visible pixel gets exactly 0. When the DSM-based weights are undefined
    (every visible DSM mass is 0, e.g. DSMs that are all zero), the sample falls back to the
    area weights, the limit of spatially uniform DSMs (docs/method.md 3.3). The weights of a sample
    sum to 1 over K.

    Args:
        visible: (K, B, H, W) final visible masks (base first, then the pastes in order).
        dsm: (K, B, h, w) non-negative DSM of each source (negative values are clamped to 0).
        mode: one of `LABEL_MODES`.
        eps: added to the DSM-mass denominators.

    Returns:
        (K, B) float32 weights.
    """
    if mode not in LABEL_MODES:
        raise DsmixError(f"unknown label mode {mode!r}; choose one of {', '.join(LABEL_MODES)}")
    if visible.dim() != 4 or dsm.dim() != 4 or visible.shape[:2] != dsm.shape[:2]:
        raise DsmixError(f"mix_weights: visible (K,B,H,W) and dsm (K,B,h,w) disagree: "
                         f"{tuple(visible.shape)} vs {tuple(dsm.shape)}")
    n_sources, _, height, width = visible.shape
    if mode == "one-sided" and n_sources != 2:
        raise DsmixError(f"label mode 'one-sided' needs exactly 2 sources (--mix 2), got {n_sources}")
    vis = visible.float()
    area = vis.sum(dim=(-2, -1))  # (K, B) visible pixel counts
    area_w = area / float(height * width)
    if mode == "area":
        weights = area_w
    else:
        s = upsample_dsm(dsm.clamp_min(0), height, width)
        total = s.sum(dim=(-2, -1))
        shown = (vis * s).sum(dim=(-2, -1))
        if mode == "absolute":
            denom = shown.sum(0, keepdim=True)
            weights = shown / (denom + eps)
        else:
            r = shown / (total + eps)
            if mode == "normalized":
                denom = r.sum(0, keepdim=True)
                weights = r / (denom + eps)
            else:  # one-sided: only the pasted image's DSM counts
                weights = torch.stack([1.0 - r[1], r[1]])
                denom = torch.ones_like(r[:1])
        # Undefined DSM weights (no visible DSM mass at all): area weights instead.
        weights = torch.where(denom > eps, weights, area_w)
    weights = weights * (area > 0)  # an invisible source never gets label mass
    norm = weights.sum(0, keepdim=True)
    return torch.where(norm > 0, weights / norm.clamp_min(1e-30), area_w)


def soft_targets(types: torch.Tensor, levels: torch.Tensor, weights: torch.Tensor,
                 num_types: int = NUM_TYPES, num_levels: int = NUM_LEVELS) -> dict[str, torch.Tensor]:
    """Soft targets of the type, level and joint heads (docs/method.md section 4).

    y_type[c] = sum_k lambda_k [t_k = c], y_level[l] = sum_k lambda_k [l_k = l] and
    y_joint = sum_k lambda_k e_class(t_k, l_k) with class(t, l) = num_levels (t - 1) + l
    (SaTQA's convention; class 0 = pristine). Sources of the same class add their weights.

    Args:
        types: (K, B) long distortion types, 1..num_types (0 = pristine).
        levels: (K, B) long levels, 1..num_levels (0 = pristine).
        weights: (K, B) label weights from `mix_weights`.

    Returns:
        dict with `type` (B, num_types + 1), `level` (B, num_levels + 1) and `joint`
        (B, num_types * num_levels + 1) float32 targets.
    """
    types, levels = types.long(), levels.long()
    weights = weights.float()
    n_sources, batch = weights.shape

    def scatter(index: torch.Tensor, classes: int) -> torch.Tensor:
        out = torch.zeros(batch, classes, device=weights.device, dtype=torch.float32)
        return out.scatter_add_(1, index.t().to(weights.device), weights.t())

    joint = torch.where(types > 0, num_levels * (types - 1) + levels, torch.zeros_like(types))
    return {
        "type": scatter(types, num_types + 1),
        "level": scatter(levels, num_levels + 1),
        "joint": scatter(joint, num_types * num_levels + 1),
    }


def pristine_targets(batch: int, num_types: int = NUM_TYPES, num_levels: int = NUM_LEVELS,
                     device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """One-hot class-0 targets of reference images for every head (docs/method.md section 4)."""
    sizes = {"type": num_types + 1, "level": num_levels + 1, "joint": num_types * num_levels + 1}
    out = {}
    for name, classes in sizes.items():
        t = torch.zeros(batch, classes, device=device)
        t[:, 0] = 1.0
        out[name] = t
    return out
