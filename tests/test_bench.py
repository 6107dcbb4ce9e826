"""`deeplab-edge bench`: statistics against hand-computed cases, tegrastats parsing, and a
small end-to-end run on 2 real VOC images whose mIoU is checked against `deeplab-edge eval`."""

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from deeplab_edge import jetson
from deeplab_edge.bench import power
from deeplab_edge.bench.harness import select_backends
from deeplab_edge.bench.report import merge
from deeplab_edge.bench.stats import latency_summary, pareto_front, percentile
from deeplab_edge.cli import main
from deeplab_edge.errors import DeepLabEdgeError


# ----------------------------------------------------------------------------- statistics

def test_percentiles_hand_computed():
    v = [40.0, 10.0, 30.0, 20.0]  # sorted 10 20 30 40; position (n - 1) q / 100
    assert percentile(v, 50) == pytest.approx(25.0)  # 1.5 -> 20 + 0.5 * 10
    assert percentile(v, 90) == pytest.approx(37.0)  # 2.7 -> 30 + 0.7 * 10
    assert percentile(v, 99) == pytest.approx(39.7)  # 2.97
    assert percentile(v, 0) == 10.0 and percentile(v, 100) == 40.0
    assert percentile([7.0], 99) == 7.0
    rng = np.random.default_rng(0)
    x = rng.exponential(size=101).tolist()
    for q in (1, 50, 90, 99):
        assert percentile(x, q) == pytest.approx(float(np.percentile(x, q)))
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_latency_summary_throughput():
    s = latency_summary([10.0, 20.0, 30.0, 40.0], batch=4)
    assert s["mean_ms"] == 25.0 and s["p50_ms"] == 25.0 and s["min_ms"] == 10.0 and s["max_ms"] == 40.0
    assert s["images_per_s"] == pytest.approx(4 / 0.025)  # 160 images/s


def test_agreement_pct_reads_the_named_baseline():
    """The CSV/table columns take the baseline row's entry by its recorded key, and qdq-int8's only for ov-int8:
    a qdq-int8 baseline is both columns of the ov-int8 row, never a missing baseline."""
    from deeplab_edge.bench.report import agreement_pct
    ov = {"backend": "ov-int8", "pixel_agreement": {"ort-fp32": 0.97, "qdq-int8": 0.99},
          "pixel_agreement_baseline": "ort-fp32"}
    assert agreement_pct(ov) == pytest.approx({"pixels_as_baseline_pct": 97, "pixels_as_qdq_int8_pct": 99})
    ov_q = {"backend": "ov-int8", "pixel_agreement": {"qdq-int8": 0.98}, "pixel_agreement_baseline": "qdq-int8"}
    assert agreement_pct(ov_q) == pytest.approx({"pixels_as_baseline_pct": 98, "pixels_as_qdq_int8_pct": 98})
    ort = {"backend": "ort-int8", "pixel_agreement": {"qdq-int8": 0.96}, "pixel_agreement_baseline": "qdq-int8"}
    assert agreement_pct(ort) == {"pixels_as_baseline_pct": pytest.approx(96), "pixels_as_qdq_int8_pct": None}
    assert agreement_pct({"backend": "torch-fp32", "pixel_agreement": {}, "pixel_agreement_baseline": "torch-fp32"}) \
        == {"pixels_as_baseline_pct": None, "pixels_as_qdq_int8_pct": None}


def test_int8_runtimes_rank_real_int8_rows_per_model():
    from deeplab_edge.bench.report import int8_runtimes

    def row(backend, precision, ms, crf="none", speed=True, model="a", output="logits", agree=None):
        return {"backend": backend, "precision": precision, "latency_ms": ms, "crf": crf, "latency_is_speed": speed,
                "model": model, "variant": "os16", "output": output, "miou": ms / 100,
                "pixel_agreement": {"torch-fp32": agree} if agree else {}}
    rows = [row("torch-fp32", "fp32", 30), row("ort-int8", "int8", 41.2, agree=0.99), row("ov-int8", "int8", 22.4),
            row("qdq-int8", "int8", 5, speed=False), row("ov-int8", "int8", 900, crf="torch"),
            row("ov-int8", "int8", 20, output="labels"), row("ort-int8", "int8", 10, model="b")]
    got = int8_runtimes(rows)
    assert [(e["model"], e["rank"], e["backend"]) for e in got] == [("a", 1, "ov-int8"), ("a", 2, "ort-int8"),
                                                                     ("b", 1, "ort-int8")]
    assert got[1]["times_fastest"] == pytest.approx(41.2 / 22.4) and got[1]["pixels_as_baseline_pct"] == 99.0
    assert got[0]["pixels_as_baseline_pct"] is None


def test_pareto_front_hand_computed():
    pts = [(10, 0.80),   # A: optimal (fastest above 0.5)
           (20, 0.90),   # B: optimal (most accurate)
           (15, 0.70),   # C: dominated by A (slower and worse)
           (20, 0.90),   # D: equal to B -> also optimal
           (5, 0.50),    # E: optimal (fastest)
           (25, 0.90),   # F: dominated by B (same accuracy, slower)
           (None, 0.99),  # G: no latency (emulated) -> never optimal, dominates nothing
           (12, math.nan)]  # H: no accuracy -> never optimal
    assert pareto_front(pts) == [True, True, False, True, True, False, False, False]
    assert pareto_front([]) == []


# ----------------------------------------------------------------------------- backends

def test_backend_selection_on_this_cpu():
    run, skipped = select_backends("torch-fp32,torch-fp16,trt-int8,triton-fp16", torch.device("cpu"))
    reasons = {s["backend"]: s["reason"] for s in skipped}
    assert [b.name for b in run] == ["torch-fp32"]
    assert "CPU" in reasons["torch-fp16"]
    assert "CUDA GPU" in reasons["triton-fp16"]
    assert "tensorrt" in reasons["trt-int8"] or "CUDA" in reasons["trt-int8"]
    # auto: every backend is either run or listed with a reason, never dropped
    run, skipped = select_backends("auto", torch.device("cpu"))
    from deeplab_edge.bench.harness import BACKENDS

    assert sorted([b.name for b in run] + [s["backend"] for s in skipped]) == sorted(BACKENDS)
    assert all(s["reason"] for s in skipped)
    with pytest.raises(DeepLabEdgeError, match="unknown backend"):
        select_backends("torch-fp32,tensorflow", torch.device("cpu"))


# ----------------------------------------------------------------------------- tegrastats

