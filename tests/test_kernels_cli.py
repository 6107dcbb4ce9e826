"""Kernel compilation for real GPUs (no GPU needed), the kernel benchmark's exact counts, and --backend triton."""

import json

import pytest
import torch
from click.testing import CliRunner

from deeplab_edge.cli import main
from deeplab_edge.kernels.compile import ARCHS, occupancy


def test_occupancy_model_hand_computed():
    h100, orin = ARCHS[90], ARCHS[87]
    # 128 regs x 32 threads = 4096 per warp; 65536 / 4096 = 16 warps -> 2 blocks of 8 warps = 16 / 64 warps.
    assert occupancy(h100, 128, 32 * 1024, 8) == {"blocks_per_sm": 2, "occupancy": 0.25, "limited_by": "registers"}
    # 64 regs: 32 warps by registers -> 8 blocks of 4; shared: 228 KB / (48 KB + 1 KB) = 4 blocks -> 16 / 64.
    assert occupancy(h100, 64, 48 * 1024, 4) == {"blocks_per_sm": 4, "occupancy": 0.25,
                                                 "limited_by": "shared memory"}
    # 40 regs round up to 1280 per warp (units of 256): 51 warps -> 12 blocks of 4; Orin's 48 warps -> 12 blocks.
    r = occupancy(orin, 40, 0, 4)
    assert r["blocks_per_sm"] == 12 and r["occupancy"] == 1.0


