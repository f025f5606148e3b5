"""The distortion-induced sensitivity map (DSM): its ground truth and the network that predicts it.

* `gt`: `gt_dsm(distorted, reference, pool)`, the ground-truth map (docs/method.md section 1).
* `network`: `DSMNet`, a timm ViT without its class token plus a per-token decoder (section 2),
  `build_dsm_net` and `load_dsm_model`.
* `preview`: a picture of predicted vs ground-truth maps (Pillow only).
"""
