"""Dense CRF: pydensecrf as the reference on real VOC images, the PyTorch permutohedral and window
versions, and each Triton version (lattice, window) against its PyTorch reference (TRITON_INTERPRET=1)."""

import importlib
import json
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import deeplab_edge.crf as C
from deeplab_edge.cli import main
from deeplab_edge.crf import (PRESETS, CRFParams, PermutohedralLattice, dense_crf, lattice_setup,
                              lattice_step_reference)
from deeplab_edge.errors import DataError
from deeplab_edge.kernels import crf_window as K
from deeplab_edge.kernels import crf_lattice as KL
from deeplab_edge.metrics import ConfusionMatrix

LAT = importlib.import_module("deeplab_edge.crf.lattice")


@pytest.fixture(autouse=True)
def _validated_csr(monkeypatch):
    """Every CSR matrix a lattice builds in these tests goes through PyTorch's invariant check
    (sorted, distinct columns within each row: what cuSPARSE assumes on a GPU)."""
    monkeypatch.setattr(LAT, "CHECK_CSR_INVARIANTS", True)


@pytest.fixture(scope="module")
def voc_logits(shared, imported):
    """(image, label, logits at image size) of the real VOC samples through the imported model."""
    from deeplab_edge.data import open_dataset
    from deeplab_edge.data.preprocess import Preprocess

    model, pre = imported[1].eval(), Preprocess.from_dict(imported[2]["preprocess"])
    out = []
    ds = open_dataset(shared["voc"])
    for i in range(len(ds)):
        _, img, lab = ds.load(i)
        x, geom = pre(img)
        with torch.no_grad():
            out.append((img, lab, Preprocess.restore_logits(model(x[None])[0], geom)))
    return out


def _miou(preds, items):
    cm = ConfusionMatrix(21)
    for p, (_, lab, _) in zip(preds, items):
        cm.update(np.asarray(p), lab)
    return cm.compute()["miou"]


def test_presets_are_the_papers_values():
    v2, v1 = PRESETS["deeplab-v2"], PRESETS["deeplab-v1"]
    assert (v2.iterations, v2.w2, v2.theta_gamma, v2.w1, v2.theta_alpha, v2.theta_beta) == (10, 3, 1, 4, 67, 3)
    assert (v1.w1, v1.theta_alpha, v1.theta_beta, v1.w2, v1.theta_gamma) == (4, 121, 5, 3, 3)
    assert CRFParams() == v2


@pytest.mark.slow
def test_torch_crf_keeps_pydensecrf_gain_on_voc(voc_logits):
    """Both raise mIoU over the raw predictions; the PyTorch lattice keeps >= 90% of the reference's gain."""
    raw = _miou([lg.argmax(0) for _, _, lg in voc_logits], voc_logits)
    ref_preds = [dense_crf(img, lg, method="pydensecrf").argmax(0) for img, _, lg in voc_logits]
    ours = [dense_crf(img, lg, method="torch").argmax(0) for img, _, lg in voc_logits]
    ref, got = _miou(ref_preds, voc_logits), _miou(ours, voc_logits)
    assert ref - raw > 0.005, (raw, ref)  # the CRF helps on these images (+1.5 points measured)
    assert got - raw >= 0.9 * (ref - raw), (raw, ref, got)
    agree = np.mean([float((a == b).float().mean()) for a, b in zip(ref_preds, ours)])
    assert agree > 0.99


def test_lattice_filter_tracks_the_exact_gaussian():
    """Normalised permutohedral filtering vs the brute-force Gaussian sum on random 5-D points."""
    g = torch.Generator().manual_seed(0)
    feats = torch.rand(400, 5, generator=g) * torch.tensor([6.0, 6.0, 3.0, 3.0, 3.0])
    values = torch.rand(400, 3, generator=g)
    lat = PermutohedralLattice(feats)
    k = torch.exp(-0.5 * torch.cdist(feats.double(), feats.double()) ** 2)
    exact = (k @ values.double()) / k.sum(1, keepdim=True)
    approx = lat.filter(values) / lat.filter(torch.ones(400, 1))
    assert (approx.double() - exact).abs().mean() < 0.05  # the lattice is an approximation (Adams et al.)
    # a constant field stays constant, and far-apart clusters do not talk to each other
    assert torch.allclose(lat.filter(torch.full((400, 1), 2.0)), 2 * lat.filter(torch.ones(400, 1)))
    two = torch.cat([torch.zeros(5, 5), torch.full((5, 5), 100.0)])
    out = PermutohedralLattice(two).filter(torch.cat([torch.ones(5, 1), torch.zeros(5, 1)]))
    assert out[5:].abs().max() < 1e-6 and out[:5].min() > 0