# Lines in the formats NVIDIA documents for tegrastats. Field examples from the L4T 32.5
# Development Guide, appendix "tegrastats Utility" (docs.nvidia.com/jetson/archives/l4t-archived/
# l4t-325/Tegra Linux Driver Package Development Guide/AppendixTegraStats.html):
# "RAM 220/38955MB (lfb 847x4MB)", "SWAP 0/1978MB (cached 0MB)", "CPU [1%@102,5%@102,0%@102,0%@102]",
# "EMC_FREQ X%@Y", "GR3D_FREQ X%@Y", rails as "<rail> current/average". Rail names from the Jetson
# Linux Developer Guide power pages: AGX Orin VDD_GPU_SOC / VDD_CPU_CV / VIN_SYS_5V0 (r35/r36, with
# an mW unit), Orin NX / Nano VDD_IN / VDD_CPU_GPU_CV / VDD_SOC, Jetson Nano (L4T 32)
# POM_5V_IN / POM_5V_GPU / POM_5V_CPU (no unit). The lines are composed from those documented
# fields, not captured on a device.
AGX_ORIN = ("RAM 220/38955MB (lfb 847x4MB) SWAP 0/1978MB (cached 0MB) CPU [1%@102,5%@102,off,0%@102] "
            "EMC_FREQ 0%@2133 GR3D_FREQ 14%@[407,407] cpu@47.5C gpu@44.1C "
            "VDD_GPU_SOC 3150mW/2971mW VDD_CPU_CV 1200mW/1100mW VIN_SYS_5V0 4968mW/5048mW")
ORIN_NANO = ("RAM 3172/7620MB (lfb 2x4MB) SWAP 0/3810MB (cached 0MB) CPU [1%@729,2%@729,0%@729,0%@729] "
             "GR3D_FREQ 26%@[305] VDD_IN 4900mW/5000mW VDD_CPU_GPU_CV 924mW/939mW VDD_SOC 1500mW/1600mW")
# A real line captured on a Jetson TX2 (L4T 32, 2019), as posted in github.com/FindHao/tx-utils/issues/3:
# not from NVIDIA's documentation (which gives field examples, no complete line), but real output.
TX2_CAPTURED = ("RAM 2020/7852MB (lfb 1164x4MB) CPU [9%@345,21%@345,25%@345,3%@345,1%@345,1%@345] EMC_FREQ 0% "
                "GR3D_FREQ 0% PLL@42.5C MCPU@42.5C PMIC@100C Tboard@40C GPU@41C BCPU@42.5C thermal@41.9C "
                "Tdiode@41.25C VDD_SYS_GPU 153/158 VDD_SYS_SOC 536/547 VDD_4V0_WIFI 633/527 VDD_IN 3140/3208 "
                "VDD_SYS_CPU 536/590 VDD_SYS_DDR 557/601")
NANO_L4T32 = ("RAM 1716/3956MB (lfb 169x4MB) SWAP 0/1978MB (cached 0MB) IRAM 0/252kB(lfb 252kB) "
              "CPU [1%@102,5%@102,0%@102,0%@102] EMC_FREQ 3%@1600 GR3D_FREQ 0%@921 APE 25 "
              "POM_5V_IN 2526/2526 POM_5V_GPU 0/0 POM_5V_CPU 334/334")


def test_tegrastats_rails_and_totals():
    orin = power.parse_tegrastats(AGX_ORIN)
    assert orin["rails_mw"] == {"VDD_GPU_SOC": 3150, "VDD_CPU_CV": 1200, "VIN_SYS_5V0": 4968}  # current, not average
    assert (orin["ram_used_mb"], orin["ram_total_mb"]) == (220, 38955)
    assert orin["cpu"][2] is None and orin["cpu"][1] == {"load_pct": 5, "mhz": 102}
    assert orin["engines"]["GR3D_FREQ"] == {"load_pct": 14, "mhz": 407}
    assert orin["temps_c"]["gpu"] == pytest.approx(44.1)
    assert power.total_power_mw(orin["rails_mw"])[0] == 3150 + 1200 + 4968  # AGX: no input rail -> sum
    nano = power.parse_tegrastats(ORIN_NANO)
    assert power.total_power_mw(nano["rails_mw"]) == (4900.0, "VDD_IN")
    old = power.parse_tegrastats(NANO_L4T32)
    assert old["rails_mw"] == {"POM_5V_IN": 2526, "POM_5V_GPU": 0, "POM_5V_CPU": 334}  # RAM/SWAP/IRAM are not rails
    assert power.total_power_mw(old["rails_mw"]) == (2526.0, "POM_5V_IN")
    tx2 = power.parse_tegrastats(TX2_CAPTURED)
    assert power.total_power_mw(tx2["rails_mw"]) == (3140.0, "VDD_IN") and len(tx2["rails_mw"]) == 6
    assert tx2["engines"]["GR3D_FREQ"] == {"load_pct": 0, "mhz": None} and len(tx2["cpu"]) == 6
    assert tx2["temps_c"]["Tdiode"] == pytest.approx(41.25) and tx2["ram_total_mb"] == 7852
    s = power.summarize([NANO_L4T32, NANO_L4T32.replace("POM_5V_IN 2526/2526", "POM_5V_IN 3526/2700"), ""])
    assert s["samples"] == 2 and s["power_w"] == pytest.approx((2526 + 3526) / 2 / 1e3)


def test_jetson_stats_power_readings_both_layouts():
    """jetson-stats 4.x builds ``{"rail": ..., "tot": ...}`` with the input rail moved into
    ``tot`` (Orin NX: VDD_IN) or ``tot`` = the rails' sum (AGX Orin: no input rail); 3.x gives
    ``(total, rails)`` with cur/avg (layouts from jetson-stats' jtop/core/power.py, jtop/jtop.py)."""
    nx = {"rail": {"VDD_CPU_GPU_CV": {"volt": 4984, "curr": 185, "power": 924, "avg": 939},
                   "VDD_SOC": {"volt": 4984, "curr": 300, "power": 1500, "avg": 1600}},
          "tot": {"volt": 4984, "curr": 983, "power": 4900, "avg": 5000, "name": "VDD_IN"}}
    assert power.jtop_power_mw(nx) == (4900.0, {"VDD_CPU_GPU_CV": 924.0, "VDD_SOC": 1500.0}, "VDD_IN")
    agx = {"rail": {"VDD_GPU_SOC": {"power": 3150, "avg": 2971}, "VDD_CPU_CV": {"power": 1200, "avg": 1100}},
           "tot": {"power": 4350, "avg": 4071}}
    mw, rails, how = power.jtop_power_mw(agx)
    assert mw == 4350.0 and how == "sum of VDD_GPU_SOC+VDD_CPU_CV"
    old = ({"cur": 2526, "avg": 2526}, {"POM_5V_GPU": {"cur": 0, "avg": 0}, "POM_5V_CPU": {"cur": 334, "avg": 334}})
    assert power.jtop_power_mw(old) == (2526.0, {"POM_5V_GPU": 0.0, "POM_5V_CPU": 334.0}, "jetson-stats total")
    s = power.summarize_jtop([nx, {**nx, "tot": {**nx["tot"], "power": 5900}}, None])
    assert s["samples"] == 3 and s["power_w"] == pytest.approx((4900 + 5900) / 2 / 1e3)  # the empty reading adds none
    assert s["rails_w"]["VDD_SOC"] == pytest.approx(1.5) and s["source"] == "jetson-stats"


