"""What a GPU run needs from the kernels, checked here without one (issue #18).

The compiled-GPU launch path (:func:`deeplab_edge.kernels.device.launch`: autotuned kernels inside
``torch.cuda.device``) never runs under ``TRITON_INTERPRET=1``. These tests take that path with the
autotuned kernels replaced by recorders and ``torch.cuda.device`` by a recording context: nothing
is computed, but every launch a GPU would make is seen with its autotuning key and the device
guard around it.
"""

from __future__ import annotations

import ast
import contextlib
from pathlib import Path

import numpy as np
import pytest
import torch
import triton
import triton.language as tl

from deeplab_edge.kernels import aspp, crf_lattice, crf_window, device
from deeplab_edge.kernels.device import bucket, label_pad, launch
from deeplab_edge.kernels.indexing import INT32_MAX, check_pixels, plane_offsets, row_offsets

KERNELS = Path(aspp.__file__).parent


class Launches:
    """Stands in for ``torch.cuda.device`` and for the autotuned kernels: records each launch's
    autotuning key (the values of the autotuner's ``keys``, as Triton's Autotuner builds it) and
    the device guard active around it."""

    def __init__(self):
        self.guards: list[torch.device] = []
        self.calls: list[dict] = []

    def device(self, dev):
        launches = self

        class Guard(contextlib.AbstractContextManager):
            def __enter__(self):
                launches.guards.append(torch.device(dev))

            def __exit__(self, *exc):
                launches.guards.pop()

        return Guard()

    def kernel(self, name: str, autotuned):
        keys, arg_names = list(autotuned.keys), list(autotuned.arg_names)

        class Recorder:
            def __getitem__(_, grid):
                def launch(*args, **kwargs):
                    named = {**dict(zip(arg_names, args)), **kwargs}
                    tensors = [a for a in args if isinstance(a, torch.Tensor)]
                    self.calls.append({"kernel": name, "key": tuple(named[k] for k in keys if k in named),
                                       "args": named,
                                       "guard": self.guards[-1] if self.guards else None,
                                       "devices": {t.device for t in tensors}})
                return launch

        return Recorder()


def _compiled_launches(monkeypatch) -> None:
    """:func:`launch` takes the compiled path while the CPU tensors stand in for CUDA ones (the
    kernels may run on them: :func:`check_runnable` lets them through)."""
    monkeypatch.setattr(device, "interpreting", lambda: False)
    monkeypatch.setattr(device, "triton_unavailable", lambda dev, timing=False: None)


@pytest.fixture
def launches(monkeypatch):
    rec = Launches()
    monkeypatch.setattr(torch.cuda, "device", rec.device)
    _compiled_launches(monkeypatch)
    for mod, names in ((aspp, ["_tap_conv_autotuned"]), (crf_window, ["_crf_norm_autotuned", "_crf_step_autotuned"]),
                       (crf_lattice, ["_step_autotuned", "_blur_autotuned", "_rows_autotuned"])):
        for name in names:
            monkeypatch.setattr(mod, name, rec.kernel(name, getattr(mod, name)))
    return rec


# ----------------------------------------------------------------------------- 1. autotuning keys

def test_autotuners_key_on_buckets_not_exact_sizes():
    exact = {"H", "W", "M", "L"}
    for tuner in (aspp._tap_conv_autotuned, crf_window._crf_norm_autotuned, crf_window._crf_step_autotuned,
                  crf_lattice._step_autotuned, crf_lattice._blur_autotuned, crf_lattice._rows_autotuned):
        assert not exact & set(tuner.keys), tuner.keys
    assert [bucket(n) for n in (1, 2, 3, 172800, 262144, 262145)] == [1, 2, 4, 262144, 262144, 524288]
    assert [label_pad(n) for n in (1, 2, 3, 4, 5, 11, 21, 256)] == [2, 2, 4, 4, 8, 16, 32, 256]


def _images_and_logits(root: Path, weights: Path):
    """(uint8 image, logits at the image's size) of every image of a real dataset, from a real
    model on the CPU."""
    from deeplab_edge.data.datasets import open_dataset
    from deeplab_edge.data.preprocess import Preprocess
    from deeplab_edge.inference import Segmenter
    from deeplab_edge.runtime import open_runner

    ds = open_dataset(root)
    seg = Segmenter(open_runner(weights, device="cpu"))
    for i in range(len(ds)):
        image = ds.load(i)[1]
        (logits, geom), = seg.logits_batch([image])
        yield image, Preprocess.restore_logits(logits.float(), geom)