def _crop(voc_logits, i=0, h=37, w=53):
    img, lab, lg = voc_logits[i]
    y0, x0 = img.shape[0] // 3, img.shape[1] // 3
    return img[y0:y0 + h, x0:x0 + w], lg[:, y0:y0 + h, x0:x0 + w]


@pytest.mark.parametrize("labels", [21, 3, 1], ids=["21-labels", "3-labels", "1-label"])
def test_triton_lattice_step_matches_pytorch_on_real_crop(voc_logits, labels):
    """One mean-field update of the Triton lattice (splat, 6 blur passes, fused step) against
    the PyTorch lattice's, from marginals that are not the unary's softmax. Tolerance 1e-5 on
    probabilities: fp32 sums in another order (atomic splat, 2-D instead of separable window)."""
    img, lg = _crop(voc_logits, h=31, w=45)
    p = CRFParams()
    image = torch.from_numpy(img)
    unary = -torch.log_softmax(lg[:labels].float(), 0)
    q = torch.softmax(-unary + 2.0 * torch.randn(unary.shape, generator=torch.Generator().manual_seed(1)), 0)
    ref = lattice_step_reference(image, unary, q, p)
    got = KL.lattice_step(lattice_setup(image, p), unary, q, p)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)
    assert torch.allclose(got.sum(0), torch.ones(1), atol=1e-5)
    if labels > 1:  # the messages changed the marginals: a step that ignored them could not pass
        assert (ref - torch.softmax(-unary, 0)).abs().max() > 0.05


@pytest.mark.parametrize("preset", ["deeplab-v2", "deeplab-v1"])
def test_triton_lattice_iterations_match_torch_lattice(voc_logits, preset):
    """All iterations, label pruning included: the Triton lattice gives the PyTorch lattice's marginals."""
    img, lg = _crop(voc_logits, i=3, h=33, w=47)  # a crop across an object boundary (2 classes)
    p = PRESETS[preset]
    ref = dense_crf(img, lg, p, method="torch")
    got = dense_crf(img, lg, p, method="triton")
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)
    assert (ref.argmax(0) != lg.argmax(0)).sum() > 10  # the CRF moved the boundary here (81 pixels measured)


@pytest.mark.parametrize("labels", [21, 3, 1], ids=["21-labels", "3-labels", "1-label"])
def test_triton_window_step_matches_pytorch_step_on_real_crop(voc_logits, labels):
    img, lg = _crop(voc_logits)
    p = CRFParams(window_radius=3, dilation=3)
    image = torch.from_numpy(img).permute(2, 0, 1).float().contiguous()
    unary = -torch.log_softmax(lg[:labels].float(), 0)
    q = torch.softmax(-unary, 0)
    nb, ns = K.window_norms(image, p)
    nb_t, ns_t = K.window_norms_triton(image, p)
    torch.testing.assert_close(nb_t, nb, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ns_t, ns, atol=1e-6, rtol=1e-5)
    ref = K.crf_step_reference(image, unary, q, nb, ns, p)
    got = K.crf_step(image, unary, q, nb, ns, p)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)
    assert torch.allclose(got.sum(0), torch.ones(1), atol=1e-5)


def test_triton_window_iterations_match_pytorch_window(voc_logits):
    img, lg = _crop(voc_logits, i=1, h=29, w=41)
    p = CRFParams(iterations=3, window_radius=4, dilation=2)
    ref = dense_crf(img, lg, p, method="window")
    got = dense_crf(img, lg, p, method="triton-window")
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)


def test_probabilities_and_logits_give_the_same_result(voc_logits):
    img, lg = _crop(voc_logits, h=24, w=31)
    p = CRFParams(iterations=3)
    a = dense_crf(img, lg, p, method="torch", kind="logits")
    b = dense_crf(img, torch.softmax(lg, 0), p, method="torch", kind="probs")
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert torch.allclose(a.sum(0), torch.ones(1), atol=1e-4)


