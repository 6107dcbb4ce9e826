"""deeplab-edge train: augmentation, schedule, class weights, the classifier swap, exact resume, and
torchrun (two CPU processes, gloo) against one process. Real CamVid frames, scaled down to 64 x 48."""

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from deeplab_edge.cli import main
from deeplab_edge.data import open_dataset
from deeplab_edge.errors import DeepLabEdgeError
from deeplab_edge.train import (TrainConfig, _initial_model, augment, folded_batch_norms,
                                median_frequency_weights, poly_lr)


@pytest.fixture(scope="module")
def camvid_small(shared, tmp_path_factory):
    """8 CamVid train and 4 val frames (real images and labels), 64 x 48, CamVid layout."""
    root = tmp_path_factory.mktemp("camvid_small")
    src_train = shared["camvid"].parent / "camvid_train"
    for split, src, n in (("train", src_train, 8), ("val", shared["camvid"], 4)):
        (root / split / "images").mkdir(parents=True)
        (root / split / "labels").mkdir()
        ids = sorted(p.stem for p in (src / "images").iterdir())[:n]
        for i in ids:
            img = next((src / "images").glob(f"{i}.*"))
            Image.open(img).convert("RGB").resize((64, 48), Image.BILINEAR).save(root / split / "images" / f"{i}.png")
            Image.open(src / "labels" / f"{i}.png").resize((64, 48), Image.NEAREST).save(root / split / "labels" /
                                                                                        f"{i}.png")
    return root


def test_augment_pads_with_mean_and_ignore_and_crops_the_image():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    label = rng.integers(0, 11, (20, 30), dtype=np.uint8)
    # scale 1, crop larger than the image: the image at the top left, the rest padded
    img, lab = augment(image, label, 40, (1.0, 1.0), False, np.random.default_rng(1), (128, 127, 126))
    assert img.shape == (40, 40, 3) and lab.shape == (40, 40)
    assert (img[:20, :30] == image).all() and (lab[:20, :30] == label).all()
    assert (img[20:] == (128, 127, 126)).all() and (img[:, 30:] == (128, 127, 126)).all()
    assert (lab[20:] == 255).all() and (lab[:, 30:] == 255).all()
    # scale 1, smaller crop: a window of the image and the same window of the label (flipped or not)
    for seed in range(5):
        img, lab = augment(image, label, 8, (1.0, 1.0), True, np.random.default_rng(seed), (0, 0, 0))
        found = [(y, x, f) for y in range(13) for x in range(23) for f in (False, True)
                 if (img == (image[y:y + 8, x:x + 8][:, ::-1] if f else image[y:y + 8, x:x + 8])).all()]
        assert len(found) == 1, seed
        y, x, f = found[0]
        win = label[y:y + 8, x:x + 8]
        assert (lab == (win[:, ::-1] if f else win)).all()


def test_poly_schedule():
    cfg = TrainConfig(data="", output="", lr=0.01, poly_power=0.9)
    assert poly_lr(cfg, 0, 100) == 0.01
    assert poly_lr(cfg, 50, 100) == pytest.approx(0.01 * 0.5 ** 0.9)
    assert poly_lr(cfg, 99, 100) == pytest.approx(0.01 * 0.01 ** 0.9)