def test_no_power_sampler_off_a_jetson():
    import importlib.util
    import shutil

    if importlib.util.find_spec("jtop") or shutil.which("tegrastats"):
        pytest.skip("this machine has jetson-stats or tegrastats")
    assert power.power_sampler() is None


def test_l4t_release_and_power_mode():
    # /etc/nv_tegra_release's first line and `nvpmodel -q` output, as on JetPack 5.1.2 (L4T 35.4.1)
    assert jetson.parse_l4t_release("# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64, "
                                   "DATE: Tue Aug  1 19:57:35 UTC 2023") == "35.4.1"
    assert jetson.parse_nvpmodel("NV Power Mode: MAXN\n0\n") == "MAXN (0)"
    assert jetson.parse_nvpmodel("nothing here") is None


# ----------------------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def bench_run(shared, imported, tmp_path_factory):
    """One small real bench: 2 VOC images, PyTorch + ONNX Runtime + LiteRT (Google's .tflite) + the emulated QDQ
    model, CRF off/torch, the ONNX backends also with the arg-max in the graph (uint8 labels); the artefacts are
    kept to check cells against `eval`."""
    out = tmp_path_factory.mktemp("bench")
    ckpt = imported[0]
    res = CliRunner().invoke(main, ["bench", "--weights", str(ckpt), "--data", str(shared["voc"]), "--num-images", "2",
                                    "--backends", "torch-fp32,ort-fp32,litert-int8,qdq-int8,trt-fp16,triton-fp16",
                                    "--tflite", str(shared["tflite"]),
                                    "--crf", "none,torch,triton", "--batch", "1,2", "--iters", "2", "--warmup", "1",
                                    "--calib-num", "2", "--calib-method", "minmax", "--calib-on-eval",
                                    "--emit", "logits,labels", "--labels-dtype", "uint8", "--tag", "a", "-o", str(out),
                                    "--artifacts", str(out / "artifacts"), "--json"])
    assert res.exit_code == 0, res.output
    return out, json.loads(res.stdout), ckpt


def test_bench_writes_json_csv_png(bench_run):
    out, doc, _ = bench_run
    on_disk = json.loads((out / "bench_a.json").read_text())
    assert on_disk["rows"] == doc["rows"] and on_disk["format"] == "deeplab-edge-bench/1"
    env = on_disk["environment"]
    assert env["cpu"] and env["versions"]["torch"] and env["date"] and "git_commit" in env
    cells = {(r["backend"], r["output"], r["crf"]) for r in doc["rows"]}
    assert cells == {(b, "logits", c) for b in ("torch-fp32", "ort-fp32", "litert-int8", "qdq-int8")
                     for c in ("none", "torch")} | {("ort-fp32", "labels", "none"), ("qdq-int8", "labels", "none")}
    skipped = {s["backend"]: s["reason"] for s in doc["skipped"]}
    assert set(skipped) == {"trt-fp16", "triton-fp16"} and all(skipped.values())
    assert [s["crf"] for s in doc["skipped_crf"]] == ["triton", "torch on the label models"]
    rows = list(csv.DictReader(io.StringIO((out / "bench_a.csv").read_text())))
    assert len(rows) == len(doc["rows"])
    for r, c in zip(doc["rows"], rows):
        assert (c["backend"], c["output"], c["crf"]) == (r["backend"], r["output"], r["crf"])
        assert float(c["miou_pct"]) == pytest.approx(100 * r["miou"], rel=1e-5)
    with Image.open(out / "bench_a.png") as im:
        assert im.format == "PNG" and im.size[0] > 500
    for r in doc["rows"]:
        assert len(r["class_iou"]) == 21
        assert [b["batch"] for b in r["batches"]] == [1, 2]
        b1 = r["batches"][0]
        assert b1["calls"] == 2 and b1["p50_ms"] <= b1["p90_ms"] <= b1["p99_ms"]
        assert r["file_mb"] > 1 and r["memory"]["peak_rss_mb"] > 0
        assert set(r["harness_ms"]) >= {"load", "preprocess", "postprocess"}
        if r["latency_is_speed"]:
            expect = b1["p50_ms"] + (r["crf_ms"]["p50"] if r["crf"] != "none" else 0)
            assert r["latency_ms"] == pytest.approx(expect)
        else:
            assert r["backend"] == "qdq-int8" and not r["pareto"]
    # --calib-on-eval: the 2 calibration images are the 2 evaluated ones, and the document says so
    cal = doc["artifacts"]["calibration"]
    assert cal["overlap_images"] == 2 and cal["held_out"] is False and "not held out" in cal["note"]
    # the Pareto flags are the front of the measured rows
    speed = [r for r in doc["rows"] if r["latency_is_speed"]]
    assert [r["pareto"] for r in speed] == pareto_front([(r["latency_ms"], r["miou"]) for r in speed])


def test_bench_miou_matches_eval(bench_run, shared):
    """The bench's cells against `deeplab-edge eval` (a separate path: Segmenter + CRFStage)."""
    _, doc, ckpt = bench_run
    by = {(r["backend"], r["crf"]): r for r in doc["rows"] if r["output"] == "logits"}
    for crf in ("none", "torch"):
        res = CliRunner().invoke(main, ["eval", "--weights", str(ckpt), "--data", str(shared["voc"]),
                                        "--num-images", "2", "--device", "cpu", "--crf", crf, "--json"])
        assert res.exit_code == 0, res.output
        ev = json.loads(res.stdout)
        assert by[("torch-fp32", crf)]["miou"] == pytest.approx(ev["miou"], abs=1e-9)
        assert by[("torch-fp32", crf)]["class_iou"] == dict(zip(ev["classes"], ev["class_iou"]))
    # LiteRT and the emulated QDQ model through `eval` (Segmenter + evaluate, not the bench's loop): the same mIoU
    for backend, flag, path in (("litert-int8", "--tflite", shared["tflite"]),
                                ("qdq-int8", "--onnx", doc["artifacts"]["calibration"]["qdq_onnx"])):
        res = CliRunner().invoke(main, ["eval", flag, str(path), "--data", str(shared["voc"]), "--num-images", "2",
                                        "--json"])
        assert res.exit_code == 0, res.output
        assert by[(backend, "none")]["miou"] == pytest.approx(json.loads(res.stdout)["miou"], abs=1e-9), backend
    # ONNX Runtime runs the same network: same mIoU to a hair; the emulated INT8 model within 2 points
    assert by[("ort-fp32", "none")]["miou"] == pytest.approx(by[("torch-fp32", "none")]["miou"], abs=2e-3)
    assert abs(by[("qdq-int8", "none")]["miou_delta_points"]) < 2.0
    # the CRF raises mIoU on these images, in every backend
    for b in ("torch-fp32", "ort-fp32"):
        assert by[(b, "torch")]["miou"] > by[(b, "none")]["miou"]


