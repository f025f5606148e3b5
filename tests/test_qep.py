"""`dsmix qep`: the acceptance run, data modes, DSM sources, resume, the training step's wiring, errors."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dsmix_cli.cli import app
from dsmix_cli.engine.checkpoint import load_weights
from dsmix_cli.imageio import save_image_atomic
from dsmix_cli.models.resnet import build_resnet, input_stats

runner = CliRunner()
TINY = ["--arch", "resnet18", "--teacher", "resnet18", "--no-pretrained", "--image-size", "32",
        "--batch-size", "2", "--device", "cpu", "--workers", "0", "--log-every", "1", "--val-every", "100"]


def _image(seed: int, size: int = 80) -> torch.Tensor:
    """A procedural RGB image: smooth gradients plus a few rectangles."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    c = torch.rand(3, 3, generator=g)
    img = torch.stack([c[i, 0] * yy + c[i, 1] * xx + c[i, 2] * 0.3 for i in range(3)]).clamp(0, 1)
    for _ in range(3):
        y, x = torch.randint(0, size - 16, (2,), generator=g).tolist()
        img[:, y:y + 16, x:x + 16] = torch.rand(3, 1, 1, generator=g)
    return img


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("DSMIX_HOME", str(tmp_path / "home"))
    for var in ("DSMIX_DSM_MODEL", "DSMIX_ENCODER", "DSMIX_MODEL"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def refs(tmp_path):
    folder = tmp_path / "refs"
    for i in range(6):
        save_image_atomic(_image(i), folder / f"r{i}.png")
    return folder


@pytest.fixture
def pairs(tmp_path):
    """A `dsmix synthesize`-style folder: dist_imgs.csv + noisy/darkened copies of references."""
    root = tmp_path / "pairs"
    rows = []
    for i in range(4):
        ref = _image(10 + i)
        save_image_atomic(ref, root / "ref" / f"r{i}.png")
        for t, lv in ((11, 1 + i % 5), (17, 5 - i % 5)):
            g = torch.Generator().manual_seed(100 * i + t)
            dist = (ref + 0.05 * lv * torch.randn(ref.shape, generator=g)) if t == 11 else ref * (1 - 0.1 * lv)
            name = f"dist/r{i}_{t:02d}_{lv:02d}.png"
            save_image_atomic(dist.clamp(0, 1), root / name)
            rows.append({"dist_img": name, "ref_img": f"ref/r{i}.png", "type": t, "level": lv})
    with (root / "dist_imgs.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["dist_img", "ref_img", "type", "level"])
        w.writeheader()
        w.writerows(rows)
    return root


def _np_ce(z: torch.Tensor, labels: list[int]) -> float:
    """Mean cross-entropy of logits z against hard labels, in numpy float64 (independent of torch's)."""
    z = z.numpy().astype(np.float64)
    lp = z - np.log(np.exp(z).sum(1, keepdims=True))
    return -np.mean([lp[i, c] for i, c in enumerate(labels)])


def _log(run: Path, training: bool = True) -> list[dict]:
    """metrics.jsonl; the training lines only (not the validation lines) unless `training` is False."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "loss" in r] if training else rows


def _invoke(args: list[str]):
    res = runner.invoke(app, ["qep", *args])
    return res


def test_acceptance_on_the_fly_gt(refs, tmp_path):
    run = tmp_path / "run"
    res = _invoke(["--refs", str(refs), "--on-the-fly", "--dsm-source", "gt", "--out", str(run), "--arch",
                   "resnet18", "--teacher", "resnet18", "--no-pretrained", "--image-size", "64", "--batch-size",
                   "8", "--max-steps", "8", "--device", "cpu", "--seed", "1", "--workers", "0", "--val-every", "4"])
    assert res.exit_code == 0, res.output
    assert "RANDOM weights" in res.output  # the random teacher is announced
    last = _log(run)[-1]
    assert last["step"] == 8 and math.isfinite(last["loss"])
    for key in ("ce_dist", "ce_ref", "ce_type", "ce_level", "kd_fr", "kd_cosd"):
        assert math.isfinite(last[key]), key
    # loss = (ce_dist + ce_ref) / 2 + alpha fr + beta cosd
    assert last["loss"] == pytest.approx((last["ce_dist"] + last["ce_ref"]) / 2 + last["kd_fr"] + last["kd_cosd"],
                                         rel=1e-4)
    state, meta = load_weights(run / "encoder.safetensors", kind="qep-encoder")
    assert set(state) == set(build_resnet("resnet18").state_dict())
    assert meta["arch"] == "resnet18" and meta["image_size"] == 64
    assert meta["input_mean"] == pytest.approx(list(input_stats("resnet18")[0]))
    config = json.loads((run / "config.json").read_text())
    assert config["label_mode"] == "normalized" and config["mix"] == 3 and config["dsm_source"] == "gt"
    assert config["teacher"] == "resnet18" and config["method"]["kd_stages"] == ["layer1", "layer2", "layer3",
                                                                                  "layer4"]
    # 8 of 120 epochs ran: not the encoder `probe` measures by default, but named for explicit use
    assert not (tmp_path / "home" / "defaults.json").exists()
    assert "not recorded as the default encoder" in res.output and f"--encoder {run}" in res.output


@pytest.mark.slow
def test_resume_refuses_a_changed_objective_and_resume_alone_finishes_the_run(pairs, tmp_path):
    run = tmp_path / "run"
    res = _invoke(["--data", str(pairs), "--dsm-source", "gt", "--epochs", "1", "--out", str(run), "--max-steps", "2",
                   "--val-fraction", "0", *TINY])  # kd_alpha 1.0 (the default); 8 pairs / batch 2: 4 steps/epoch
    assert res.exit_code == 0, res.output
    res = _invoke(["--resume", "--out", str(run), "--kd-alpha", "0.1", "--lr-gamma", "0.5", "--types", "1-3"])
    assert res.exit_code == 2, res.output
    text = res.output.replace("\n", " ")
    assert "kd_alpha was 1.0, now 0.1" in text and "lr_gamma was 0.9, now 0.5" in text and "types was" in text
    assert [r["step"] for r in _log(run)] == [1, 2]  # untouched
    res = _invoke(["--resume", "--out", str(run)])
    assert res.exit_code == 0, res.output
    assert "finished at step 4" in res.output and "now the default encoder" in res.output
    assert [r["step"] for r in _log(run)] == [1, 2, 3, 4]
    config = json.loads((run / "config.json").read_text())
    assert config["kd_alpha"] == 1.0 and config["arch"] == "resnet18" and config["image_size"] == 32
    home = json.loads((tmp_path / "home" / "defaults.json").read_text())
    assert home["encoder"] == str(run.resolve())


def test_a_run_saved_before_an_option_existed_resumes(pairs, tmp_path):
    """config.json without `mix_partners` and `mix_refs` (a run started by an earlier version, which
    pasted from the batch and left the references alone): `--resume` alone continues it; asking for
    another value is refused by name."""
    run = tmp_path / "run"
    res = _invoke(["--data", str(pairs), "--dsm-source", "gt", "--epochs", "1", "--out", str(run), "--max-steps", "2",
                   "--val-fraction", "0", "--kd-alpha", "0", "--kd-beta", "0", *TINY])
    assert res.exit_code == 0, res.output
    config = json.loads((run / "config.json").read_text())
    del config["mix_partners"], config["mix_refs"]
    (run / "config.json").write_text(json.dumps(config))
    res = _invoke(["--resume", "--out", str(run), "--mix-refs"])
    assert res.exit_code == 2 and "mix_refs was (not recorded), now True" in res.output.replace("\n", " ")
    res = _invoke(["--resume", "--out", str(run)])
    assert res.exit_code == 0, res.output
    assert [r["step"] for r in _log(run)] == [1, 2, 3, 4]


def test_pairs_ablation_flags_and_exact_resume(pairs, tmp_path):
    common = ["--data", str(pairs), "--dsm-source", "gt", "--mix", "2", "--label-mode", "area", "--joint-head",
              "--kd-alpha", "0", "--kd-beta", "0", *TINY]
    a, b = tmp_path / "a", tmp_path / "b"
    assert _invoke([*common, "--out", str(a), "--max-steps", "3"]).exit_code == 0
    res = _invoke([*common, "--out", str(b), "--max-steps", "2"])
    assert res.exit_code == 0, res.output
    res = _invoke([*common, "--out", str(b), "--max-steps", "3", "--resume"])
    assert res.exit_code == 0, res.output
    la, lb = _log(a), _log(b)
    assert [r["step"] for r in lb] == [1, 2, 3]
    assert la[-1]["loss"] == lb[-1]["loss"]
    assert "kd_fr" not in la[-1] and math.isfinite(la[-1]["ce_joint"])
    # a resume with different model settings is refused
    res = _invoke([*common[:-len(TINY)], *TINY, "--out", str(b), "--max-steps", "5", "--resume", "--mix", "3"])
    assert res.exit_code == 2 and "mix was 2" in res.output


def test_dsm_from_maps_and_from_the_default_model(pairs, tmp_path):
    from dsmix_cli.data.pairs import load_pairs
    from dsmix_cli.defaults import record_default
    from dsmix_cli.dsm.gt import dsm_map_path, gt_dsm
    from dsmix_cli.dsm.network import WEIGHTS_FILE, build_dsm_net
    from dsmix_cli.engine.checkpoint import export_weights
    from dsmix_cli.fileio import save_npy
    from dsmix_cli.imageio import load_rgb_tensor

    maps = tmp_path / "maps"
    for p in load_pairs(pairs):
        save_npy(dsm_map_path(maps, p.dist), gt_dsm(load_rgb_tensor(p.dist), load_rgb_tensor(p.ref)).numpy())
    run = tmp_path / "m"
    res = _invoke(["--data", str(pairs), "--dsm-source", "maps", "--dsm-maps", str(maps), "--out", str(run),
                   "--max-steps", "2", *TINY])
    assert res.exit_code == 0, res.output
    assert math.isfinite(_log(run)[-1]["loss"])

    # --dsm-source model without --dsm-model: the recorded pretrain-dsm run, named in the output
    dsm_run = tmp_path / "dsm"
    net = build_dsm_net("vit_tiny_patch16_224", 32, pretrained=False, patch_size=8, depth=1, embed_dim=32,
                        num_heads=2)
    export_weights(dsm_run / WEIGHTS_FILE, net.state_dict(), {**net.meta(), "step": 1, "config": {}})
    res = _invoke(["--data", str(pairs), "--out", str(tmp_path / "q"), "--max-steps", "1", *TINY])
    assert res.exit_code == 2 and "pretrain-dsm" in res.output
    record_default("dsm_model", dsm_run)
    res = _invoke(["--data", str(pairs), "--out", str(tmp_path / "q"), "--max-steps", "1", *TINY])
    assert res.exit_code == 0, res.output
    assert f"DSM model: {dsm_run.resolve()} (recorded)" in res.output.replace("\n", "")


class HeadsStub(torch.nn.Module):
    """A stand-in for the QEP network: `heads(x)` gives the logits of a batch (a dict per head), plus
    one trainable scalar so the loss has a gradient; the only stage is the input."""

    def __init__(self, heads):
        super().__init__()
        self.heads = heads
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x, return_stages=False):
        return {k: v + self.w for k, v in self.heads(x).items()}, [x]


def test_training_step_targets_reach_the_right_rows():
    """With --mix 1 the distorted rows are scored against their own type/level, the references
    against class 0: checked against numpy on fixed logits."""
    from dsmix_cli.stages.qep import QEPConfig, make_training_step

    g = torch.Generator().manual_seed(0)
    fixed = {"type": torch.randn(6, 26, generator=g), "level": torch.randn(6, 6, generator=g)}

    def heads(x):
        assert x.shape[0] == 6
        return fixed

    cfg = QEPConfig(out=Path("unused"), mix=1, kd_alpha=0, kd_beta=0, arch="resnet18")
    step = make_training_step(cfg, torch.device("cpu"), lambda d, r, b: gt_like(d), teacher=None)
    batch = {"dist": torch.zeros(3, 3, 16, 16, dtype=torch.uint8), "ref": torch.zeros(3, 3, 16, 16, dtype=torch.uint8),
             "type": torch.tensor([4, 9, 25]), "level": torch.tensor([1, 5, 3])}
    out = step(HeadsStub(heads), batch, torch.Generator().manual_seed(1), 0)

    want_dist = _np_ce(fixed["type"][:3], [4, 9, 25]) + _np_ce(fixed["level"][:3], [1, 5, 3])
    want_ref = _np_ce(fixed["type"][3:], [0, 0, 0]) + _np_ce(fixed["level"][3:], [0, 0, 0])
    assert out.parts["ce_dist"].item() == pytest.approx(want_dist, rel=1e-5)
    assert out.parts["ce_ref"].item() == pytest.approx(want_ref, rel=1e-5)
    assert out.loss.item() == pytest.approx((want_dist + want_ref) / 2, rel=1e-5)


def gt_like(d):
    return torch.ones(d.shape[0], 2, 2)


@pytest.mark.parametrize("args,message", [
    ([], "either --data"),
    (["--refs", "REFS"], "--on-the-fly"),
    (["--refs", "REFS", "--on-the-fly", "--label-mode", "one-sided"], "--mix 2"),
    (["--refs", "REFS", "--on-the-fly", "--label-mode", "cutmix"], "label-mode"),
    (["--refs", "REFS", "--on-the-fly", "--teacher", "resnet34"], "same architecture"),
    (["--refs", "REFS", "--on-the-fly", "--dsm-source", "maps"], "--dsm-maps"),
    (["--refs", "REFS", "--on-the-fly", "--image-size", "60"], "multiple"),
    (["--refs", "EMPTY", "--on-the-fly", "--dsm-source", "gt"], "no image files"),
    (["--refs", "REFS", "--on-the-fly", "--dsm-source", "gt", "--epoch-size", "1"], "fewer than one batch"),
    (["--refs", "REFS", "--on-the-fly", "--dsm-source", "gt", "--types", "26"], "out of range"),
    (["--refs", "REFS", "--on-the-fly", "--dsm-source", "gt", "--pristine-share", "1"], "--pristine-share"),
    (["--refs", "REFS", "--on-the-fly", "--dsm-source", "gt", "--rescale", "whole"], "--rescale"),
    (["--refs", "REFS", "--on-the-fly", "--dsm-source", "gt", "--ref-resize", "16"], "smaller than"),
    (["--refs", "REFS", "--on-the-fly", "--dsm-source", "gt", "--optimizer", "lamb"], "--optimizer"),
    (["--refs", "REFS", "--on-the-fly", "--dsm-source", "gt", "--mix-partners", "near"], "--mix-partners 'near'"),
    (["--data", "EMPTY", "--dsm-source", "gt", "--mix-partners", "same"], "--mix-partners same distorts"),
    (["--refs", "REFS", "--on-the-fly", "--dsm-source", "gt", "--lr-schedule", "poly"], "--lr-schedule"),
    (["--refs", "REFS", "--on-the-fly", "--dsm-source", "gt", "--val-refs", "EMPTY/none"], "--val-refs"),
    (["--refs", "REFS", "--on-the-fly", "--dsm-source", "gt", "--val-refs", "EMPTY"], "no image files"),
])
def test_bad_options_exit_2_with_a_clear_message(args, message, refs, tmp_path):
    (tmp_path / "empty").mkdir()
    args = [a.replace("REFS", str(refs)).replace("EMPTY", str(tmp_path / "empty")) for a in args]
    res = _invoke([*TINY, *args, "--out", str(tmp_path / "r")])
    assert res.exit_code == 2, res.output
    assert message in res.output.replace("\n", " ")
    assert not (tmp_path / "r" / "last.pt").exists()


def test_existing_run_is_not_overwritten(refs, tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    (run / "last.pt").write_bytes(b"checkpoint")  # a run with a checkpoint: resume it or choose another --out
    res = _invoke(["--refs", str(refs), "--on-the-fly", "--dsm-source", "gt", "--out", str(run), *TINY])
    assert res.exit_code == 2 and "--resume" in res.output
    assert (run / "last.pt").read_bytes() == b"checkpoint"


def test_cpu_only_types_are_distorted_in_the_loader_workers(refs, tmp_path):
    """On the fly, JPEG2000 and colour quantization (Pillow, CPU) are applied by the dataset, i.e.
    in the loader workers; device-side types are left to the training step."""
    from dsmix_cli.distortions import CPU_ONLY_TYPES
    from dsmix_cli.stages.qep import ReferenceCropDataset, list_references

    paths = list_references(refs)
    ds = ReferenceCropDataset(paths, 32, seed=5, types=[6, 9, 11], levels=[5], cpu_types=CPU_ONLY_TYPES)
    items = [ds[(0, i)] for i in range(len(ds))]
    assert {it["type"] for it in items} <= {6, 9, 11} and all(it["level"] == 5 for it in items)
    for it in items:
        if it["type"] in CPU_ONLY_TYPES:
            assert it["premade"] and it["dist"].dtype == torch.uint8 and it["dist"].shape == it["ref"].shape
            assert not torch.equal(it["dist"], it["ref"])  # level 5 JPEG2000 / 8-colour quantization
        else:
            assert not it["premade"] and "dist" not in it  # distorted later, on the device
    first_premade = next(i for i, it in enumerate(items) if it["premade"])
    again = ds[(0, first_premade)]
    assert torch.equal(again["dist"], items[first_premade]["dist"]) and again["type"] == items[first_premade]["type"]
    # the batch carries only the premade crops, in row order
    from dsmix_cli.stages.qep import collate_on_the_fly

    batch = collate_on_the_fly(items)
    rows = [i for i, it in enumerate(items) if it["premade"]]
    assert batch["premade"].tolist() == [it["premade"] for it in items]
    assert torch.equal(batch["dist"], torch.stack([items[i]["dist"] for i in rows]))
    # a whole run with only CPU types, through loader workers
    run = tmp_path / "cpu-types"
    res = _invoke(["--refs", str(refs), "--on-the-fly", "--dsm-source", "gt", "--types", "6,9", "--out", str(run),
                   "--max-steps", "2", *[a if a != "0" else "1" for a in TINY]])
    assert res.exit_code == 0, res.output
    assert math.isfinite(_log(run)[-1]["loss"])


def test_compile_flag_compiles_the_student_in_place(refs, tmp_path, monkeypatch):
    """--compile calls nn.Module.compile() on the trained model (in place, so checkpoint keys stay
    plain); the real compilation is not run here (minutes on CPU): it is recorded instead."""
    compiled = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: compiled.append(type(self).__name__))
    run = tmp_path / "c"
    res = _invoke(["--refs", str(refs), "--on-the-fly", "--dsm-source", "gt", "--out", str(run), "--max-steps", "1",
                   "--compile", *TINY])
    assert res.exit_code == 0, res.output
    assert compiled == ["QualityEncoderNet"]
    assert json.loads((run / "config.json").read_text())["compile"] is True
    from safetensors.torch import load_file

    assert all(not k.startswith("_orig_mod") for k in load_file(str(run / "encoder.safetensors")))


def test_validation_is_logged_shown_and_written(refs, tmp_path):
    run = tmp_path / "v"
    res = _invoke(["--refs", str(refs), "--on-the-fly", "--dsm-source", "gt", "--out", str(run), "--max-steps", "4",
                   "--kd-alpha", "0", "--kd-beta", "0", "--types", "1,11,16", "--levels", "1,5",
                   *TINY[:-2], "--val-every", "2"])
    assert res.exit_code == 0, res.output
    out = res.output.replace("\n", " ")
    assert "validation: 1 held-out references, 6 distorted crops + 3 pristine" in out
    assert "held-out pretext accuracy at step 4" in out and "results.json" in out
    val = [r for r in _log(run, training=False) if "val_acc" in r]
    assert [r["step"] for r in val] == [2, 4]
    results = json.loads((run / "results.json").read_text())
    assert results["step"] == 4 and results["finished"] is False  # stopped by --max-steps
    for key in ("val_type_acc", "val_level_acc", "val_pristine_acc", "val_called_pristine", "val_acc"):
        assert results[key] == pytest.approx(val[-1][key]) and 0 <= results[key] <= 1
    assert [h["step"] for h in results["history"]] == [2, 4]
    assert results["val_set"]["distorted_crops"] == 6 and results["val_set"]["pristine_crops"] == 3
    assert sum(map(sum, results["type_confusion"])) == 9 and len(results["per_type"]) == 25
    assert results["per_type"]["11 white_noise"]["n"] == 2 and results["per_type"]["2 lens_blur"]["n"] == 0
    best = max(val, key=lambda r: (r["val_acc"], -r["step"]))
    assert results["best_step"] == best["step"]
    assert torch.load(run / "best.pt", weights_only=True)["step"] == best["step"]
    for name in ("val_confusion.png", "val_type_level.png", "curves.png"):
        assert (run / name).stat().st_size > 1000, name
    config = json.loads((run / "config.json").read_text())
    assert config["rescale"] == "image" and config["pristine_share"] == 0.5 and config["val_every"] == 2
    assert "whole reference" in config["method"]["rescale"]


def test_resume_with_validation_is_exact(refs, tmp_path):
    common = ["--refs", str(refs), "--on-the-fly", "--dsm-source", "gt", "--types", "1,16", "--levels", "2",
              "--kd-alpha", "0", "--kd-beta", "0", *TINY[:-2], "--val-every", "2"]
    a, b = tmp_path / "a", tmp_path / "b"
    assert _invoke([*common, "--out", str(a), "--max-steps", "4"]).exit_code == 0
    assert _invoke([*common, "--out", str(b), "--max-steps", "3"]).exit_code == 0
    res = _invoke([*common, "--out", str(b), "--max-steps", "4", "--resume"])
    assert res.exit_code == 0, res.output
    drop = lambda rows: [{k: v for k, v in r.items() if k != "samples_per_s"} for r in rows]  # noqa: E731
    assert drop(_log(a)) == drop(_log(b))  # the training is exact
    va = {r["step"]: r for r in _log(a, training=False) if "val_acc" in r}
    vb = {r["step"]: r for r in _log(b, training=False) if "val_acc" in r}
    # the stopped run was also scored where it stopped (step 3); every other validation is the same
    assert sorted(va) == [2, 4] and sorted(vb) == [2, 3, 4]
    assert all(va[s] == vb[s] for s in va)
    ra, rb = (json.loads((d / "results.json").read_text()) for d in (a, b))
    assert ra["type_confusion"] == rb["type_confusion"] and [h["step"] for h in rb["history"]] == [2, 3, 4]


def test_val_refs_are_left_out_of_training(refs, tmp_path):
    import shutil

    val = tmp_path / "val"
    val.mkdir()
    shutil.copy(refs / "r0.png", val / "r0.png")
    (refs / "link.png").symlink_to(val / "r0.png")  # the same file under another name: left out too
    run = tmp_path / "r"
    res = _invoke(["--refs", str(refs), "--on-the-fly", "--dsm-source", "gt", "--val-refs", str(val), "--out", str(run),
                   "--max-steps", "1", "--types", "16", "--levels", "1", *TINY])
    assert res.exit_code == 0, res.output
    out = res.output.replace("\n", " ")
    assert "--val-refs: 1 of the training references are validation references" in out
    assert "QEP: 6 samples/epoch" in out  # 7 files, 1 of them the validation image
    assert json.loads((run / "results.json").read_text())["val_set"]["references"] == 1


@pytest.mark.parametrize("share", [1 / 6, 0.0])
def test_pristine_share_weights_the_two_cross_entropies(share):
    """loss = (1 - share) CE(mixed) + share CE(references); share 0 with KD off runs no reference."""
    from dsmix_cli.stages.qep import QEPConfig, make_training_step

    g = torch.Generator().manual_seed(0)
    fixed = {"type": torch.randn(6, 26, generator=g), "level": torch.randn(6, 6, generator=g)}
    rows = []

    def heads(x):
        rows.append(x.shape[0])
        return {k: v[:x.shape[0]] for k, v in fixed.items()}

    cfg = QEPConfig(out=Path("unused"), mix=1, kd_alpha=0, kd_beta=0, arch="resnet18", pristine_share=share)
    step = make_training_step(cfg, torch.device("cpu"), lambda d, r, b: gt_like(d), teacher=None)
    batch = {"dist": torch.zeros(3, 3, 16, 16, dtype=torch.uint8), "ref": torch.zeros(3, 3, 16, 16, dtype=torch.uint8),
             "type": torch.tensor([4, 9, 25]), "level": torch.tensor([1, 5, 3])}
    out = step(HeadsStub(heads), batch, torch.Generator().manual_seed(1), 0)

    d = _np_ce(fixed["type"][:3], [4, 9, 25]) + _np_ce(fixed["level"][:3], [1, 5, 3])
    r = _np_ce(fixed["type"][3:], [0, 0, 0]) + _np_ce(fixed["level"][3:], [0, 0, 0])
    assert out.loss.item() == pytest.approx((1 - share) * d + share * r, rel=1e-5)
    assert rows == ([6] if share else [3]) and out.samples == (6 if share else 3)
    assert ("ce_ref" in out.parts) == bool(share)


@pytest.mark.parametrize("mix_refs", [False, True])
def test_mix_refs_cuts_and_mixes_the_references_among_themselves(mix_refs):
    """--mix-refs: the student sees the references pasted into each other with the same box rule as
    the distorted crops (every pixel from some reference, seams inside), their targets still class 0;
    off, the references reach the student untouched."""
    from dsmix_cli.dsmix import mix
    from dsmix_cli.stages.qep import QEPConfig, make_training_step

    seen = []

    def heads(x):
        seen.append(x.detach().clone())
        return {"type": torch.zeros(x.shape[0], 26), "level": torch.zeros(x.shape[0], 6)}

    n, size = 4, 16
    refs = torch.stack([torch.full((3, size, size), 40 * (i + 1), dtype=torch.uint8) for i in range(n)])
    cfg = QEPConfig(out=Path("unused"), mix=3, kd_alpha=0, kd_beta=0, arch="resnet18", pristine_share=0.5,
                    mix_refs=mix_refs)
    step = make_training_step(cfg, torch.device("cpu"), lambda d, r, b: gt_like(d), teacher=None)
    batch = {"dist": refs.clone(), "ref": refs, "type": torch.tensor([4, 9, 25, 1]),
             "level": torch.tensor([1, 5, 3, 2])}
    out = step(HeadsStub(heads), batch, torch.Generator().manual_seed(3), 0)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)  # resnet18's input normalisation
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    got = (seen[0][n:] * std + mean).mul(255).round()  # the reference half of the student's batch
    plain = refs.float()
    assert torch.isfinite(out.loss)
    if not mix_refs:
        assert torch.equal(got, plain)
        return
    # the same draws as the step: the distorted crops' mix first, then the references' own
    g = torch.Generator().manual_seed(3)
    mix(refs.float() / 255, 3, g)
    want = mix(plain / 255, 3, g).images.mul(255).round()
    assert torch.equal(got, want) and not torch.equal(got, plain)
    values = set(got.unique().tolist())
    assert values <= {40.0, 80.0, 120.0, 160.0} and len(values) > 1  # only reference pixels, mixed
    # the references' loss is still against class 0: uniform logits give log(26) + log(6)
    assert out.parts["ce_ref"].item() == pytest.approx(math.log(26) + math.log(6), rel=1e-5)


def _code_distort(calls):
    """A stand-in distortion whose output names its input and class: src + (6 t + l) / 1000."""
    def distort(src, types, levels, generator=None, **whole):
        calls.append((src.detach().cpu().clone(), types.cpu().clone(), levels.cpu().clone()))
        return (src + (types.float() * 6 + levels.float()).view(-1, 1, 1, 1).to(src.device) / 1000).clamp(0, 1)
    return distort


def _same_crop_case():
    n, size = 4, 16
    refs = torch.stack([torch.full((3, size, size), 40 * (i + 1), dtype=torch.uint8) for i in range(n)])
    batch = {"ref": refs, "type": torch.tensor([4, 9, 25, 1]), "level": torch.tensor([1, 5, 3, 2]),
             "premade": torch.zeros(n, dtype=torch.bool), "offset": torch.tensor([[0, 0, 1]] * n)}
    from dsmix_cli.stages.qep import QEPConfig
    cfg = QEPConfig(out=Path("unused"), refs=Path("unused"), on_the_fly=True, mix=3, kd_alpha=0, kd_beta=0,
                    arch="resnet18", pristine_share=0.0, mix_partners="same", types=[2, 7, 11], levels=[3, 4])
    return batch, cfg


def test_same_crop_partners_are_other_distortions_of_the_same_crops():
    """--mix-partners same: `mix - 1` more distortions of every crop, each with its own uniform
    (type, level) from --types x --levels, made as the batch's own are (same crop, unflipped then
    flipped back); the partner indices point at them."""
    from dsmix_cli.stages.qep_batches import same_crop_partners

    calls = []
    batch, cfg = _same_crop_case()
    n = len(batch["ref"])
    ref01 = batch["ref"].float() / 255
    pool, types, levels, partners = same_crop_partners(batch, ref01, ref01 + 0.5, batch["type"], batch["level"],
                                                       cfg, torch.Generator().manual_seed(5), _code_distort(calls))
    assert pool.shape == (3 * n, *ref01.shape[1:]) and torch.equal(pool[:n], ref01 + 0.5)
    assert torch.equal(partners, torch.tensor([[4, 5, 6, 7], [8, 9, 10, 11]]))
    assert set(types[n:].tolist()) <= {2, 7, 11} and set(levels[n:].tolist()) <= {3, 4}
    assert len(set(zip(types[n:].tolist(), levels[n:].tolist()))) > 1  # drawn per crop
    assert torch.equal(types[:n], batch["type"]) and torch.equal(levels[:n], batch["level"])
    assert len(calls) == 2 and all(torch.equal(c[0], ref01) for c in calls)  # the same crops each time
    for j in range(2):
        part = slice(n * (j + 1), n * (j + 2))
        code = (types[part] * 6 + levels[part]).float() / 1000
        assert torch.allclose(pool[part], ref01 + code.view(-1, 1, 1, 1))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA")])])
def test_same_crop_partners_mix_only_the_samples_own_distortions(device):
    """The training step with --mix-partners same: every pixel the student sees comes from one of
    that sample's own distortions, and the mixed crops are `mix(pool, partners=...)` drawn with the
    step's generator after the partner classes."""
    from dsmix_cli.dsmix import mix
    from dsmix_cli.stages.qep import make_training_step
    from dsmix_cli.stages.qep_batches import same_crop_partners

    calls, seen = [], []
    distort = _code_distort(calls)
    batch, cfg = _same_crop_case()
    n = len(batch["ref"])
    ref01 = batch["ref"].float() / 255

    def heads(x):
        seen.append(x.detach().cpu().clone())
        return {"type": torch.zeros(x.shape[0], 26, device=x.device), "level": torch.zeros(x.shape[0], 6, device=x.device)}

    step = make_training_step(cfg, torch.device(device), lambda d, r, b: (d - r).abs().mean(1)[:, ::8, ::8],
                              teacher=None, distort=distort)
    out = step(HeadsStub(heads).to(device), batch, torch.Generator().manual_seed(3), 0)
    assert torch.isfinite(out.loss) and len(calls) == 3  # the batch's own distortions and two partner sets
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    got = seen[0] * std + mean
    mixed_any = False
    for b in range(n):
        options = torch.stack([(ref01[b] + (calls[k][1][b] * 6 + calls[k][2][b]).float() / 1000).clamp(0, 1)
                               for k in range(3)])  # this sample's three distortions
        match = (got[b][None] - options).abs().amax(1) < 1e-5
        assert match.any(0).all()  # every pixel from this sample's own distortions
        mixed_any |= bool(match[1:].any() and not match[0].all())
    assert mixed_any
    g = torch.Generator().manual_seed(3)
    own = distort(ref01.flip(-1), batch["type"], batch["level"]).flip(-1)
    pool, _, _, partners = same_crop_partners(batch, ref01, own, batch["type"], batch["level"], cfg, g, distort)
    assert torch.allclose(got, mix(pool, 3, g, partners=partners).images, atol=1e-5)


def test_adamw_cosine_and_warmup_set_the_learning_rate(refs, tmp_path):
    run = tmp_path / "o"
    res = _invoke(["--refs", str(refs), "--on-the-fly", "--dsm-source", "gt", "--out", str(run), "--max-steps", "3",
                   "--optimizer", "adamw", "--lr", "0.004", "--lr-schedule", "cosine", "--warmup-steps", "2",
                   "--epochs", "2", "--kd-alpha", "0", "--kd-beta", "0", "--val-fraction", "0", "--types", "16",
                   *TINY])
    assert res.exit_code == 0, res.output
    lrs = [r["lr"] for r in _log(run)]
    total = json.loads((run / "config.json").read_text())["total_steps"]
    cos = lambda s: 0.5 * (1 + math.cos(math.pi * (s - 2) / (total - 2)))  # noqa: E731
    assert lrs == pytest.approx([0.004 * 0.5, 0.004 * 1.0, 0.004 * cos(2)])
    assert "no held-out references" in res.output
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert "exp_avg" in str(ckpt["optimizer"]["state"][0].keys())  # AdamW state


def test_a_run_killed_before_its_first_checkpoint_says_so(refs, tmp_path):
    """A folder with a started run but no last.pt: neither a plain start nor --resume can use it,
    and the message says why (no --resume advice that would fail next)."""
    run = tmp_path / "o"
    run.mkdir()
    (run / "config.json").write_text("{}")
    (run / "metrics.jsonl").write_text('{"step": 10, "loss": 5.0}\n')
    args = ["--refs", str(refs), "--on-the-fly", "--dsm-source", "gt", "--out", str(run), "--max-steps", "1", *TINY]
    res = _invoke(args)
    assert res.exit_code == 2 and "before its first checkpoint" in res.output.replace("\n", " ")
    assert "--resume" not in res.output.replace("\n", " ").split("before its first checkpoint")[1]
    res = _invoke([*args, "--resume"])
    assert res.exit_code == 2 and "nothing to resume" in res.output.replace("\n", " ")
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "metrics.jsonl"]  # nothing written