def test_odd_sizes_and_single_label():
    img = (np.random.rand(7, 5, 3) * 255).astype(np.uint8)
    for method in ("torch", "triton", "window", "triton-window", "pydensecrf"):
        q = dense_crf(img, torch.randn(4, 7, 5), method=method, params=CRFParams(iterations=2))
        assert q.shape == (4, 7, 5) and torch.allclose(q.sum(0), torch.ones(1), atol=1e-4)
        one = dense_crf(img, torch.zeros(1, 7, 5), method=method, params=CRFParams(iterations=2))
        assert torch.allclose(one, torch.ones(1, 7, 5), atol=1e-5)


def test_bad_inputs_get_clear_errors():
    img = np.zeros((6, 8, 3), np.uint8)
    with pytest.raises(DataError, match="uint8 RGB"):
        dense_crf(img.astype(np.float32), torch.zeros(2, 6, 8))
    with pytest.raises(DataError, match="uint8 RGB"):
        dense_crf(img[..., :2], torch.zeros(2, 6, 8))
    with pytest.raises(DataError, match="resize the network's output"):
        dense_crf(img, torch.zeros(2, 3, 4))
    with pytest.raises(DataError, match=r"\[classes, H, W\]"):
        dense_crf(img, torch.zeros(6, 8))
    with pytest.raises(DataError, match="floating-point"):
        dense_crf(img, torch.zeros(2, 6, 8, dtype=torch.long))
    with pytest.raises(DataError, match="probabilities in"):
        dense_crf(img, torch.full((2, 6, 8), 3.0), kind="probs")
    with pytest.raises(ValueError, match="theta_alpha"):
        CRFParams(theta_alpha=0)
    with pytest.raises(ValueError, match="method"):
        dense_crf(img, torch.zeros(2, 6, 8), method="fast")


