"""`qep --pretext qpt` under torchrun with two CPU (gloo) ranks: one queue, one momentum encoder."""

from __future__ import annotations

import json

import pytest
import torch

from dsmix_cli.engine.checkpoint import load_checkpoint
from dsmix_cli.engine.runtime import derive_seed
from dsmix_cli.imageio import save_image_atomic
from dsmix_cli.qpt import normalize
from test_ddp import _torchrun_two_ranks


@pytest.mark.slow
def test_two_rank_qpt_keeps_queue_and_momentum_encoder_identical(tmp_path):
    """The global batch of 4 references is split 2 + 2. Every rank enqueues the keys of all 16
    patches (gathered), so the pointer advances by 16 a step and both ranks hold the same queue,
    last step's keys included (DDP re-broadcasts rank 0's buffers only before each forward);
    the query and key encoders' parameters agree. BatchNorm running statistics stay rank-local
    (shuffle BN, no SyncBatchNorm), rank 0's are saved."""
    refs = tmp_path / "refs"
    g = torch.Generator().manual_seed(0)
    for i in range(8):
        save_image_atomic(torch.rand(3, 56, 56, generator=g), refs / f"r{i}.png")
    run = tmp_path / "R"
    args = ["qep", "--pretext", "qpt", "--refs", str(refs), "--on-the-fly", "--arch", "resnet18", "--no-pretrained",
            "--image-size", "32", "--batch-size", "4", "--types", "1,9,11,18", "--qpt-queue", "40",
            "--kd-alpha", "0", "--kd-beta", "0", "--device", "cpu", "--seed", "2", "--workers", "0",
            "--max-steps", "3", "--log-every", "1"]
    w0, w1 = _torchrun_two_ranks(tmp_path, args, run)
    for k in w0:
        if "running_" in k or "num_batches_tracked" in k:
            continue
        assert torch.equal(w0[k], w1[k]), k
    assert int(w0["queue_ptr"]) == 3 * 16 % 40
    assert any(k.startswith("momentum_encoder.") for k in w0)
    # 48 keys went into 40 rows: every row is a key (a unit vector), none is the random start
    queue = w0["queue"]
    start = normalize(torch.randn(40, 128, generator=torch.Generator().manual_seed(derive_seed(2, "qpt-queue"))))
    assert torch.allclose(queue.norm(dim=1), torch.ones(40), atol=1e-5)
    assert not torch.isclose(queue, start, atol=1e-3).all(dim=1).any()
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["world_size"] == 2 and cfg["per_rank_batch"] == 2 and cfg["pretext"] == "qpt"
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 2, 3]
    ckpt = load_checkpoint(run / "last.pt", kind="qep")
    assert torch.equal(ckpt["model"]["queue"], w0["queue"])