@pytest.mark.slow
def test_a_whole_dataset_tunes_a_handful_of_keys(launches, shared, imported):
    """The lattice CRF (``--crf triton``) on every image of the shared VOC samples (the VOC model)
    and of CamVid val (the project's CamVid model), as the GPU path would launch it: each
    distinct key is one autotuning run (configs x warm-up + repetitions). Keyed on H, W, L and
    the vertex count, as before, nearly every image would tune again."""
    from deeplab_edge.crf import PRESETS, dense_crf

    camvid_weights = Path(__file__).parents[1] / "weights" / "deeplabv3_mnv2_camvid.pt"
    params = PRESETS["deeplab-v2"]
    report = {}
    for name, root, weights in (("voc", shared["voc"], imported[0]), ("camvid_val", shared["camvid"], camvid_weights)):
        first = len(launches.calls)
        exact, images = set(), 0
        for image, logits in _images_and_logits(root, weights):
            n_before = len(launches.calls)
            dense_crf(image, logits, params, method="triton", device="cpu")
            calls = launches.calls[n_before:]
            step = next(c["args"] for c in calls if c["kernel"] == "_step_autotuned")
            blur = next(c["args"] for c in calls if c["kernel"] == "_blur_autotuned")
            exact.add((step["H"], step["W"], step["L"], blur["M"]))  # what the old keys were made of
            images += 1
        calls = launches.calls[first:]
        step = {c["key"] for c in calls if c["kernel"] == "_step_autotuned"}
        blur = {c["key"] for c in calls if c["kernel"] == "_blur_autotuned"}
        label_buckets = {c["args"]["L_PAD"] for c in calls}
        report[name] = {"images": images, "exact_keys": len(exact), "step_keys": len(step), "blur_keys": len(blur),
                        "label_buckets": sorted(label_buckets)}
    print(report)
    assert report["voc"]["images"] == 9 and report["camvid_val"]["images"] == 101
    for r in report.values():
        assert r["exact_keys"] >= 0.9 * r["images"]  # exact sizes: a new tuning for nearly every image
        # bucketed: per label bucket (labels kept after pruning: at most 2, 4, 8, 16, 32) the step's
        # three variants (first, middle, last iteration) and one or two vertex-count buckets
        assert len(r["label_buckets"]) <= 5
        assert r["step_keys"] <= 3 * len(r["label_buckets"])
        assert r["blur_keys"] <= 2 * len(r["label_buckets"])


def test_window_crf_and_aspp_keys_bucket_real_sizes(launches):
    """VOC val images come in many sizes (500x375, 500x333, 375x500, 486x500...); at a given
    area bucket they share one tuning."""
    from deeplab_edge.crf import PRESETS
    from deeplab_edge.models.heads import ASPP

    params = PRESETS["deeplab-v2"]
    for h, w in ((375, 500), (333, 500), (500, 375), (500, 486), (360, 480)):
        img = torch.zeros(h, w, 3, dtype=torch.uint8)
        crf_window.crf_window(img, torch.zeros(21, h, w), params, use_triton=True)
    keys = {(c["kernel"], c["key"]) for c in launches.calls}
    # two area buckets (2^17 < 333 x 500 <= 2^18 for all five) x (norm, step)
    assert len({k for k in keys if k[0] == "_crf_step_autotuned"}) == 1
    assert len({k for k in keys if k[0] == "_crf_norm_autotuned"}) == 1

    launches.calls.clear()
    head = aspp.FusedASPP(ASPP(64, (1, 2, 3), 32).eval())
    for h, w in ((47, 63), (42, 63), (63, 47), (63, 61), (45, 60)):  # those images at output stride 8
        head(torch.randn(1, 64, h, w))
    keys = {c["key"] for c in launches.calls}
    assert len(keys) <= 2 * 2  # the branches and the projection, in at most two area buckets


# ----------------------------------------------------------------------------- 2. device guards