def test_median_frequency_weights_by_hand(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    labels = [np.array([[0, 0, 1, 11]] * 2, np.uint8), np.array([[0, 2, 2, 2]] * 2, np.uint8)]
    for i, lab in enumerate(labels):
        Image.fromarray(np.zeros((2, 4, 3), np.uint8)).save(tmp_path / "images" / f"{i}.png")
        Image.fromarray(lab, mode="L").save(tmp_path / "labels" / f"{i}.png")
    w = median_frequency_weights(open_dataset(tmp_path))
    # freq_c = pixels of c / pixels of the images holding c: class 0 6/16, 1 2/8, 2 6/8 (11 is void)
    freq = np.array([6 / 16, 2 / 8, 6 / 8])
    med = np.median(freq)
    assert w[:3].tolist() == pytest.approx((med / freq).tolist()) and not w[3:].any()


def test_new_class_count_replaces_only_the_classifier(imported):
    loaded_sd = imported[1].state_dict()
    model, meta = _initial_model(TrainConfig(data="", output="", weights=str(imported[0])), 11, ["c"] * 11)
    sd = model.state_dict()
    assert model.num_classes == 11 and meta["classes"] == ["c"] * 11
    changed = [k for k in sd if sd[k].shape != loaded_sd[k].shape]
    assert changed and all(k.startswith("classifier.") for k in changed)
    same = [k for k in sd if k not in changed]
    assert all(torch.equal(sd[k], loaded_sd[k]) for k in same)


def test_a_new_architecture_starts_from_the_trunk_of_a_checkpoint(imported):
    """--trunk with --arch: the new head on the imported trunk (weights equal), the trunk's preprocessing and a
    record of where it came from; --trunk without --arch, or with --weights, and --aspp-rates without --arch are
    refused when the config is made."""
    cfg = TrainConfig(data="", output="", arch="deeplabv3_mobilenet_v2", trunk=str(imported[0]), aspp_rates=(6, 12, 18))
    model, meta = _initial_model(cfg, 11, ["c"] * 11)
    src, sd = imported[1].state_dict(), model.state_dict()
    assert all(torch.equal(sd[k], src[k]) for k in sd if k.startswith("backbone."))
    assert model.config["aspp_rates"] == [6, 12, 18] and len(model.classifier[0].convs) == 5  # 1x1, 3 rates, pool
    assert meta["preprocess"] == imported[2]["preprocess"] and meta["trunk"]["arch"] == "deeplabv3_mobilenet_v2"
    for bad, match in (({"trunk": str(imported[0])}, "--trunk"),
                       ({"trunk": str(imported[0]), "arch": "deeplabv2_mobilenet_v2", "weights": str(imported[0])},
                        "--trunk"),
                       ({"aspp_rates": (6,)}, "--aspp-rates"), ({"separable": True}, "--separable")):
        with pytest.raises(DeepLabEdgeError, match=match):
            TrainConfig(data="", output="", **bad)
    # --separable: DeepLab-v3+'s separable head on the same trunk; refused for an architecture without one
    cfg = TrainConfig(data="", output="", arch="deeplabv3plus_mobilenet_v2", trunk=str(imported[0]), separable=True)
    model, _ = _initial_model(cfg, 11, ["c"] * 11)
    assert model.config["separable"] is True and model.classifier.aspp.convs[1][0].groups == 320
    assert all(torch.equal(model.state_dict()[k], src[k]) for k in src if k.startswith("backbone."))
    with pytest.raises(DeepLabEdgeError, match="no separable variant"):
        _initial_model(TrainConfig(data="", output="", arch="deeplabv2_mobilenet_v2", trunk=str(imported[0]),
                                   separable=True), 11, ["c"] * 11)


@pytest.fixture(scope="module")
def ckpt11(imported, tmp_path_factory):
    """The imported VOC model with an 11-class classifier (untrained), evaluating CamVid at its own size."""
    from deeplab_edge.checkpoint import save_checkpoint

    model, meta = _initial_model(TrainConfig(data="", output="", weights=str(imported[0])), 11,
                                 [f"c{i}" for i in range(11)])  # distinct names: a checkpoint needs them
    path = tmp_path_factory.mktemp("ckpt11") / "m11.pt"
    save_checkpoint(model, {**meta, "preprocess": {**meta["preprocess"], "size": None, "resize": "none",
                                                   "pad": False}}, path)
    return path


def _run(*args):
    res = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res


def _weights(path):
    return torch.load(path, weights_only=True)["state_dict"]


@pytest.mark.slow
def test_resume_continues_exactly(camvid_small, imported, tmp_path):
    common = ["train", "--data", camvid_small / "train", "--weights", imported[0], "--crop", 33, "--batch-size", 4,
              "--epochs", 2, "--seed", 3]
    _run(*common, "-o", tmp_path / "a")
    _run(*common, "--max-steps", 2, "-o", tmp_path / "b")  # 8 images / 4 = 2 steps: the first epoch
    rec_b = json.loads((tmp_path / "b" / "train_record.json").read_text())
    assert [r["epoch"] for r in rec_b["epochs"]] == [1]
    _run(*common, "--resume", "-o", tmp_path / "b")
    a, b = _weights(tmp_path / "a" / "last.pt"), _weights(tmp_path / "b" / "last.pt")
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6, msg=k)
    rec_a = json.loads((tmp_path / "a" / "train_record.json").read_text())
    rec_b = json.loads((tmp_path / "b" / "train_record.json").read_text())
    assert [r["loss"] for r in rec_b["epochs"]] == pytest.approx([r["loss"] for r in rec_a["epochs"]], abs=1e-6)
    assert [(r["at_epoch"], r["at_step"]) for r in rec_b["resumed"]] == [(1, 2)] and "resumed" not in rec_a
    assert (tmp_path / "a" / "train_curve.png").is_file() and (tmp_path / "a" / "train_record.csv").is_file()
    # the trained checkpoint is an ordinary one: it evaluates
    ev = CliRunner().invoke(main, ["eval", "--weights", str(tmp_path / "a" / "last.pt"), "--data",
                                   str(camvid_small / "val"), "--json"])
    assert ev.exit_code == 0, ev.output
    assert 0 <= json.loads(ev.stdout)["miou"] <= 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(args, cwd, timeout=300):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(_free_port()), "-m", "deeplab_edge.cli", *map(str, args)]
    t0 = time.monotonic()
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    return r, time.monotonic() - t0