@pytest.mark.slow
def test_every_kernel_config_compiles_for_every_gpu_without_unexplained_spills(tmp_path):
    """Every config for sm_75, 80, 86, 87, 89, 90 and 120: Orin and H100 without any spill; elsewhere a config
    that spills carries the reason its compiled code gives. Runs in a child process without TRITON_INTERPRET:
    with it set at import, Triton's own library functions are interpreted ones and nothing can be compiled
    (checked below)."""
    import os
    import subprocess
    import sys

    out = tmp_path / "compile.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton-cache")  # compile for real, not from an earlier run's cache
    proc = subprocess.run([sys.executable, "-c", "from deeplab_edge.cli import main; main()", "kernels", "compile",
                           "-o", str(out)], env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    res = CliRunner().invoke(main, ["kernels", "compile", "--arch", "90", "--dtype", "fp16"])
    assert res.exit_code == 2 and "env -u TRITON_INTERPRET" in res.output
    rows = json.loads(out.read_text())["results"]
    from deeplab_edge.kernels import crf_lattice as lattice, crf_window as crf
    from deeplab_edge.kernels.aspp import autotune_configs

    aspp = [r for r in rows if r["kernel"].startswith("aspp.")]
    crf_rows = [r for r in rows if r["kernel"].startswith("crf.")]
    # every config of each (dtype class, width) for each dtype and arch: 7 archs x 3 dtypes x both variants
    n_archs = len(ARCHS)
    per_dtype = len(autotune_configs("fp16", 256)) + len(autotune_configs("fp16", 21))
    assert len(aspp) == n_archs * (2 * per_dtype + len(autotune_configs("fp32", 256))
                                   + len(autotune_configs("fp32", 21)))
    crf_configs = (len(crf.autotune_configs()) + len(crf.norm_configs()) + 3 * len(lattice.step_configs())
                   + len(lattice.blur_configs()))
    assert len(crf_rows) == n_archs * crf_configs and len(rows) == len(aspp) + len(crf_rows)
    assert {r["kernel"] for r in crf_rows} >= {"crf.lattice_step[21 labels]", "crf.lattice_blur[21 labels]",
                                               "crf.lattice_step[21 labels, separable]",
                                               "crf.spatial_rows[21 labels]"}
    assert {r["arch"] for r in rows} == {f"sm_{cc}" for cc in ARCHS} >= {"sm_75", "sm_80", "sm_86", "sm_87", "sm_89",
                                                                         "sm_90", "sm_120"}
    for r in rows:
        limit = ARCHS[int(r["arch"][3:])].smem_per_block
        assert 0 < r["registers"] <= 255 and r["shared_bytes"] <= limit and 0 < r["occupancy"] <= 1, r
        if r["arch"] in ("sm_87", "sm_90") or r["ok"]:
            assert r["ok"] and r["spill_bytes"] == 0 and r["stack_bytes"] == 0, r
        else:  # a spill elsewhere: the reason the compiled code gives
            assert r["reason"] and "spills" in r["problem"], r
    # the tensor-core finding behind the sm_75 reason is read off the PTX: the ASPP tile's dot has MMA
    # instructions on every architecture from 8.0 on
    assert all(r["mma_instructions"] > 0 for r in aspp if r["arch"] != "sm_75" and r["dtype"] != "fp32")
    assert all(r["shared_bytes"] > 0 for r in aspp)  # the pipelined GEMM tiles live in shared memory


def test_kernel_bench_counts_without_a_gpu():
    res = CliRunner().invoke(main, ["kernels", "bench", "--no-compile-check", "--batch", "2", "--dtype", "fp16",
                                    "--shape", "v2-resnet101-os8,v3-mobilenetv2-os16", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    v2, mnv2 = data["analytic"]
    # v2: four 3x3 convs 2048 -> 21 over 65 x 65, batch 2: 2 FLOPs per MAC.
    assert v2["gflops"] * 1e9 == pytest.approx(2 * 2 * 65 * 65 * 2048 * 21 * 9 * 4)
    # eager: 4 convolutions + 3 adds; fused on channels-last: one launch reading x once (fp16) plus
    # weights and output; as the runner feeds it (NCHW), one more launch copying x to channels-last.
    assert v2["eager_ops"] == ["convolution"] * 1 + ["convolution", "add"] * 3
    assert v2["fused_layout"] == "nchw" and v2["fused_launches"] == 2 and v2["fused_channels_last_launches"] == 1
    assert v2["fused_ops"] == ["copy:nchw->channels_last", "triton:aspp_sum"]
    x_mb = 2 * 2048 * 65 * 65 * 2 / 1e6
    assert x_mb < v2["fused_channels_last_mb"] < x_mb * 1.3 and v2["eager_mb"] > 4 * x_mb
    assert v2["fused_mb"] == pytest.approx(v2["fused_channels_last_mb"] + 2 * x_mb)
    # MobileNetV2 head: 1x1 conv 320 -> 256 and the 512 -> 256 projection over 33 x 33, pooling's 1x1 on a 1x1 map.
    assert mnv2["gflops"] * 1e9 == pytest.approx(2 * 2 * (33 * 33 * (320 * 256 + 512 * 256) + 320 * 256))
    assert mnv2["fused_ops"][:2] == ["copy:nchw->channels_last", "triton:aspp_branches"]
    assert mnv2["fused_ops"][-1] == "triton:projection"
    assert "cat" in mnv2["eager_ops"] and "cat" not in mnv2["fused_ops"]
    assert data["timings"] is None and "no CUDA GPU" in data["timing_skipped"]
    est = v2["estimates"]["sm_90"]
    assert est["label"].startswith("estimate")
    assert est["roofline_ms_fused"] >= est["roofline_ms_fused_channels_last"] > 0
    lat = data["crf_lattice_analytic"]
    # first softmax + splat, then per iteration one fused step and 6 blur passes, 9 zeroings of the splat buffer
    assert lat["launches"] == 1 + 10 * (1 + 6) + 9 and lat["vertices_assumed"] and lat["vertices"] == 513 * 513
    assert lat["spatial_taps"] == 81 and not lat["separable"]  # theta_gamma 1: radius 4, the 2-D window


def test_lattice_estimate_scales_with_the_lattice_size():
    """Each extra lattice vertex costs, per iteration, 21 fp32 values read (V), written and
    zeroed (S) by the step, and read + written by each of the 6 blur passes with its two
    int32 neighbour indices: 10 x (3 x 84 + 6 x (2 x 84 + 8)) bytes."""
    from deeplab_edge.bench.kernel_bench import lattice_estimate

    small, big = lattice_estimate(vertices=10_000), lattice_estimate(vertices=110_000)
    assert (big["mb"] - small["mb"]) * 1e6 == pytest.approx(100_000 * 10 * (3 * 84 + 6 * (2 * 84 + 8)))
    assert not small["vertices_assumed"] and big["estimates"]["sm_87"]["roofline_ms"] > small["estimates"]["sm_87"][
        "roofline_ms"]


def test_kernel_bench_rejects_unknown_names():
    res = CliRunner().invoke(main, ["kernels", "bench", "--shape", "v9-huge"])
    assert res.exit_code == 2 and "unknown shape v9-huge" in res.output
    res = CliRunner().invoke(main, ["kernels", "bench", "--providers", "cudnn"])
    assert res.exit_code == 2 and "unknown provider cudnn" in res.output


def test_backend_triton_needs_a_gpu_or_the_interpreter(imported, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    res = CliRunner().invoke(main, ["eval", "--weights", str(imported[0]), "--data", "nowhere", "--backend", "triton",
                                    "--device", "cpu"])
    assert res.exit_code == 2 and "need a CUDA GPU" in res.output and "Traceback" not in res.output


def test_backend_triton_refuses_onnx(tmp_path):
    res = CliRunner().invoke(main, ["eval", "--onnx", str(tmp_path / "m.onnx"), "--data", str(tmp_path),
                                    "--backend", "triton"])
    assert res.exit_code == 2 and "--backend triton runs a PyTorch checkpoint" in res.output


@pytest.mark.slow
def test_eval_backend_triton_matches_torch_on_voc(shared, imported):
    """The fused head (interpreter, CPU) gives the torch backend's mIoU on real images."""
    args = ["eval", "--weights", str(imported[0]), "--data", str(shared["voc"]), "--num-images", "3",
            "--device", "cpu", "--json"]
    ref = json.loads(CliRunner().invoke(main, args).output)
    res = CliRunner().invoke(main, args + ["--backend", "triton"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.output)
    assert got["model"]["backend"] == "triton"
    assert got["miou"] == pytest.approx(ref["miou"], abs=1e-3)


def test_timing_harness_runs_side_by_side_on_cpu():
    """The GPU benchmark's loop, exercised on the CPU with a tiny head (interpreter): rows,
    percentiles, the fused output checked against eager PyTorch. CPU times mean nothing."""
    from deeplab_edge.bench.kernel_bench import HeadShape, run

    tiny = HeadShape("tiny-v3", "v3", 24, 9, 11, (2, 4), 32)
    rows = run([tiny], [2], ["fp32"], ["torch", "triton"], warmup=1, iters=3, device="cpu")
    assert [(r["provider"], r["layout"], r["runner_layout"]) for r in rows] == [
        ("torch", "nchw", True), ("triton", "nchw", True), ("torch", "channels_last", False),
        ("triton", "channels_last", False)]
    for r in rows:
        assert r["p10_ms"] <= r["median_ms"] <= r["p90_ms"] and r["tflops"] > 0 and r["gbs"] > 0
        assert r["max_abs_diff_vs_torch"] < 1e-4
    assert rows[0]["speedup_vs_torch"] == rows[2]["speedup_vs_torch"] == 1.0 and rows[1]["speedup_vs_torch"] > 0
    with pytest.raises(ValueError, match="expected providers"):
        run([tiny], [1], ["fp32"], ["cudnn"], device="cpu")
    with pytest.raises(ValueError, match="expected layouts"):
        run([tiny], [1], ["fp32"], ["torch"], device="cpu", layouts=["nhwc"])


def test_kernel_bench_times_the_runners_module_on_the_runners_layout(monkeypatch):
    """``--backend triton`` fuses the fp32 model, casts it (TorchRunner) and feeds it the NCHW
    map: the bench times that module on that layout, and channels-last beside it (marked as not
    the runner's). The weights are already in the input's dtype (no per-call cast), and the bytes
    counted for the NCHW row include the copy to channels-last that the kernels start with."""
    from deeplab_edge.bench import kernel_bench as kb
    from deeplab_edge.kernels import aspp as A

    seen = []
    real = A.tap_conv

    def recording(x, weight, *args, **kwargs):
        seen.append((x.is_contiguous(), x.dtype, weight.dtype))
        return real(x, weight, *args, **kwargs)

    monkeypatch.setattr(A, "tap_conv", recording)
    tiny = kb.HeadShape("tiny-v3", "v3", 24, 9, 11, (2, 4), 32)
    rows = kb.run([tiny], [1], ["bf16"], ["triton"], warmup=0, iters=1, device="cpu")
    assert [(r["provider"], r["layout"], r["runner_layout"]) for r in rows] == [
        ("triton", "nchw", True), ("triton", "channels_last", False)]
    assert seen and all(x_dtype == w_dtype == torch.bfloat16 for _, x_dtype, w_dtype in seen)
    assert seen[0][0]  # the runner-layout row's first launch got the NCHW map itself
    nchw, cl = (kb.fused_traffic(tiny, 1, "bf16", layout) for layout in ("nchw", "channels_last"))
    x_bytes = 24 * 9 * 11 * 2
    assert nchw["bytes"] - cl["bytes"] == 2 * x_bytes and nchw["launches"] == cl["launches"] + 1
    assert nchw["ops"][0] == "copy:nchw->channels_last" and cl["ops"][0] == "triton:aspp_branches"
    assert rows[0]["mb"] == pytest.approx(nchw["bytes"] / 1e6) and rows[1]["mb"] == pytest.approx(cl["bytes"] / 1e6)
    assert all(r["max_abs_diff_vs_torch"] < 0.1 for r in rows)