def test_eval_with_crf_and_crf_bench_cli(shared, imported, tmp_path, monkeypatch):
    import json

    from click.testing import CliRunner

    from deeplab_edge.cli import main

    base = ["eval", "--weights", str(imported[0]), "--data", str(shared["voc"]), "--num-images", "2", "--device",
            "cpu", "--json"]
    raw = json.loads(CliRunner().invoke(main, base).output)
    res = CliRunner().invoke(main, base + ["--crf", "torch", "--crf-iterations", "5"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.output)
    assert got["model"]["crf"] == "torch" and got["model"]["crf_params"]["iterations"] == 5
    assert got["timing"]["crf_s"] > 0 and got["miou"] != raw["miou"]
    res = CliRunner().invoke(main, base + ["--crf-iterations", "5"])
    assert res.exit_code == 2 and "needs a CRF" in res.output

    monkeypatch.setenv("TRITON_INTERPRET", "0")
    out = tmp_path / "crf.json"
    tuned = tmp_path / "tuned.json"
    tuned.write_text(json.dumps({"w1": 3.0, "theta_alpha": 20.0, "theta_beta": 2.0}))
    res = CliRunner().invoke(main, ["crf", "bench", "--weights", str(imported[0]), "--data", str(shared["voc"]),
                                    "--num-images", "2", "--speed-images", "1", "--size", "97", "--iterations", "3",
                                    "--methods", "pydensecrf,torch,triton", "--device", "cpu", "--profile",
                                    "--crf-params", str(tuned), "--threads", "1", "-o", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert [r["method"] for r in data["rows"]] == ["none", "pydensecrf", "torch"]
    assert data["skipped"][0]["method"] == "triton" and "CUDA GPU" in data["skipped"][0]["reason"]
    none, ref, ours = data["rows"]
    assert ref["gain_points"] == pytest.approx(100 * (ref["miou"] - none["miou"]))
    assert ours["s_per_image_97x97"] > 0 and ours["s_per_image_97x97_all_labels"] > 0
    assert data["environment"]["cpu"] and data["params"]["iterations"] == 3
    assert (data["params"]["w1"], data["params"]["theta_alpha"], data["params"]["theta_beta"]) == (3.0, 20.0, 2.0)
    prof = data["torch_profile"]  # the stage-by-stage account of the torch lattice on the speed image
    assert len(prof["images"]) == 1 and prof["images"][0]["points"] == 97 * 97
    assert list(prof["median_build_ms"])[:2] == ["features", "elevate"] and "blur matrices" in prof["median_build_ms"]
    assert set(prof["median_ms_per_iteration"]) == {"filter: splat", "filter: blur (d+1 axes)", "filter: slice",
                                                    "spatial", "softmax"}
    assert prof["images"][0]["iterations"] == 3
    est = data["triton_lattice_estimate"]  # triton could not run: its estimate from the real image's lattice
    assert "not a measurement" in est["label"] and len(est["images"]) == 1 and est["images"][0]["vertices"] > 0
    assert 0 < est["mean_ms"]["sm_90"] < est["mean_ms"]["sm_87"]


def test_crf_tune_scores_each_point_as_eval_does(shared, imported, tmp_path):
    """`crf tune` on one image: every point's mIoU is `eval --crf torch` with those parameters (eval's own path:
    ModelSpec -> CRFStage); the file it writes is the best point, and `--crf-params` reads it back; the
    pydensecrf search agrees with the torch one to a fraction of a point."""
    out = tmp_path / "crf_params.json"
    args = ["crf", "tune", "--weights", str(imported[0]), "--data", str(shared["voc"]), "--split", "val",
            "--sample", "1", "--w1", "3,5", "--theta-alpha", "30,90", "--theta-beta", "3", "--device", "cpu"]
    res = CliRunner().invoke(main, args + ["-o", str(out)])
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    assert len(doc["points"]) == 4 and doc["images"] == 1 and doc["split"] == "val"
    assert doc["best_miou"] == max(p["miou"] for p in doc["points"])
    best = next(p["params"] for p in doc["points"] if p["miou"] == doc["best_miou"])  # the edge note, by hand
    assert {e["param"] for e in doc["edge"]} == {k for k, vs in (("w1", (3, 5)), ("theta_alpha", (30, 90)))
                                                 if best[k] in vs}
    base = ["eval", "--weights", str(imported[0]), "--data", str(shared["voc"]), "--num-images", "1", "--device",
            "cpu", "--json"]
    assert doc["no_crf_miou"] == pytest.approx(json.loads(CliRunner().invoke(main, base).output)["miou"], abs=1e-12)
    for p in doc["points"][:2]:
        f = tmp_path / "point.json"
        f.write_text(json.dumps(p["params"]))
        ev = CliRunner().invoke(main, base + ["--crf", "torch", "--crf-params", str(f)])
        assert ev.exit_code == 0, ev.output
        assert json.loads(ev.output)["miou"] == pytest.approx(p["miou"], abs=1e-12), p
    ev = json.loads(CliRunner().invoke(main, base + ["--crf", "torch", "--crf-params", str(out)]).output)
    assert ev["miou"] == pytest.approx(doc["best_miou"], abs=1e-12)
    assert ev["model"]["crf_params"]["w1"] == doc["params"]["w1"]
    ref = CliRunner().invoke(main, args[:-8] + ["--w1", "3", "--theta-alpha", "30,90", "--theta-beta", "3", "--device",
                                                "cpu", "--method", "pydensecrf", "--json"])
    assert ref.exit_code == 0, ref.output
    for a, b in zip([p for p in doc["points"] if p["params"]["w1"] == 3], json.loads(ref.output)["points"]):
        assert a["params"] == b["params"] and abs(a["miou"] - b["miou"]) < 0.005


# ----------------------------------------------------------------------------- window tap tables, layout

def test_window_crf_builds_its_tap_tables_once_per_window_size_and_device(monkeypatch):
    """The window CRF's tap tables go to the device once per (window parameters, image size,
    device), not in every iteration (blocking host-to-device copies inside the loop): counted
    as the tensors built from host lists in ``crf_window.py``. The results stay the reference's."""
    built = []
    real = torch.tensor

    def counting(*args, **kwargs):
        if sys._getframe(1).f_code.co_filename == K.__file__:
            built.append(kwargs.get("device"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "tensor", counting)
    rng = np.random.default_rng(0)
    img = torch.from_numpy((rng.random((13, 11, 3)) * 255).astype(np.uint8))
    unary = torch.from_numpy(rng.random((3, 13, 11)).astype(np.float32)) * 3
    p = CRFParams(iterations=4, near_radius=1, window_radius=2, dilation=3, spatial_radius=1)
    got = K.crf_window(img, unary, p, use_triton=True)
    first = len(built)
    assert 0 < first <= 5  # five tables (bilateral dy, dx, weight; spatial dy, dx), not five per iteration
    other = CRFParams(iterations=2, w1=2.0, w2=1.0, near_radius=1, window_radius=2, dilation=3, spatial_radius=1)
    got_other = K.crf_window(img, unary, other, use_triton=True)  # same window: same tables
    chw = img.permute(2, 0, 1).float().contiguous()
    nb, ns = K.window_norms_triton(chw, p)
    K.crf_step(chw, unary, torch.softmax(-unary, 0), nb, ns, p)
    assert len(built) == first
    monkeypatch.setattr(torch, "tensor", real)
    torch.testing.assert_close(got, K.crf_window(img, unary, p, use_triton=False), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got_other, K.crf_window(img, unary, other, use_triton=False), atol=1e-5, rtol=1e-4)


def test_window_norms_read_channels_first_whatever_the_width():
    """``window_norms`` takes [3, H, W] like the kernels: an image 3 pixels wide is not read as
    [H, W, 3] (it used to be guessed from ``shape[-1] == 3``); anything else is refused."""
    img = torch.rand(3, 7, 3, generator=torch.Generator().manual_seed(0)) * 255
    p = CRFParams(near_radius=1, window_radius=2, dilation=2, spatial_radius=1)
    nb, ns = K.window_norms(img, p)
    assert nb.shape == ns.shape == (7, 3)
    nb_t, ns_t = K.window_norms_triton(img, p)
    torch.testing.assert_close(nb, nb_t, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ns, ns_t, atol=1e-6, rtol=1e-5)
    nb_tr, _ = K.window_norms(img.transpose(1, 2).contiguous(), p)  # the windows are symmetric
    torch.testing.assert_close(nb_tr, nb.t(), atol=1e-6, rtol=1e-5)
    for fn in (K.window_norms, K.window_norms_triton):
        with pytest.raises(ValueError, match=r"expected image \[3, H, W\], got \[7, 3, 3\]"):
            fn(img.permute(1, 2, 0), p)


# ----------------------------------------------------------------------------- lattice CSR

def test_lattice_csr_rows_have_sorted_columns_and_filter_as_the_dense_maps():
    """The lattice's CSR matrices (slice, splat, the blur of each axis) hold sorted, distinct
    columns in every row, as PyTorch's invariant check and cuSPARSE require (blur rows came as
    [self, +e, -e], slice rows in remainder order), with each value still beside its column: the
    filter equals splat / blur / slice built densely from the corners, weights and neighbours."""
    g = torch.Generator().manual_seed(0)
    feats = torch.rand(300, 5, generator=g) * torch.tensor([6.0, 6.0, 3.0, 3.0, 3.0])
    lat = PermutohedralLattice(feats)
    for name, mat in [("slice", lat.slice), ("splat", lat.splat), *((f"blur {i}", b) for i, b in enumerate(lat.blur))]:
        crow, col = mat.crow_indices(), mat.col_indices()
        row = torch.repeat_interleave(torch.arange(mat.shape[0]), crow.diff())
        same_row = row[1:] == row[:-1]
        assert bool((col.diff()[same_row] > 0).all()), f"{name}: columns not sorted within a row"
    n, m = lat.num_points, lat.num_vertices
    splat = torch.zeros(n, m, dtype=torch.float64)
    splat[torch.arange(n)[:, None], lat.offset] = lat.bary.double()  # a point's corners are distinct vertices
    values = torch.rand(n, 3, generator=g, dtype=torch.float64)
    v = splat.t() @ values
    for axis in range(lat.d + 1):
        out = v.clone()
        for side in (0, 1):
            idx = lat.neighbours[axis, side]
            ok = idx < m
            out[ok] += 0.5 * v[idx[ok]]
        v = out
    expected = lat.alpha * splat @ v
    torch.testing.assert_close(lat.filter(values.float()).double(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("preset", ["deeplab-v2", "deeplab-v1"])
def test_packed_vertex_keys_equal_the_packed_simplex_keys(voc_logits, preset):
    """The lattice's vertex keys, packed straight from the remainder-0 points and ranks, are exactly the packing
    of the [N, d1, d] simplex keys (the definition): the same integers and field weights on real crops."""
    for img, _, _ in voc_logits[:2]:
        feats = LAT.lattice_features(torch.from_numpy(np.ascontiguousarray(img)), PRESETS[preset])
        rem0, rank = LAT._enclosing_simplex(LAT._elevate(feats))
        got, weights = LAT._packed_simplex_keys(rem0, rank)
        want, want_weights = LAT._pack_keys(LAT._simplex_keys(rem0, rank))
        assert torch.equal(got, want) and torch.equal(weights, want_weights)


@pytest.mark.parametrize("source", ["crop-deeplab-v2", "crop-deeplab-v1", "random-points"])
def test_blur_neighbours_are_the_vertices_one_lattice_step_away(request, source):
    """Each vertex's +e / -e neighbour along every lattice axis is the vertex whose d integer coordinates are its own
    plus / minus e = (1, ..., 1, -d, 1, ..., 1), or missing when no such vertex exists: looked up here in a Python
    dict of the unpacked simplex keys, not by the packed integers' search the lattice does; and each blur matrix is
    I + (P + P^T) / 2 of those neighbours."""
    if source == "random-points":  # a sparse lattice, most neighbours missing
        feats = torch.rand(300, 5, generator=torch.Generator().manual_seed(0)) * torch.tensor([6.0, 6.0, 3.0, 3.0, 3.0])
    else:  # a real crop's lattice, most neighbours present
        crop = np.ascontiguousarray(request.getfixturevalue("voc_logits")[0][0][100:164, 200:296])
        feats = LAT.lattice_features(torch.from_numpy(crop), PRESETS[source.removeprefix("crop-")])
    lat = PermutohedralLattice(feats)
    rem0, rank = LAT._enclosing_simplex(LAT._elevate(feats))
    keys = LAT._simplex_keys(rem0, rank).reshape(-1, lat.d).tolist()
    vertex_key = {}
    for v, key in zip(lat.offset.reshape(-1).tolist(), keys):
        assert vertex_key.setdefault(v, tuple(key)) == tuple(key)  # a vertex index names one key
    index = {key: v for v, key in vertex_key.items()}
    assert len(index) == lat.num_vertices == len(vertex_key)
    m, found = lat.num_vertices, 0
    for axis in range(lat.d + 1):
        e = np.ones(lat.d, dtype=np.int64)
        if axis < lat.d:
            e[axis] = -lat.d
        want = torch.tensor([[index.get(tuple(np.add(vertex_key[v], s * e).tolist()), m) for v in range(m)]
                             for s in (1, -1)])
        assert torch.equal(lat.neighbours[axis], want), axis
        found += int((want < m).sum())
        dense = torch.eye(m, dtype=torch.float64)
        for side in (0, 1):
            ok = want[side] < m
            dense[torch.arange(m)[ok], want[side][ok]] += 0.5
        assert torch.equal(lat.blur[axis].to_dense().double(), dense), axis
    assert 0 < found < 2 * (lat.d + 1) * m  # some neighbours found and some missing over the axes


def test_profiled_lattice_crf_is_the_lattice_crf(voc_logits):
    """The stage-by-stage run behind `crf bench --profile` computes exactly what the torch lattice CRF does."""
    from deeplab_edge.crf import prune_labels, unary_from

    img, _, logits = voc_logits[1]
    p = PRESETS["deeplab-v2"]
    unary = unary_from(logits, "logits")
    _, keep = prune_labels(unary, p)
    image = torch.from_numpy(np.ascontiguousarray(img))
    q, info = LAT.profile_lattice_crf(image, unary[keep], p)
    assert torch.equal(q, LAT.permutohedral_crf(image, unary[keep], p))
    assert info["labels"] == int(keep.sum()) and info["vertices"] == PermutohedralLattice(
        LAT.lattice_features(image, p)).num_vertices
    assert all(v >= 0 for v in [*info["build_ms"].values(), *info["iterations_ms"].values()])


def test_lattice_csr_matrices_pass_pytorchs_invariant_check():
    """With the check on (as in every test of this module), building a lattice validates its CSR matrices."""
    assert LAT.CHECK_CSR_INVARIANTS
    img = (np.random.default_rng(1).random((9, 14, 3)) * 255).astype(np.uint8)
    lattice_setup(torch.from_numpy(img), CRFParams())


# ----------------------------------------------------------------------------- crf bench timing

class _FakeSegmenter:
    """Logits straight from the image (a stand-in network): the CRF bench's input, nothing else."""

    num_classes = 3

    def logits_batch(self, images):
        from types import SimpleNamespace

        (im,) = images
        x = torch.from_numpy(im.astype(np.float32) / 64.0).permute(2, 0, 1)
        return [(x, SimpleNamespace(resized_hw=im.shape[:2], orig_hw=im.shape[:2]))]


def test_crf_bench_times_warm_calls_and_reports_medians(monkeypatch):
    """A recording wrapper around the real CRF charges a fake clock: 100 s for a warm-up call (a
    device method's first call on each input, pydensecrf's first call), a known time for each
    timed call. Every timed input of a device method has exactly one untimed warm-up before it,
    the seconds reported are the medians of the timed calls (not means, not the warm-ups), and
    each method's first call is reported as its own figure."""
    from deeplab_edge.bench import crf_bench as B
    from deeplab_edge.crf import DEVICE_METHODS

    now = [0.0]
    monkeypatch.setattr(B, "_clock", lambda: now[0])
    real = C.dense_crf
    calls: dict[tuple, int] = {}
    charged: dict[tuple[str, str], list[float]] = {}
    kept = []  # keeps the images alive, so that no id() is reused for another one
    natives = []

    def recording(image, scores, params, *, method, device, **kw):
        out = real(image, scores, params, method=method, device=device, **kw)
        kept.append(image)
        key = (method, id(image), params.label_threshold)
        calls[key] = calls.get(key, 0) + 1
        method_calls = sum(v for k, v in calls.items() if k[0] == method)
        warm = calls[key] == 1 and (method in DEVICE_METHODS or method_calls == 1)
        if warm:
            now[0] += 100.0
        else:
            setting = "native" if any(image is im for im in natives) else (
                "all_labels" if params.label_threshold == 0 else "pruned")
            timed = charged.setdefault((method, setting), [])
            dt = (1.0, 2.0, 30.0)[len(timed)]  # a skewed spread: its median is not its mean
            timed.append(dt)
            now[0] += dt
        return out

    monkeypatch.setattr(B, "dense_crf", recording)  # the benchmark's own import of it
    rng = np.random.default_rng(0)
    data = []
    for i, (h, w) in enumerate([(12, 15), (14, 11), (9, 13)]):
        im = (rng.random((h, w, 3)) * 255).astype(np.uint8)
        natives.append(im)
        data.append((f"im{i}", im, (np.arange(h * w).reshape(h, w) % 3).astype(np.uint8)))
    methods = ["pydensecrf", "torch", "window"]
    res = B.run_crf_bench(_FakeSegmenter(), data, methods, CRFParams(iterations=1, window_radius=1, dilation=2),
                          device=torch.device("cpu"), size=10, speed_images=3)
    for (method, _, _), n in calls.items():
        if method != "pydensecrf":
            assert n == 2  # one warm-up, one timed call: no input timed cold, none timed twice
    assert sorted(calls.values()).count(2) == 2 * 3 * 3 + 1  # pydensecrf: only its first call warmed up
    rows = {r["method"]: r for r in res["rows"]}
    for m in methods:
        r = rows[m]
        for setting, field in (("native", "s_per_image_native"), ("pruned", "s_per_image_10x10"),
                               ("all_labels", "s_per_image_10x10_all_labels")):
            timed = charged[(m, setting)]
            assert len(timed) == 3 and r[field] == pytest.approx(float(np.median(timed)))
            assert r[field] != pytest.approx(float(np.mean(timed)))  # medians, not means
        assert r["first_call_s"] == 100.0  # its first call: compile and tune, on a GPU
    assert rows["torch"]["first_call_s_10x10"] == 100.0 and rows["window"]["first_call_s_10x10"] == 100.0
    assert res["timing"]["statistic"] == "median"
    assert rows["torch"]["speedup_vs_pydensecrf"] == pytest.approx(
        rows["pydensecrf"]["s_per_image_native"] / rows["torch"]["s_per_image_native"])