def test_bench_label_models_hand_the_host_labels(bench_run, shared):
    """--emit logits,labels: each ONNX backend's label model, run here by ONNX Runtime alone, returns exactly
    NumPy's arg-max of its logit model's output (first maximum on ties, as both take), so its row scores the same
    mIoU; each row's output bytes are what ONNX Runtime hands back per frame (uint8 labels against float32
    logits), and the host's post-processing time is recorded beside it."""
    import onnxruntime as ort

    from deeplab_edge.data.datasets import open_dataset
    from deeplab_edge.runtime import open_runner

    _, doc, _ = bench_run
    by = {(r["backend"], r["output"], r["crf"]): r for r in doc["rows"]}
    art = doc["artifacts"]
    assert art["labels"]["dtype"] == "uint8"
    voc = open_dataset(shared["voc"]).subset(2)
    for backend, logit_file in (("ort-fp32", art["onnx_fp32"]["path"]), ("qdq-int8", art["calibration"]["qdq_onnx"])):
        label_file = art["labels"]["models"][logit_file]
        lab, log = by[(backend, "labels", "none")], by[(backend, "logits", "none")]
        assert lab["file"] == label_file and log["file"] == logit_file
        pre = open_runner(logit_file, backend="onnxruntime").preprocess
        opt = ort.GraphOptimizationLevel.ORT_ENABLE_ALL if backend == "ort-fp32" else \
            ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        so = ort.SessionOptions()
        so.graph_optimization_level = opt
        s_log, s_lab = (ort.InferenceSession(f, so, providers=["CPUExecutionProvider"]) for f in (logit_file, label_file))
        for i in range(len(voc)):
            x = pre(voc.load(i)[1])[0][None].numpy()
            logits = s_log.run(None, {s_log.get_inputs()[0].name: x})[0]
            labels = s_lab.run(None, {s_lab.get_inputs()[0].name: x})[0]
            assert labels.dtype == np.uint8 and labels.shape == (1, *logits.shape[2:])
            np.testing.assert_array_equal(labels[0], logits[0].argmax(0))
            assert lab["output_bytes_per_frame"] == labels[0].nbytes and log["output_bytes_per_frame"] == logits[0].nbytes
        assert lab["miou"] == log["miou"] and lab["class_iou"] == log["class_iou"]
        assert log["output_bytes_per_frame"] == 21 * 4 * lab["output_bytes_per_frame"]
        assert lab["host_postprocess_ms"] > 0 and log["host_postprocess_ms"] > 0
    assert all(r["host_postprocess_ms"] is None for r in doc["rows"] if r["crf"] != "none")


def test_bench_with_only_a_crf_runs_and_scores_as_eval(bench_run, shared, tmp_path):
    """--crf torch without none: the logit model's one row is the CRF's, its mIoU eval's --crf torch (it was
    refused by a check meant for label models)."""
    _, _, ckpt = bench_run
    res = CliRunner().invoke(main, ["bench", "--weights", str(ckpt), "--data", str(shared["voc"]), "--num-images", "1",
                                    "--backends", "torch-fp32", "--crf", "torch", "--iters", "1", "--warmup", "0",
                                    "--threads", "1", "--tag", "c", "-o", str(tmp_path), "--no-plot"])
    assert res.exit_code == 0, res.output
    rows = json.loads((tmp_path / "bench_c.json").read_text())["rows"]
    assert [(r["backend"], r["crf"]) for r in rows] == [("torch-fp32", "torch")]
    res = CliRunner().invoke(main, ["eval", "--weights", str(ckpt), "--data", str(shared["voc"]), "--num-images", "1",
                                    "--device", "cpu", "--crf", "torch", "--json"])
    assert res.exit_code == 0, res.output
    assert rows[0]["miou"] == pytest.approx(json.loads(res.stdout)["miou"], abs=1e-9)