@pytest.mark.slow
def test_ddp_two_processes_equal_one_process(camvid_small, imported, tmp_path):
    """One optimizer step of global batch 4: two gloo processes (2 images each) make the update one
    process makes. Frozen batch norm and no dropout: both depend on how the batch is split. Measured
    here: the updates differ by 1.2e-6 of their size (fp32 sums in another order); asserted <= 1e-4
    overall and <= 1e-3 per tensor. A wrong normalisation is off by far more (a missing world-size
    factor halves the update; per-process loss means weight the images differently). Later steps
    amplify the fp32 differences (5e-4 after 2 steps, 5e-3 after 3, measured), so one step is compared."""
    args = ["train", "--data", camvid_small / "train", "--weights", imported[0], "--crop", 33, "--batch-size", 4,
            "--epochs", 2, "--max-steps", 1, "--freeze-bn", "--dropout", 0, "--seed", 5, "--device", "cpu"]
    r, _ = _torchrun([*args, "-o", tmp_path / "ddp"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun worker (OMP_NUM_THREADS=1): the same kernels on both sides
    try:
        _run(*args, "-o", tmp_path / "one")
    finally:
        torch.set_num_threads(threads)
    ddp, one = _weights(tmp_path / "ddp" / "last.pt"), _weights(tmp_path / "one" / "last.pt")
    init = imported[1].state_dict()
    diff2 = upd2 = 0.0
    for k in one:
        if not (k in init and init[k].shape == one[k].shape and one[k].is_floating_point()):
            continue
        d_one, d_ddp = one[k] - init[k], ddp[k] - init[k]
        err, size = float((d_ddp - d_one).norm()), float(d_one.norm())
        assert err <= 1e-3 * size + 1e-9, (k, err, size)
        diff2, upd2 = diff2 + err ** 2, upd2 + size ** 2
    print(f"DDP vs one process: update difference {diff2 ** 0.5 / upd2 ** 0.5:.2e} of the update")
    assert upd2 > 1e-6 and diff2 ** 0.5 <= 1e-4 * upd2 ** 0.5, (diff2 ** 0.5, upd2 ** 0.5)
    rec = json.loads((tmp_path / "ddp" / "train_record.json").read_text())
    assert rec["world_size"] == 2 and rec["epochs"][-1]["step"] == 1


@pytest.mark.slow
def test_sharded_eval_confusion_matrix_equals_one_process(camvid_small, ckpt11, tmp_path):
    ckpt = ckpt11
    r, _ = _torchrun(["eval", "--weights", ckpt, "--data", camvid_small / "val", "--device", "cpu", "--json"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    sharded = json.loads(r.stdout)
    one = json.loads(_run("eval", "--weights", ckpt, "--data", camvid_small / "val", "--device", "cpu",
                          "--json").stdout)
    assert sharded["processes"] == 2 and sharded["images"] == one["images"] == 4
    assert sharded["confusion"] == one["confusion"] and sharded["miou"] == one["miou"]


@pytest.mark.slow
def test_a_failing_rank_ends_the_job_with_its_error(camvid_small, ckpt11, tmp_path):
    """Rank 1 reads a corrupt image (its shard is every other image) while rank 0 waits in the
    all-reduce: torchrun ends the job with rank 1's error instead of hanging."""
    val = tmp_path / "val"
    import shutil

    shutil.copytree(camvid_small / "val", val)
    second = sorted((val / "images").iterdir())[1]
    second.write_bytes(b"not a png")
    r, seconds = _torchrun(["eval", "--weights", ckpt11, "--data", val, "--device", "cpu", "--dataset", "camvid"],
                           tmp_path, timeout=240)
    assert r.returncode != 0
    assert "cannot read the image" in r.stderr + r.stdout
    assert seconds < 200
    # every process ends with one line: the failing one names the cause, the other says another process failed
    # (torchrun's own summary of the failed job follows them; no process prints gloo's traceback)
    errors = [ln for ln in (r.stderr + r.stdout).splitlines() if ln.startswith("error:")]
    assert len(errors) == 2 and sum("another process of this torchrun job failed" in ln for ln in errors) == 1, errors
    assert "Connection closed by peer" not in r.stderr + r.stdout and "deeplab_edge/" not in r.stderr, r.stderr[-3000:]


def test_folded_batch_norms_are_recognised(imported):
    """The TFLite import folds BN into the convolutions (identity BN carrying the bias); a fresh model's BN
    is an identity without bias; a trained one has statistics."""
    from deeplab_edge.models import get_model

    assert folded_batch_norms(imported[1])
    fresh = get_model("deeplabv3_mobilenet_v2", num_classes=11)
    assert not folded_batch_norms(fresh)
    fresh.train()
    fresh(torch.randn(2, 3, 33, 33))  # one batch updates the running statistics
    with torch.no_grad():
        for m in fresh.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.bias.add_(0.1)
    assert not folded_batch_norms(fresh)


@pytest.mark.slow
def test_resume_with_another_model_is_refused(camvid_small, imported, tmp_path):
    """A run folder resumed with a different architecture: one line naming both, nothing changed."""
    common = ["train", "--data", str(camvid_small / "train"), "--crop", "33", "--batch-size", "4", "--epochs", "2"]
    _run(*common, "--weights", imported[0], "--max-steps", 1, "-o", tmp_path / "r")
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "r").iterdir()}
    res = CliRunner().invoke(main, [*common, "--arch", "deeplabv3plus_mobilenet_v2", "--resume", "-o",
                                    str(tmp_path / "r")])
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert "deeplabv3_mobilenet_v2" in res.output and "deeplabv3plus_mobilenet_v2" in res.output
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "r").iterdir()} == before


