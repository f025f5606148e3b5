"""Two-process DDP (gloo, CPU) through torchrun: the ranks train and end with identical weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from typer.testing import CliRunner

from dsm_fixtures import write_synth_folder
from dsmix_cli.cli import app
from dsmix_cli.dsm.network import build_dsm_net
from dsmix_cli.engine.runtime import derive_seed


def _torchrun_two_ranks(tmp_path, args: list[str], run):
    """Run `dsmix <args> --out run` under torchrun with 2 CPU (gloo) ranks; each rank dumps its
    final weights. Returns (rank 0 weights, rank 1 weights)."""
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    dump = tmp_path / "dump"
    env = {**os.environ, "DSMIX_HOME": str(tmp_path / "home"), "DSMIX_DUMP_RANK_WEIGHTS": str(dump),
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "dsmix_cli", *args, "--out", str(run)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    w0, w1 = load_file(str(dump / "rank0.safetensors")), load_file(str(dump / "rank1.safetensors"))
    assert w0.keys() == w1.keys()
    return w0, w1


def test_two_rank_torchrun_run_keeps_ranks_identical(tmp_path):
    data = write_synth_folder(tmp_path / "D", n_refs=4)
    run = tmp_path / "R"
    args = ["pretrain-dsm", "--data", str(data), "--arch", "vit_small_patch8_224", "--depth", "1", "--image-size",
            "32", "--batch-size", "4", "--lr", "1e-4", "--no-pretrained", "--device", "cpu", "--seed", "1",
            "--workers", "0", "--max-steps", "7", "--log-every", "1"]
    w0, w1 = _torchrun_two_ranks(tmp_path, args, run)
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    # it trained: the weights moved away from the initialisation both ranks started from
    torch.manual_seed(derive_seed(1, "init"))
    init = build_dsm_net("vit_small_patch8_224", 32, pretrained=False, depth=1).state_dict()
    assert any(not torch.equal(init[k], w0[k]) for k in w0)
    # one log (rank 0) holding every step once; the global batch of 4 is split 2 + 2
    # (7 steps cross the epoch end at 6: the sharded validation MSE is reduced over the ranks)
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs if "loss" in r] == [1, 2, 3, 4, 5, 6, 7]
    assert [r["step"] for r in recs if "val_mse" in r] == [6]
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["world_size"] == 2 and cfg["per_rank_batch"] == 2 and cfg["steps_per_epoch"] == 6
    # rank r takes items r, r+2, ... of the epoch order, so the global batch of 4 is the one a
    # single process sees: the DDP run follows the single-process run up to float rounding
    single = tmp_path / "single"
    res = CliRunner().invoke(app, [*args, "--out", str(single)], env={"DSMIX_HOME": str(tmp_path / "home")})
    assert res.exit_code == 0, res.output
    ref = [json.loads(x) for x in (single / "metrics.jsonl").read_text().splitlines()]
    for key in ("loss", "val_mse"):
        assert [r[key] for r in recs if key in r] == pytest.approx([r[key] for r in ref if key in r], rel=1e-3)
    exported = load_file(str(run / "dsm.safetensors"))
    assert all(torch.equal(exported[k], w0[k]) for k in w0)


def test_two_rank_qep_keeps_ranks_identical(tmp_path):
    """QEP under torchrun: the global batch of 4 is split 2 + 2 and the ranks end with identical
    weights. (DSMix partners are drawn within each rank's share, so the losses are not expected
    to equal a single-process run's.)"""
    from dsmix_cli.imageio import save_image_atomic

    refs = tmp_path / "refs"
    g = torch.Generator().manual_seed(0)
    for i in range(8):
        save_image_atomic(torch.rand(3, 40, 40, generator=g), refs / f"r{i}.png")
    run = tmp_path / "R"
    args = ["qep", "--refs", str(refs), "--on-the-fly", "--dsm-source", "gt", "--arch", "resnet18", "--teacher",
            "resnet18", "--no-pretrained", "--image-size", "32", "--batch-size", "4", "--types", "1,11,18",
            "--device", "cpu", "--seed", "2", "--workers", "0", "--max-steps", "3", "--log-every", "1"]
    w0, w1 = _torchrun_two_ranks(tmp_path, args, run)
    # Parameters (all-reduced gradients) are identical. BatchNorm running statistics are
    # rank-local on CPU (no SyncBatchNorm kernel there); DDP re-broadcasts rank 0's, which are
    # the ones saved.
    for k in w0:
        if "running_" in k or "num_batches_tracked" in k:
            continue
        assert torch.equal(w0[k], w1[k]), k
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["world_size"] == 2 and cfg["per_rank_batch"] == 2
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in recs if "loss" in r]
    assert len(losses) == 3 and all(map(lambda v: v == v and abs(v) < 1e6, losses))
    encoder = load_file(str(run / "encoder.safetensors"))
    assert all(torch.equal(encoder[k], w0["backbone." + k]) for k in encoder)
    # the sharded validation, summed over the ranks, is what one process scores with rank 0's model
    from dsmix_cli.data.references import list_references, split_references
    from dsmix_cli.evaluation.pretext import pretext_metrics
    from dsmix_cli.models.heads import QualityEncoderNet
    from dsmix_cli.models.resnet import build_resnet
    from dsmix_cli.stages.qep import _normalizer
    from dsmix_cli.stages.qep_validation import reference_validation_set, score_heads

    results = json.loads((run / "results.json").read_text())
    assert sum(map(sum, results["type_confusion"])) == 15 + 3  # 1 held-out reference x 3 types x 5 levels + 3
    val = split_references(list_references(refs), 0.05, 2)[1]
    vs = reference_validation_set(val, [p.name for p in val], [1, 11, 18], [1, 2, 3, 4, 5], 32)
    net = QualityEncoderNet(build_resnet("resnet18"))
    net.load_state_dict(w0)
    counts = score_heads(net, vs, torch.device("cpu"), _normalizer("resnet18", torch.device("cpu")))
    assert counts.type_confusion.tolist() == results["type_confusion"]
    assert pretext_metrics(counts)["val_level_acc"] == pytest.approx(results["val_level_acc"])