def test_bench_compare_merges_two_machines(bench_run, shared, tmp_path):
    out, doc, ckpt = bench_run
    res = CliRunner().invoke(main, ["bench", "--weights", str(ckpt), "--data", str(shared["voc"]), "--num-images", "2",
                                    "--backends", "torch-fp32", "--crf", "none", "--iters", "2", "--warmup", "0",
                                    "--threads", "1", "--tag", "b", "-o", str(tmp_path), "--no-plot"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "bench_b.json").is_file() and not (tmp_path / "bench_b.png").exists()
    res = CliRunner().invoke(main, ["bench", "compare", str(out / "bench_a.json"), str(tmp_path / "bench_b.json"),
                                    "-o", str(tmp_path / "merged"), "--json"])
    assert res.exit_code == 0, res.output
    merged = json.loads(res.stdout)
    b = json.loads((tmp_path / "bench_b.json").read_text())
    assert len(merged["rows"]) == len(doc["rows"]) + len(b["rows"]) == 11  # 4 backends x 2 CRF + 2 label rows + 1
    assert len({r["device"] for r in merged["rows"]}) == 2  # same CPU twice: told apart by file name
    assert merged["same_data"]
    speed = [r for r in merged["rows"] if r["latency_is_speed"]]
    assert [r["pareto"] for r in speed] == pareto_front([(r["latency_ms"], r["miou"]) for r in speed])
    assert (tmp_path / "merged" / "bench_compare.png").is_file()
    assert merge([("x.json", doc)])["rows"][0]["device"]


def test_bench_bad_input(tmp_path, imported, shared):
    r = CliRunner().invoke(main, ["bench", "--data", str(shared["voc"])])
    assert r.exit_code == 2 and "--weights" in r.output
    r = CliRunner().invoke(main, ["bench", "--weights", str(imported[0]), "--data", str(shared["voc"]),
                                  "--backends", "torch-fp32,tflite"])
    assert r.exit_code == 2 and "unknown backend tflite" in r.output
    r = CliRunner().invoke(main, ["bench", "--weights", str(imported[0]), "--data", str(shared["voc"]),
                                  "--engine", "model.engine"])
    assert r.exit_code == 2 and "PRECISION=FILE" in r.output
    bogus = tmp_path / "x.json"
    bogus.write_text(json.dumps({"rows": []}))
    r = CliRunner().invoke(main, ["bench", "compare", str(bogus), str(tmp_path / "missing.json")])
    assert r.exit_code == 2 and "not a `deeplab-edge bench` result" in r.output
    assert "Traceback" not in r.output


def test_bench_kernels_is_the_kernel_benchmark():
    r = CliRunner().invoke(main, ["bench", "kernels", "--no-compile-check", "--shape", "v3-mobilenetv2-os16",
                                  "--batch", "1", "--dtype", "fp16", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["analytic"][0]["shape"] == "v3-mobilenetv2-os16"


def test_run_bench_returns_the_document_load_result_reads(shared, imported, tmp_path):
    """A Python caller of run_bench + write_results gets the file `bench compare` reads (the CLI adds nothing)."""
    from deeplab_edge.bench.harness import run_bench
    from deeplab_edge.bench.report import load_result, write_results
    from deeplab_edge.data import open_dataset

    run, skipped = select_backends("torch-fp32,trt-int8", torch.device("cpu"))
    doc = run_bench(imported[0], open_dataset(shared["voc"]).subset(1), backends=run, crf_methods=["none"],
                    warmup=0, iters=1, device="cpu", work=tmp_path / "work", skipped=skipped)
    files = write_results(doc, tmp_path / "out", "py", png=False)
    back = load_result(files["json"])
    assert back["rows"] == json.loads(json.dumps(doc["rows"], default=str)) and back["images"] == 1
    assert back["environment"]["cpu"] and [s["backend"] for s in back["skipped"]] == ["trt-int8"]


def test_timing_discipline_one_backend_at_a_time(shared, imported, tmp_path, monkeypatch):
    """The harness's timing discipline, checked by structure, not by timing: each backend's timed calls start
    only after its warm-up calls, with that backend's runner the only one alive (the previous backend's ONNX
    Runtime session, which would spin its threads after each call, and the accuracy pass's runners released);
    a runner the caller holds is seen and said in the row and the log."""
    from deeplab_edge.bench import harness, stats
    from deeplab_edge.data import open_dataset
    from deeplab_edge.runtime import live_runners, open_runner

    events: list[tuple[str, ...]] = []
    real_time_calls, real_clock = harness.time_calls, stats.time.perf_counter

    class _Clock:  # stats.time with perf_counter reads recorded (the only clock time_calls reads on a CPU)
        def __getattr__(self, name):
            return getattr(stats.__dict__["_real_time"], name)

        def perf_counter(self):
            events.append(("clock",))
            return real_clock()

    def recording_time_calls(fn, warmup, iters, **kw):
        alive = live_runners()
        events.append(("start", ",".join(sorted(type(r).__name__ for r in alive)), str(warmup)))

        def call():
            events.append(("call",))
            return fn()
        out = real_time_calls(call, warmup, iters, **kw)
        events.append(("end",))
        return out

    monkeypatch.setitem(stats.__dict__, "_real_time", stats.time)
    monkeypatch.setattr(stats, "time", _Clock())
    monkeypatch.setattr(harness, "time_calls", recording_time_calls)
    run, _ = select_backends("torch-fp32,ort-fp32,ort-int8", torch.device("cpu"))
    voc = open_dataset(shared["voc"])
    doc = harness.run_bench(imported[0], voc.subset(2), backends=run, crf_methods=["none"], warmup=2, iters=3,
                            device="cpu", work=tmp_path / "work", calib_on_eval=True, calib_num=2,
                            calib_method="minmax")
    starts = [i for i, e in enumerate(events) if e[0] == "start"]
    assert len(starts) == 3 and [r["backend"] for r in doc["rows"]] == ["torch-fp32", "ort-fp32", "ort-int8"]
    for k, i in enumerate(starts):
        end = events.index(("end",), i)
        assert all(e[0] != "start" for e in events[i + 1:end])  # one backend at a time
        _, alive, warmup = events[i]
        assert alive == ("TorchRunner" if k == 0 else "OnnxRunner") and warmup == "2"  # it alone is alive
        inner = [e[0] for e in events[i + 1:end]]
        assert inner[:2] == ["call", "call"] and inner.index("clock") == 2  # warm-up before the first clock read
        assert inner.count("call") == 5 and inner.count("clock") == 6  # 3 timed calls, a clock read either side
    for r in doc["rows"]:
        assert r["batches"][0]["other_runners_alive"] == 0 and r["batches"][0]["warmup_calls"] == 2
    # a runner the caller holds: seen, said in the row and logged
    held = open_runner(imported[0])
    logged: list[str] = []
    run, _ = select_backends("torch-fp32", torch.device("cpu"))
    doc = harness.run_bench(imported[0], voc.subset(1), backends=run, crf_methods=["none"], warmup=0, iters=1,
                            device="cpu", work=tmp_path / "work2", log=logged.append)
    assert doc["rows"][0]["batches"][0]["other_runners_alive"] == 1
    assert any("1 other runner(s) are alive (TorchRunner)" in m for m in logged), logged
    del held


def test_bench_multi_scale_cell_equals_eval(shared, imported):
    """--scales/--flip in bench: the PyTorch cell equals eval with the same options; fixed-input backends are
    skipped with the reason."""
    args = ["--data", str(shared["voc"]), "--num-images", "1", "--scales", "0.75,1", "--flip", "--json"]
    res = CliRunner().invoke(main, ["bench", "--weights", str(imported[0]), "--backends", "torch-fp32,ort-fp32",
                                    "--crf", "none", "--iters", "1", "--warmup", "0", *args])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    ev = CliRunner().invoke(main, ["eval", "--weights", str(imported[0]), "--device", "cpu", *args])
    assert ev.exit_code == 0, ev.output
    assert [r["backend"] for r in doc["rows"]] == ["torch-fp32"]
    assert doc["rows"][0]["miou"] == pytest.approx(json.loads(ev.stdout)["miou"], abs=1e-9)
    assert doc["settings"]["scales"] == [0.75, 1.0] and doc["settings"]["flip"] is True
    assert "fixed input" in {s["backend"]: s["reason"] for s in doc["skipped"]}["ort-fp32"]


def test_shared_images_are_found_by_content(tmp_path, shared):
    """Calibration and evaluation sets are compared by bytes: a renamed copy is the same image,
    two different images are not."""
    from deeplab_edge.data.overlap import shared_images

    voc = sorted((shared["voc"]).rglob("*.jpg")) or sorted((shared["voc"]).rglob("JPEGImages/*"))
    a, b, c = voc[:3]
    copy = tmp_path / "renamed.bin"
    copy.write_bytes(a.read_bytes())
    assert shared_images([a, b], [copy, c]) == [(a, copy)]
    assert shared_images([b], [c]) == []


def test_bench_exports_a_checkpoint_without_fixed_size_with_dynamic_hw(shared, tmp_path):
    """The CamVid model runs at each frame's own size: its ONNX export for the ONNX Runtime
    backend has dynamic H and W, and ONNX Runtime then agrees with PyTorch on a real frame."""
    weights = Path(__file__).parents[1] / "weights" / "deeplabv3_mnv2_camvid.pt"
    res = CliRunner().invoke(main, ["bench", "--weights", str(weights), "--data", str(shared["camvid"]),
                                    "--num-images", "1", "--backends", "torch-fp32,ort-fp32", "--crf", "none",
                                    "--iters", "1", "--warmup", "0", "--artifacts", str(tmp_path / "art"), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    import onnx

    dims = onnx.load(str(tmp_path / "art" / "model_fp32.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param != "" for d in dims[2:]] == [True, True]
    miou = {r["backend"]: r["miou"] for r in doc["rows"]}
    assert miou["ort-fp32"] == pytest.approx(miou["torch-fp32"], abs=2e-3)


def test_calibration_is_held_out_by_default(shared, tmp_path):
    """Without --calib-data: the dataset's train split when it has one (SegNet's CamVid layout: train/, trainannot/,
    val/, valannot/),
    else folds of the benchmark's own images (the 9 VOC samples: val only); no image is both calibrated on and
    scored, and the folds score every image once."""
    from deeplab_edge.bench.harness import plan_calibration
    from deeplab_edge.data.datasets import open_dataset
    from deeplab_edge.errors import DeepLabEdgeError

    voc = open_dataset(shared["voc"])
    plan = plan_calibration(voc, folds=3)
    assert plan.how == "folds" and len(plan.sources) == 3 and sorted(i for s in plan.scored for i in s) == list(
        range(len(voc)))
    for source, scored in zip(plan.sources, plan.scored):
        assert not {s.image for s in source.samples} & {voc.samples[i].image for i in scored}
        assert len(source) + len(scored) == len(voc)
    root = tmp_path / "camvid"
    for split, src in (("train", shared["camvid"].parent / "camvid_train"), ("val", shared["camvid"])):
        (root / split).mkdir(parents=True)
        (root / f"{split}annot").mkdir()
        for p in sorted((src / "images").iterdir())[:2]:
            Image.open(p).convert("RGB").resize((48, 36)).save(root / split / f"{p.stem}.png")
            Image.open(src / "labels" / f"{p.stem}.png").resize((48, 36), Image.NEAREST).save(
                root / f"{split}annot" / f"{p.stem}.png")
    val = open_dataset(root, split="val")
    plan = plan_calibration(val)
    assert plan.how == "train-split" and [s.image.parent.name for s in plan.sources[0].samples] == ["train"] * 2
    assert plan_calibration(val, on_eval=True).how == "eval-images"
    assert plan_calibration(val, calib_data=root / "train").how == "given"
    with pytest.raises(DeepLabEdgeError, match="--calib-data"):
        plan_calibration(voc.take([0]))


def test_bench_int8_by_folds_pools_what_each_fold_model_scores(shared, imported, tmp_path):
    """The INT8 rows of a bench without --calib-data on 4 VOC images (2 folds): each fold's models, run here
    through ONNX Runtime on that fold's images only, pooled into one confusion matrix, give the row's mIoU."""
    from deeplab_edge.data.datasets import open_dataset
    from deeplab_edge.inference import Segmenter
    from deeplab_edge.metrics import ConfusionMatrix
    from deeplab_edge.runtime import open_runner

    res = CliRunner().invoke(main, ["bench", "--weights", str(imported[0]), "--data", str(shared["voc"]),
                                    "--num-images", "4", "--backends", "ort-int8,qdq-int8", "--crf", "none",
                                    "--calib-folds", "2", "--calib-method", "minmax", "--iters", "1", "--warmup", "0",
                                    "--emit", "logits,labels", "--artifacts", str(tmp_path / "art"), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    cal = doc["artifacts"]["calibration"]
    assert cal["how"] == "folds" and cal["held_out"] and cal["overlap_images"] == 0 and len(cal["folds"]) == 2
    assert doc["settings"]["calibration"] == "folds"
    voc = open_dataset(shared["voc"]).subset(4)
    assert len(doc["rows"]) == 4  # ort-int8 and qdq-int8, each with logits and with labels
    for row in doc["rows"]:
        key = "cpu_int8_onnx" if row["backend"] == "ort-int8" else "qdq_onnx"
        cm = ConfusionMatrix(21)
        for fold in cal["folds"]:  # a label row's folds run their own label models: the same mIoU as the logits
            seg = Segmenter(open_runner(fold[key], backend="onnxruntime"))
            for i in fold["scored"]:
                _, image, label = voc.load(i)
                cm.update(np.asarray(seg.predict(image)), label)
        assert row["miou"] == pytest.approx(cm.compute()["miou"], abs=1e-9), row["backend"]


# ----------------------------------------------------------------------------- several models in one verdict

@pytest.fixture(scope="module")
def two_models(imported, tmp_path_factory):
    """The imported VOC model and a LargeFOV head on its trunk (seeded head: its mIoU is low, its format real)."""
    from deeplab_edge.checkpoint import save_checkpoint
    from deeplab_edge.models import with_trunk

    _, model, meta = imported
    torch.manual_seed(0)
    lfov = with_trunk(model, "deeplab_largefov_mobilenet_v2", 21).eval()
    path = tmp_path_factory.mktemp("zoo") / "largefov.pt"
    save_checkpoint(lfov, dict(meta), path)
    return imported[0], path


def test_bench_several_models_one_document(shared, two_models, tmp_path):
    """bench --weights A --weights B with two --scales settings: one JSON/CSV/PNG; every row names its model and
    setting and equals `eval` of that model with those options (a separate path); the mIoU change is against the
    first row; GFLOPs match PyTorch's own FLOP counter; `bench compare` reads the file."""
    from torch.utils.flop_counter import FlopCounterMode

    from deeplab_edge.checkpoint import load_checkpoint

    a, b = two_models
    res = CliRunner().invoke(main, ["bench", "--weights", str(a), "--weights", str(b), "--data", str(shared["voc"]),
                                    "--num-images", "1", "--backends", "torch-fp32", "--crf", "none", "--iters", "1",
                                    "--warmup", "0", "--scales", "1", "--scales", "0.75,1+flip", "--tag", "zoo",
                                    "-o", str(tmp_path), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    cells = [(r["model"], r["variant"]) for r in doc["rows"]]
    assert sorted(cells) == sorted([("mnv2_voc", "OS16"), ("mnv2_voc", "OS16 MSC 0.75-1 +flip"),
                                    ("largefov", "OS16"), ("largefov", "OS16 MSC 0.75-1 +flip")])
    assert [m["name"] for m in doc["models"]] == ["mnv2_voc", "largefov"] and len(doc["runs"]) == 4
    for r in doc["rows"]:
        path = a if r["model"] == "mnv2_voc" else b
        extra = ["--scales", "0.75,1", "--flip"] if "MSC" in r["variant"] else []
        ev = CliRunner().invoke(main, ["eval", "--weights", str(path), "--device", "cpu", "--data", str(shared["voc"]),
                                       "--num-images", "1", "--json", *extra])
        assert ev.exit_code == 0, ev.output
        assert r["miou"] == pytest.approx(json.loads(ev.stdout)["miou"], abs=1e-9), r["model"]
    first = next(r for r in doc["rows"] if (r["model"], r["variant"]) == ("mnv2_voc", "OS16"))
    assert (doc["baseline"]["model"], doc["baseline"]["variant"]) == ("mnv2_voc", "OS16")
    for r in doc["rows"]:
        assert r["miou_delta_points"] == pytest.approx(100 * (r["miou"] - first["miou"]))
        assert r["speedup"] == pytest.approx(first["latency_ms"] / r["latency_ms"])
    assert [r["pareto"] for r in doc["rows"]] == pareto_front([(r["latency_ms"], r["miou"]) for r in doc["rows"]])
    for m in doc["models"]:
        net = load_checkpoint(m["file"]).model
        h, w = m["input_size"]
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            net(torch.zeros(1, 3, h, w))
        convs = sum(v for k, v in fc.get_flop_counts()["Global"].items() if "convolution" in str(k))
        assert m["gflops"] == pytest.approx(convs / 1e9, rel=1e-6)
        assert m["params"] == sum(p.numel() for p in net.parameters())
    assert {m["arch"] for m in doc["models"]} == {"deeplabv3_mobilenet_v2", "deeplab_largefov_mobilenet_v2"}
    rows = list(csv.DictReader(io.StringIO((tmp_path / "bench_zoo.csv").read_text())))
    assert [(c["model"], c["variant"]) for c in rows] == cells
    assert {c["arch"] for c in rows} == {m["arch"] for m in doc["models"]}
    with Image.open(tmp_path / "bench_zoo.png") as im:
        assert im.format == "PNG"
    res = CliRunner().invoke(main, ["bench", "compare", str(tmp_path / "bench_zoo.json"), "--json"])
    assert res.exit_code == 0, res.output
    assert len(json.loads(res.stdout)["rows"]) == 4


def test_model_files_folder_twice_missing(tmp_path):
    from deeplab_edge.bench.matrix import model_files

    (tmp_path / "z").mkdir()
    for n in ("b.pt", "a.pth", "notes.txt"):
        (tmp_path / "z" / n).write_bytes(b"x")
    assert [p.name for p in model_files([tmp_path / "z"])] == ["a.pth", "b.pt"]
    with pytest.raises(DeepLabEdgeError, match="given twice"):
        model_files([tmp_path / "z", tmp_path / "z" / "b.pt"])
    with pytest.raises(DeepLabEdgeError, match="not found"):
        model_files([tmp_path / "nope.pt"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DeepLabEdgeError, match="no .pt/.pth"):
        model_files([tmp_path / "empty"])


def test_seed_claims_are_differences_of_measured_cells():
    """The claims table from a several-model result: each number is the difference of two cells of the
    document (hand-computed here), models found by architecture and rates, a missing model reported missing."""
    from deeplab_edge.bench.claims import claims_markdown, seed_claims

    def row(model, miou, backend="torch-fp32", crf="none", scales=(1.0,), flip=False):
        return {"model": model, "backend": backend, "crf": crf, "miou": miou, "scales": list(scales), "flip": flip,
                "latency_ms": 10.0, "class_iou": {"pole": miou / 10}, "crf_params": {"w1": 5.0} if crf != "none"
                else None}

    models = [{"name": "lfov", "arch": "deeplab_largefov_mobilenet_v2", "aspp_rates": [12], "params": 2.2e6,
               "gflops": 3.1},
              {"name": "aspp", "arch": "deeplabv2_mobilenet_v2", "aspp_rates": [6, 12, 18, 24], "params": 2.3e6,
               "gflops": 3.2},
              {"name": "plain", "arch": "deeplabv3_mobilenet_v2", "aspp_rates": [], "params": 2.1e6, "gflops": 2.9}]
    rows = [row("lfov", 0.60), row("lfov", 0.62, crf="torch"), row("lfov", 0.63, scales=(0.5, 1.0), flip=True),
            row("aspp", 0.615), row("aspp", 0.60, backend="ort-int8"), row("plain", 0.70),
            row("plain", 0.69, backend="qdq-int8")]
    c = seed_claims({"rows": rows, "models": models, "data": "d", "images": 3})
    assert c["claims"]["aspp_l_over_largefov"]["change_points"] == pytest.approx(1.5)
    assert c["claims"]["rates_over_rateless"]["change_points"] is None
    assert c["claims"]["rates_over_rateless"]["missing"] == ["v3_rates"]
    lf, ap, pl = c["models"]["largefov"], c["models"]["aspp_l"], c["models"]["v3_rateless"]
    assert lf["crf_gain_points"] == pytest.approx(2.0) and lf["msc_flip_gain_points"] == pytest.approx(3.0)
    assert lf["crf_params"] == {"w1": 5.0} and lf["pole_iou"] == pytest.approx(0.06)
    assert ap["crf_gain_points"] is None and ap["ort-int8_change_points"] == pytest.approx(-1.5)
    assert pl["qdq-int8_change_points"] == pytest.approx(-1.0) and pl["ort-int8_change_points"] is None
    md = claims_markdown(c)
    assert "+1.50 points" in md and "missing: v3_rates" in md and md.count("\n| DeepLab") == 3


def test_several_models_cross_strides_and_take_each_models_crf_params(shared, two_models, tmp_path):
    """Two models x output strides 16 and 8, CRF with one --crf-params file per model: every (model, stride)
    has its rows, each model's CRF rows carry its own file's parameters, and a CRF cell equals `eval` with that
    model, stride and file (a separate path)."""
    a, b = two_models
    pa, pb = tmp_path / "a.json", tmp_path / "b.json"
    pa.write_text(json.dumps({"w1": 3.0, "theta_alpha": 30.0}))
    pb.write_text(json.dumps({"w1": 5.0, "theta_alpha": 90.0}))
    res = CliRunner().invoke(main, ["bench", "--weights", str(a), "--weights", str(b), "--crf-params", str(pa),
                                    "--crf-params", str(pb), "--data", str(shared["voc"]), "--num-images", "1",
                                    "--backends", "torch-fp32", "--crf", "none,torch", "--iters", "1", "--warmup", "0",
                                    "--output-stride", "16", "--output-stride", "8", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    cells = {(r["model"], r["output_stride"], r["crf"]): r for r in doc["rows"]}
    assert set(cells) == {(m, s, c) for m in ("mnv2_voc", "largefov") for s in (16, 8) for c in ("none", "torch")}
    assert {(m["name"], m["output_stride"]) for m in doc["models"]} == {(m, s) for m in ("mnv2_voc", "largefov")
                                                                        for s in (16, 8)}
    for s in (16, 8):
        assert cells[("mnv2_voc", s, "torch")]["crf_params"]["w1"] == 3.0
        assert cells[("largefov", s, "torch")]["crf_params"]["theta_alpha"] == 90.0
    ev = CliRunner().invoke(main, ["eval", "--weights", str(b), "--device", "cpu", "--data", str(shared["voc"]),
                                   "--num-images", "1", "--output-stride", "8", "--crf", "torch", "--crf-params",
                                   str(pb), "--json"])
    assert ev.exit_code == 0, ev.output
    assert cells[("largefov", 8, "torch")]["miou"] == pytest.approx(json.loads(ev.stdout)["miou"], abs=1e-9)


def test_bench_weight_bits_7_makes_the_qdq_model_it_scores(shared, imported, tmp_path):
    """bench --weight-bits 7: the QDQ model the INT8 rows run has int8 weights within +-63 (read from the file), the
    settings say so, and its row scores what `eval --onnx` scores on that file."""
    import onnx
    from onnx import numpy_helper

    res = CliRunner().invoke(main, ["bench", "--weights", str(imported[0]), "--data", str(shared["voc"]),
                                    "--num-images", "1", "--backends", "qdq-int8", "--crf", "none", "--calib-on-eval",
                                    "--calib-num", "1", "--calib-method", "minmax", "--weight-bits", "7", "--iters", "1",
                                    "--warmup", "0", "--artifacts", str(tmp_path / "art"), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["settings"]["calib_weight_bits"] == 7 and doc["artifacts"]["calibration"]["weight_bits"] == 7
    row = doc["rows"][0]
    q = onnx.load(row["file"])
    peaks = [int(np.abs(numpy_helper.to_array(t).astype(np.int32)).max()) for t in q.graph.initializer
             if t.name.endswith("_int8")]
    assert peaks and max(peaks) == 63
    ev = CliRunner().invoke(main, ["eval", "--onnx", row["file"], "--data", str(shared["voc"]), "--num-images", "1",
                                   "--json"])
    assert ev.exit_code == 0, ev.output
    assert row["miou"] == pytest.approx(json.loads(ev.stdout)["miou"], abs=1e-9)


def test_bench_openvino_rows_are_real_int8_and_match_eval(shared, imported, tmp_path):
    """ov-fp32 / ov-bf16 / ov-int8 beside ONNX Runtime on 2 VOC crops: OpenVINO FP32 scores what ONNX Runtime
    scores; ov-int8 runs the very QDQ model qdq-int8 emulates, with int8 nodes in its runtime graph, and its row
    equals `eval --onnx QDQ --backend openvino`; ov-bf16 runs where the CPU has native bf16 and is skipped with the
    reason elsewhere (either way, by this CPU's flags). Its pixel agreement with the emulated QDQ model and with
    the first row is what OpenVINO and ONNX Runtime, run here on the same file and crops, agree on; where 8-bit
    weights can saturate on this CPU (x86 without VNNI) the row says so."""
    pytest.importorskip("openvino")
    from deeplab_edge.data import open_dataset
    from deeplab_edge.hostinfo import cpu_flags, int8_saturates
    from deeplab_edge.inference import Segmenter
    from deeplab_edge.runtime import open_runner

    res = CliRunner().invoke(main, ["bench", "--weights", str(imported[0]), "--data", str(shared["voc"]),
                                    "--num-images", "2", "--backends", "ort-fp32,qdq-int8,ov-fp32,ov-bf16,ov-int8",
                                    "--crf", "none", "--calib-on-eval", "--calib-num", "2", "--calib-method", "minmax",
                                    "--iters", "2", "--warmup", "1", "--threads", "2",
                                    "--artifacts", str(tmp_path / "art"), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    by = {r["backend"]: r for r in doc["rows"]}
    assert by["ov-fp32"]["miou"] == pytest.approx(by["ort-fp32"]["miou"], abs=2e-3)
    assert set(by["ov-fp32"]["runtime_precisions"]) == {"f32"}
    ov8 = by["ov-int8"]
    assert ov8["latency_is_speed"] and ov8["latency_ms"] > 0 and ov8["file"] == doc["artifacts"]["calibration"]["qdq_onnx"]
    assert ov8["runtime_precisions"].get("i8", 0) + ov8["runtime_precisions"].get("u8", 0) > 0
    ev = CliRunner().invoke(main, ["eval", "--onnx", ov8["file"], "--backend", "openvino", "--data", str(shared["voc"]),
                                   "--num-images", "2", "--json"])
    assert ev.exit_code == 0, ev.output
    assert ov8["miou"] == pytest.approx(json.loads(ev.stdout)["miou"], abs=1e-9)
    assert (ov8["int8_saturation"] is not None) == int8_saturates()
    assert by["ov-fp32"].get("int8_saturation") is None  # an FP32 model is never at risk, whatever the CPU
    voc = open_dataset(shared["voc"]).subset(2)
    images = [voc.load(i)[1] for i in range(2)]
    segs = {name: Segmenter(open_runner(path, backend=be, threads=2)) for name, path, be in (  # the bench's threads
        ("ov", ov8["file"], "openvino"), ("qdq", ov8["file"], "onnxruntime"),
        ("fp32", by["ort-fp32"]["file"], "onnxruntime"))}
    preds = {n: [np.asarray(s.predict(im)) for im in images] for n, s in segs.items()}

    def agree(a, b):
        return sum(int((x == y).sum()) for x, y in zip(preds[a], preds[b])) / sum(x.size for x in preds[a])
    assert ov8["pixel_agreement"] == pytest.approx({"ort-fp32": agree("ov", "fp32"), "qdq-int8": agree("ov", "qdq")},
                                                   abs=1e-12)
    assert by["qdq-int8"]["pixel_agreement"] == pytest.approx({"ort-fp32": agree("qdq", "fp32")}, abs=1e-12)
    assert by["ort-fp32"]["pixel_agreement"] == {}  # the baseline row
    assert {r["pixel_agreement_baseline"] for r in doc["rows"]} == {"ort-fp32"}
    assert not (tmp_path / "art" / "predictions").exists()  # the saved label maps removed after the run
    if {"avx512_bf16", "amx_bf16"} & cpu_flags():
        assert "bf16" in by["ov-bf16"]["runtime_precisions"]
    else:
        assert "ov-bf16" not in by and any(s["backend"] == "ov-bf16" and "bf16" in s["reason"] for s in doc["skipped"])