def test_every_gpu_launch_runs_under_its_tensors_device(launches):
    """Tensors on cuda:1 must launch on cuda:1: every launch is inside ``torch.cuda.device`` of
    the tensors it is given (recorded here with CPU tensors standing in)."""
    from deeplab_edge.crf import PRESETS, dense_crf
    from deeplab_edge.models.heads import ASPP, ASPPSum

    image = (np.arange(24 * 32 * 3) % 251).astype(np.uint8).reshape(24, 32, 3)
    for method, preset in (("triton", "deeplab-v2"), ("triton", "deeplab-v1"), ("triton-window", "deeplab-v2")):
        dense_crf(image, torch.randn(5, 24, 32), PRESETS[preset], method=method, device="cpu")
    aspp.FusedASPP(ASPP(16, (1, 2), 8).eval())(torch.randn(1, 16, 9, 9))
    aspp.FusedASPPSum(ASPPSum(16, 4, (1, 2)).eval())(torch.randn(1, 16, 9, 9))
    kernels = {c["kernel"] for c in launches.calls}
    assert kernels == {"_tap_conv_autotuned", "_crf_norm_autotuned", "_crf_step_autotuned", "_step_autotuned",
                       "_blur_autotuned", "_rows_autotuned"}
    for c in launches.calls:
        assert c["guard"] is not None, f"{c['kernel']} launched without torch.cuda.device"
        assert c["devices"] == {c["guard"]}, c


def _launch_problems(sources: dict[str, str]) -> tuple[list[str], int]:
    """(what is wrong, how many launches go through the helper) in the kernel modules' ``sources``
    (file name -> source). Launchable: a ``@triton.jit`` function or a ``triton.autotune(...)(kernel)``
    object. A launch ``k[grid](...)`` of one, by name or as ``module.k``, is wrong anywhere: it must
    be ``launch(kernel, autotuned, ...)`` (:func:`deeplab_edge.kernels.device.launch`), with a
    ``@triton.jit`` kernel and the autotuned object made from that same kernel."""
    jit: dict[str, str] = {}  # name -> file
    tuned: dict[str, str] = {}  # autotuned name -> the kernel it tunes
    trees = {name: ast.parse(src) for name, src in sources.items()}
    for name, tree in trees.items():
        for n in ast.walk(tree):
            if isinstance(n, ast.FunctionDef) and any("triton.jit" in ast.unparse(d) for d in n.decorator_list):
                jit[n.name] = name
            if (isinstance(n, ast.Assign) and isinstance(n.value, ast.Call) and "triton.autotune(" in
                    ast.unparse(n.value.func) and n.value.args and isinstance(n.value.args[0], ast.Name)):
                tuned.update({t.id: n.value.args[0].id for t in n.targets if isinstance(t, ast.Name)})
    problems, through = [], 0
    for name, tree in trees.items():
        for n in ast.walk(tree):
            if not isinstance(n, ast.Call):
                continue
            if isinstance(n.func, ast.Subscript):
                target = n.func.value
                called = target.id if isinstance(target, ast.Name) else getattr(target, "attr", None)
                if called in jit or called in tuned:
                    problems.append(f"{name}:{n.lineno}: {called} launched outside launch()")
            elif isinstance(n.func, ast.Name) and n.func.id == "launch":
                through += 1
                kernel, autotuned = (ast.unparse(a) for a in n.args[:2])
                if kernel not in jit or tuned.get(autotuned) != kernel:
                    problems.append(f"{name}:{n.lineno}: launch({kernel}, {autotuned}, ...) is not a @triton.jit "
                                    "kernel and its own autotuned object")
    return problems, through


def test_every_launch_goes_through_the_launch_helper():
    """The same rule read from the source, so a launch added later cannot skip it: every launch of
    a ``@triton.jit`` function or a ``triton.autotune(...)`` object in the kernel modules goes
    through :func:`launch`, which alone writes ``kernel[grid](...)`` (the device guard inside it
    is checked in :func:`test_the_launch_helper_guards_compiled_launches_only`)."""
    sources = {path.name: path.read_text() for path in sorted(KERNELS.glob("*.py"))}
    problems, through = _launch_problems(sources)
    assert not problems, problems
    assert through >= 6  # the 6 autotuned kernels, each with its interpreter twin

    # ... and the check fails on a launch written by hand, or on a helper given mismatched kernels
    bad = {"k.py": (
        "@triton.jit\ndef _a(x): pass\n@triton.jit\ndef _b(x): pass\n"
        "_a_tuned = triton.autotune(configs=[], key=[])(_a)\n"
        "def run(x):\n    _a_tuned[(1,)](x)\n    _a[(1,)](x)\n    mod._a[(1,)](x)\n"
        "    launch(_b, _a_tuned, grid, x.device, x, interpret={})\n")}
    problems, through = _launch_problems(bad)
    assert through == 1 and [p.split(": ", 1)[1] for p in problems] == [
        "_a_tuned launched outside launch()", "_a launched outside launch()", "_a launched outside launch()",
        "launch(_b, _a_tuned, ...) is not a @triton.jit kernel and its own autotuned object"]


