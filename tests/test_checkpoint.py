import pytest
import torch

from deeplab_edge.checkpoint import load_checkpoint, save_checkpoint
from deeplab_edge.errors import CheckpointError
from deeplab_edge.models import get_model


def test_roundtrip_gives_identical_outputs(tmp_path):
    model = get_model("deeplabv3plus_mobilenet_v2", num_classes=7).eval()
    path = save_checkpoint(model, {"classes": list("abcdefg")}, tmp_path / "m.pt")
    raw = torch.load(path, weights_only=True)  # plain data: loads without unpickling code
    assert raw["format"] == "deeplab-edge/1" and raw["config"]["arch"] == "deeplabv3plus_mobilenet_v2"
    loaded = load_checkpoint(path)
    x = torch.randn(1, 3, 49, 65)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), model(x))
    assert loaded.classes == list("abcdefg") and len(loaded.meta["sha256"]) == 64


def test_torchvision_style_state_dict_loads_with_guessed_arch(tmp_path):
    src = get_model("deeplabv3_mobilenet_v3_large", num_classes=4, aux_loss=True)
    torch.save({"model": src.state_dict()}, tmp_path / "tv.pth")
    loaded = load_checkpoint(tmp_path / "tv.pth")
    assert loaded.model.config["arch"] == "deeplabv3_mobilenet_v3_large"
    assert loaded.model.num_classes == 4 and loaded.model.config["aux_loss"] is True
    assert loaded.meta["preprocess"]["resize"] == "none"


def test_wrong_architecture_is_named(tmp_path):
    torch.save(get_model("deeplabv3_mobilenet_v2", num_classes=21).state_dict(), tmp_path / "m.pth")
    with pytest.raises(CheckpointError, match="do not fit deeplabv3plus_mobilenet_v2"):
        load_checkpoint(tmp_path / "m.pth", arch="deeplabv3plus_mobilenet_v2")


def test_wrong_class_count_in_deeplab_edge_checkpoint(tmp_path):
    model = get_model("deeplabv3_mobilenet_v2", num_classes=21)
    path = save_checkpoint(model, {}, tmp_path / "m.pt")
    raw = torch.load(path, weights_only=True)
    raw["config"]["num_classes"] = 19
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match="wrong shape"):
        load_checkpoint(path)


def test_garbage_and_missing(tmp_path):
    (tmp_path / "x.pt").write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        load_checkpoint(tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
    torch.save({"w": torch.zeros(3)}, tmp_path / "y.pt")
    with pytest.raises(CheckpointError, match="cannot tell the architecture"):
        load_checkpoint(tmp_path / "y.pt")


def test_save_is_atomic(tmp_path, monkeypatch):
    model = get_model("deeplabv3_mobilenet_v2", num_classes=3)

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        save_checkpoint(model, {}, tmp_path / "m.pt")
    assert list(tmp_path.iterdir()) == []


def test_output_stride_at_load_equals_the_builder_at_that_stride(tmp_path):
    """A checkpoint saved at output stride 16, loaded at 8, computes what the builder's own
    output-stride-8 model computes with the same weights (the builder plans strides itself)."""
    torch.manual_seed(0)
    model = get_model("deeplabv3_resnet50", num_classes=3, output_stride=16).eval()
    path = save_checkpoint(model, {}, tmp_path / "m.pt")
    loaded = load_checkpoint(path, output_stride=8)
    assert loaded.model.config["output_stride"] == 8 and loaded.model.config["aspp_rates"] == [12, 24, 36]
    direct = get_model("deeplabv3_resnet50", num_classes=3, output_stride=8).eval()
    direct.load_state_dict(model.state_dict())
    x = torch.randn(1, 3, 65, 65)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), direct(x))
        assert not torch.allclose(loaded.model(x), model(x), atol=1e-4)
    assert load_checkpoint(path).model.config["output_stride"] == 16  # the file is unchanged
    src = get_model("deeplabv3_mobilenet_v3_large", num_classes=3)
    other = save_checkpoint(src, {}, tmp_path / "v3.pt")
    with pytest.raises(CheckpointError, match="output stride 16, not 8; pick another --output-stride"):
        load_checkpoint(other, output_stride=8)


def test_half_storage_loads_as_the_float16_rounded_float32_model(tmp_path):
    """save_checkpoint(half=True): the file holds float16 tensors (about half the bytes), the loaded model is
    float32 with exactly the float16-rounded weights (torch's own .half().float()), and its meta says so."""
    from deeplab_edge.models import get_model

    torch.manual_seed(0)
    model = get_model("deeplab_largefov_mobilenet_v2", num_classes=11).eval()
    full = save_checkpoint(model, {}, tmp_path / "full.pt")
    half = save_checkpoint(model, {}, tmp_path / "half.pt", half=True)
    raw = torch.load(half, weights_only=True)
    assert {v.dtype for v in raw["state_dict"].values() if v.is_floating_point()} == {torch.float16}
    assert half.stat().st_size < 0.55 * full.stat().st_size
    loaded = load_checkpoint(half)
    assert loaded.meta["stored_dtype"] == "float16" and "stored_dtype" not in load_checkpoint(full).meta
    for k, v in loaded.model.state_dict().items():
        ref = model.state_dict()[k]
        assert v.dtype == ref.dtype and torch.equal(v, ref.half().to(ref.dtype) if ref.is_floating_point() else ref), k