def test_qat_writes_the_qdq_model_it_trained(camvid_small, tmp_path):
    """train --qat on real frames: the fake-quant model validates every epoch, the QDQ model written at the
    end scores what it scored (ONNX Runtime emulation), and the checkpoint records the thresholds."""
    from pathlib import Path

    from deeplab_edge.checkpoint import load_checkpoint

    weights = Path(__file__).resolve().parents[1] / "weights" / "deeplabv3_mnv2_camvid.pt"
    r = CliRunner().invoke(main, ["train", "--data", str(camvid_small / "train"), "--val-data", str(camvid_small / "val"),
                                  "--weights", str(weights), "--qat", "--qat-ranges", "minmax", "--qat-calib-num", "4",
                                  "--crop", "33", "--batch-size", "4", "--epochs", "1", "--lr", "0.001",
                                  "-o", str(tmp_path / "q"), "--json"])
    assert r.exit_code == 0, r.output
    rec = json.loads((tmp_path / "q" / "train_record.json").read_text())
    qat = rec["qat"]
    assert qat["quantized_convs"] == 55 and qat["residual_adds"] == 10 and qat["calibration_images"] == 4
    assert len(qat["ranges"]) == 65  # 55 Conv inputs, 10 residual skip inputs
    # 64 x 48 frames at output stride 8 have 48 feature cells: one value rounded the other way (float summation
    # order, ONNX Runtime against PyTorch) moves a whole cell, 64 pixels of 3072; test_qat checks Conv by Conv
    assert qat["qdq_vs_fake_quant_agreement"] >= 0.95
    meta = load_checkpoint(tmp_path / "q" / "last.pt").meta
    assert meta["qat"]["ranges"] == qat["ranges"] and meta["qat"]["ranges_method"] == "minmax"
    from deeplab_edge.checkpoint import file_sha256
    from deeplab_edge.export import read_metadata

    qmeta = read_metadata(tmp_path / "q" / "model_qdq.onnx")  # belongs to last.pt, records its calibration images
    assert qmeta["checkpoint_sha256"] == file_sha256(tmp_path / "q" / "last.pt")
    assert qmeta["precision"] == "int8-qdq-tensorrt" and len(qmeta["calibration"]["images_sha1"]) == 4
    ev = CliRunner().invoke(main, ["eval", "--onnx", str(tmp_path / "q" / "model_qdq.onnx"), "--data",
                                   str(camvid_small / "val"), "--json"])
    assert ev.exit_code == 0, ev.output
    assert json.loads(ev.stdout)["miou"] == pytest.approx(rec["epochs"][-1]["val_miou"], abs=0.01)
    # build takes the QAT model as it takes any QDQ model (here: the bundle, where TensorRT is missing)
    b = CliRunner().invoke(main, ["build", "--weights", str(tmp_path / "q" / "last.pt"), "--qdq",
                                  str(tmp_path / "q" / "model_qdq.onnx"), "--int8", "--data", str(camvid_small / "val"),
                                  "--shapes", "1x3x48x64,1x3x48x64,1x3x48x64",
                                  "-o", str(tmp_path / "deploy" / "qat.engine"), "--json"])
    assert b.exit_code == 0, b.output
    assert json.loads(b.stdout)["calibration"]["method"] == "qat"
    bad = CliRunner().invoke(main, ["train", "--data", str(camvid_small / "train"), "--arch", "deeplabv3_mobilenet_v2",
                                    "--qat", "-o", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "--qat fine-tunes a trained FP32 model" in bad.output
    assert not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_ddp_trains_a_torchvision_checkpoint_with_its_aux_head(camvid_small, tmp_path):
    """A torchvision state dict with `aux_classifier.*` (deeplabv3_mobilenet_v3_large(aux_loss=True)'s layout):
    two gloo processes train it (DDP failed on step 2 while forward never called the aux head: "Expected to have
    finished reduction in the prior iteration"), and the aux head trains as in torchvision's reference
    (loss weight 0.5): its weights move."""
    from deeplab_edge.models import get_model

    model = get_model("deeplabv3_mobilenet_v3_large", num_classes=11, aux_loss=True)
    ckpt = tmp_path / "tv_aux.pth"
    torch.save(model.state_dict(), ckpt)
    r, _ = _torchrun(["train", "--data", camvid_small / "train", "--weights", ckpt, "--crop", 33, "--batch-size", 4,
                      "--epochs", 1, "--max-steps", 2, "--device", "cpu", "-o", tmp_path / "ddp"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    trained = _weights(tmp_path / "ddp" / "last.pt")
    init = model.state_dict()
    moved = [k for k in init if k.startswith("aux_classifier.") and init[k].is_floating_point()
             and not torch.equal(init[k], trained[k])]
    assert "aux_classifier.4.weight" in moved and "aux_classifier.0.weight" in moved, moved


def test_the_training_forward_returns_the_aux_logits_only_when_asked():
    """(out, aux), each at the input size, only in train mode with train_aux set (as train sets it for a model
    with an aux head); the plain logits otherwise, as every runner expects."""
    from deeplab_edge.models import get_model
    from deeplab_edge.train import AUX_WEIGHT

    model = get_model("deeplabv3_mobilenet_v3_large", num_classes=3, aux_loss=True).train()
    x = torch.randn(2, 3, 33, 33)
    assert isinstance(model(x), torch.Tensor)  # not asked: the logits alone, as every runner expects
    model.train_aux = True
    out, aux = model(x)
    assert out.shape == aux.shape == (2, 3, 33, 33)
    model.eval()
    assert isinstance(model(x), torch.Tensor)  # eval: the logits alone
    assert AUX_WEIGHT == 0.5


def test_resume_state_carries_the_loss_scale_and_cuda_random_state(tmp_path):
    """train_state.pt holds the GradScaler's state (the AMP loss scale; it restarted at 2^16 before) and the CUDA
    random states; resuming restores the scale into the scaler (a CPU GradScaler here: the same state dict)."""
    from deeplab_edge.models import get_model
    from deeplab_edge.train import _restore_random_and_scale, _save_state, load_state

    model = get_model("deeplabv3_mobilenet_v2", num_classes=3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    _save_state(model, opt, scaler, 1, 2, {"epochs": []}, tmp_path / "train_state.pt")
    st = load_state(tmp_path / "train_state.pt")
    assert st["scaler"]["scale"] == 1024.0 and "cuda_rng" in st
    fresh = torch.amp.GradScaler("cpu")
    assert fresh.get_scale() == 65536.0
    torch.manual_seed(123)
    _restore_random_and_scale(st, fresh)
    assert fresh.get_scale() == 1024.0
    assert torch.equal(torch.get_rng_state(), st["torch_rng"])


def test_the_loader_uses_workers_and_pinned_memory_on_a_gpu_only():
    """On a GPU: worker processes and pinned memory (non_blocking copies overlap; without pinning they did
    nothing); on a CPU the process loads itself (the exact-resume and DDP tests run that path)."""
    import os

    from deeplab_edge.train import LOADER_WORKERS, _loader

    data = list(range(8))
    sampler = torch.utils.data.SequentialSampler(data)
    gpu = _loader(data, sampler, 2, torch.device("cuda", 0))
    cpu = _loader(data, sampler, 2, torch.device("cpu"))
    assert gpu.num_workers == min(LOADER_WORKERS, os.cpu_count() or 1) >= 1 and gpu.pin_memory
    assert not gpu.persistent_workers  # each epoch's workers see the epoch just set on the dataset
    assert cpu.num_workers == 0 and not cpu.pin_memory