def test_the_launch_helper_guards_compiled_launches_only(monkeypatch):
    """Compiled: the autotuned kernel, given the grid function, inside ``torch.cuda.device`` of the
    tensors. Interpreted: the plain kernel on the interpreter's block sizes (which override the
    constexprs they name), its grid computed from them, no guard."""
    rec = Launches()
    monkeypatch.setattr(torch.cuda, "device", rec.device)
    seen = []

    class Kernel:
        def __init__(self, name):
            self.name = name

        def __getitem__(self, grid):
            return lambda *args, **kwargs: seen.append((self.name, grid, args, kwargs,
                                                        rec.guards[-1] if rec.guards else None))

    def grid(meta):
        return (10 // meta["BLOCK"],)

    x = torch.zeros(3)
    monkeypatch.setattr(device, "interpreting", lambda: True)
    launch(Kernel("jit"), Kernel("tuned"), grid, torch.device("cuda", 1), x, 7, L_PAD=4, UPCAST=False,
           interpret={"BLOCK": 5, "UPCAST": True})
    assert seen.pop() == ("jit", (2,), (x, 7), {"L_PAD": 4, "UPCAST": True, "BLOCK": 5}, None)
    monkeypatch.setattr(device, "interpreting", lambda: False)
    launch(Kernel("jit"), Kernel("tuned"), grid, torch.device("cuda", 1), x, 7, L_PAD=4, UPCAST=False,
           interpret={"BLOCK": 5, "UPCAST": True})
    assert seen.pop() == ("tuned", grid, (x, 7), {"L_PAD": 4, "UPCAST": False}, torch.device("cuda", 1))
    assert not rec.guards  # the guard is left after the launch


# ----------------------------------------------------------------------------- 3. index width

@triton.jit
def _probe_offsets(planes_ptr, rows_ptr, row_ids_ptr, hw, width, L_PAD: tl.constexpr, N: tl.constexpr):
    tl.store(planes_ptr + tl.arange(0, L_PAD)[:, None], plane_offsets(L_PAD, hw))
    rows = tl.load(row_ids_ptr + tl.arange(0, N))
    tl.store(rows_ptr + tl.arange(0, N), row_offsets(rows, width))


def test_index_products_are_exact_past_2_31():
    """The helpers every CRF kernel uses for label planes and lattice rows, run at the boundary:
    256 labels x 8,421,505 pixels (the last plane starts past 2^31) and vertex 2^24 x 256 labels.
    In int32 both would wrap to negative offsets."""
    hw, width = 8_421_505, 256
    planes = torch.zeros(256, 1, dtype=torch.int64)
    row_ids = torch.tensor([0, 1, 2 ** 23, 2 ** 24 - 1, 2 ** 24, 2 ** 24 + 7, 2 ** 31 - 1, 12345], dtype=torch.int32)
    rows = torch.zeros(8, dtype=torch.int64)
    _probe_offsets[(1,)](planes, rows, row_ids, hw, width, L_PAD=256, N=8)
    assert planes[-1, 0].item() == 255 * hw > INT32_MAX
    assert torch.equal(planes[:, 0], torch.arange(256, dtype=torch.int64) * hw)
    assert torch.equal(rows, row_ids.to(torch.int64) * width)
    assert rows[4].item() == 2 ** 32


def test_kernels_use_the_int64_helpers():
    """No label-plane or lattice-row product is written by hand in a kernel body."""
    for path in (KERNELS / "crf_window.py", KERNELS / "crf_lattice.py"):
        src = path.read_text()
        assert "* hw" not in src.replace("k * hw", "").replace("2 * hw", ""), path.name
        assert "] * L" not in src, path.name
    assert "plane_offsets(L_PAD, hw)" in (KERNELS / "crf_window.py").read_text()
    assert (KERNELS / "crf_lattice.py").read_text().count("row_offsets(") >= 5


def test_pixel_counts_past_int32_are_refused_before_any_work():
    """Pixel indices stay int32 (3 colour planes, d + 1 = 6 corner planes): the largest image
    that fits is accepted, one pixel row more is refused with the tile size to use. Checked on
    expanded tensors (no memory behind them)."""
    side = 1 << 14
    rows_ok = INT32_MAX // (3 * side)
    check_pixels(rows_ok, side, 3, "crf_step")
    with pytest.raises(ValueError, match="pass the kernels' int32 pixel indices"):
        check_pixels(rows_ok + 1, side, 3, "crf_step")
    big = torch.zeros(1, 1, 1).expand(2, rows_ok + 1, side)
    with pytest.raises(ValueError, match="crf_step: .* split the image into tiles"):
        crf_window.crf_step(torch.zeros(1, 1, 1).expand(3, rows_ok + 1, side), big, big, big[0], big[0],
                            crf_window_params())


@pytest.mark.parametrize("order", ["fuse-then-cast", "cast-then-fuse"])
def test_a_cast_fused_head_launches_on_its_own_weights(launches, order):
    """``--backend triton`` fuses the fp32 model, then TorchRunner casts it; the kernel benchmark
    fused a head already cast. Either way every launch reads the module's weight buffers as they
    are, in the input's dtype: no per-call cast (88 MB a call for the v3 ResNet-101 head in fp16)."""
    from deeplab_edge.models.heads import ASPP, ASPPSum

    for head, cls in ((ASPP(16, (1, 2), 8), aspp.FusedASPP), (ASPPSum(16, 4, (1, 2)), aspp.FusedASPPSum)):
        head.eval()
        fused = cls(head).to(torch.bfloat16) if order == "fuse-then-cast" else cls(head.to(torch.bfloat16))
        launches.calls.clear()
        fused(torch.randn(1, 16, 9, 9, dtype=torch.bfloat16))
        weights = [fused.weight] + ([fused.proj_weight] if cls is aspp.FusedASPP else [])
        assert [c["args"]["w_ptr"].data_ptr() for c in launches.calls] == [w.data_ptr() for w in weights]
        assert all(c["args"]["w_ptr"].dtype == torch.bfloat16 and c["args"]["bias_ptr"].dtype == torch.float32
                   for c in launches.calls)


def test_aspp_refuses_feature_maps_past_its_int32_offsets():
    """The ASPP kernel's offsets inside one image (pixels x channels, of its input and of its
    output) are int32, like the CRF kernels' pixel indices: a map that would pass 2^31 elements is
    refused before any work, the largest that fits goes on (to the device check here). Meta
    tensors: no memory behind them."""
    from deeplab_edge.errors import KernelUnavailableError

    meta = {"device": "meta", "dtype": torch.float16}
    w_in = torch.empty(1, 2048, 16, **meta)
    with pytest.raises(ValueError, match=r"tap_conv: 1024x1024 pixels x 2048 channels pass the kernels' int32 .* "
                                         "split the image into tiles of under 1,048,575 pixels"):
        aspp.aspp_branches(torch.empty(1, 2048, 1024, 1024, **meta), w_in, torch.zeros(16, device="meta"), (), 16)
    with pytest.raises(KernelUnavailableError):  # past the guard: 1023 x 1024 x 2048 < 2^31
        aspp.aspp_branches(torch.empty(2, 2048, 1023, 1024, **meta), w_in, torch.zeros(16, device="meta"), (), 16)
    # the output side: 16 channels in, 2 groups x 1024 channels out
    w_out = torch.empty(10, 16, 1024, **meta)
    with pytest.raises(ValueError, match="1024x1024 pixels x 2048 channels"):
        aspp.aspp_branches(torch.empty(1, 16, 1024, 1024, **meta), w_out, torch.zeros(2048, device="meta"), (1,), 1024)


def crf_window_params():
    from deeplab_edge.crf import PRESETS

    return PRESETS["deeplab-v2"]
