"""deeplab-edge checkpoints: the model's builder config, weights and metadata in one file.

Format (a plain dict, loadable with ``torch.load(weights_only=True)``)::

    {"format": "deeplab-edge/1", "config": {"arch": ..., builder kwargs},
     "state_dict": {...}, "meta": {"classes": [...], "preprocess": {...}, "source": {...}}}

Plain state dicts (a torchvision ``deeplabv3_*`` ``.pth``, or ``{"state_dict": ...}`` /
``{"model": ...}`` wrappers) load too: the architecture is recognised from the keys (or
given), the class count read from the classifier.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from .data.datasets import VOC_CLASSES
from .outputs import atomic_path
from .data.preprocess import IMAGENET, Preprocess
from .errors import CheckpointError
from .models import MODELS, DeepLab, get_model, restride_config

__all__ = ["save_checkpoint", "load_checkpoint", "LoadedModel", "file_sha256"]

FORMAT = "deeplab-edge/1"


class LoadedModel:
    def __init__(self, model: DeepLab, meta: dict[str, Any], path: Path | None) -> None:
        self.model, self.meta, self.path = model, meta, path

    @property
    def classes(self) -> list[str]:
        return list(self.meta.get("classes") or [f"class_{i}" for i in range(self.model.num_classes)])


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_checkpoint(model: DeepLab, meta: dict[str, Any], path: str | Path, *, half: bool = False) -> Path:
    """Write a checkpoint atomically (a temp file renamed into place). ``half`` stores the floating-point tensors
    as float16 (half the file; loading casts them back to the model's float32, so the model is its float16-rounded
    weights: score the file itself), recorded as ``meta["stored_dtype"]``."""
    if not model.config.get("arch"):
        raise CheckpointError("the model has no builder config; build it with deeplab_edge.models.get_model")
    sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if half:
        sd = {k: v.half() if v.is_floating_point() else v for k, v in sd.items()}
    payload = {"format": FORMAT, "config": dict(model.config), "state_dict": sd,
               "meta": {**meta, **({"stored_dtype": "float16"} if half else {})}}
    path = Path(path)
    # serialised in memory first: torch.save reports a full disk as an opaque RuntimeError, a file write as OSError
    buf = io.BytesIO()
    torch.save(payload, buf)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getbuffer())
    return path


def _guess_arch(sd: dict[str, torch.Tensor]) -> str | None:
    if "backbone.layer4.0.conv1.weight" in sd:
        blocks = {k.split(".")[2] for k in sd if k.startswith("backbone.layer3.")}
        depth = {6: "resnet50", 23: "resnet101"}.get(len(blocks))
        if depth is None:
            return None
        if "classifier.convs.0.weight" in sd:
            return "deeplabv2_resnet101" if depth == "resnet101" else None
        if "classifier.aspp.project.0.weight" in sd:
            return f"deeplabv3plus_{depth}"
        return f"deeplabv3_{depth}"
    if "backbone.16.0.weight" in sd:
        return "deeplabv3_mobilenet_v3_large"
    if "backbone.17.conv.0.0.weight" in sd:
        return "deeplabv3plus_mobilenet_v2" if "classifier.aspp.project.0.weight" in sd else "deeplabv3_mobilenet_v2"
    return None


def _num_classes(sd: dict[str, torch.Tensor]) -> int | None:
    for key in ("classifier.4.bias", "classifier.1.bias", "classifier.classifier.6.bias", "classifier.convs.0.bias"):
        if key in sd:
            return int(sd[key].shape[0])
    return None


def load_checkpoint(path: str | Path, *, arch: str | None = None, map_location: str = "cpu",
                    output_stride: int | None = None) -> LoadedModel:
    """Load a deeplab-edge checkpoint or a plain state dict into a model in eval mode.

    ``output_stride`` runs the same weights at another output stride (e.g. 8 for a model trained
    at 16, as DeepLab-v3 evaluates; see ``models.restride_config``)."""
    path = Path(path)
    obj = _read(path, map_location)
    if obj.get("format") == FORMAT:
        config, sd, meta = _own_format(path, obj, arch)
    else:
        config, sd, meta = _plain_state_dict(path, obj, arch)
    model = _build(path, config, sd)
    if output_stride is not None and output_stride != model.config.get("output_stride"):
        model = _restride(path, model, output_stride)
    _check_meta_and_weights(path, model, meta)
    meta.setdefault("sha256", file_sha256(path))
    return LoadedModel(model.eval(), meta, path)


def _read(path: Path, map_location: str) -> dict[str, Any]:
    """The file's dict, tensors and containers only (``weights_only``), refused with the reason when it is no
    model file: missing, not a torch file, Python objects inside, not a dict, train's resume state."""
    if not path.is_file():
        what = "is a folder, not a checkpoint file" if path.is_dir() else "checkpoint not found"
        raise CheckpointError(f"{path}: {what}; create one with `deeplab-edge import` or pass a .pt/.pth")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except OSError:
        raise  # permissions and the like: the CLI names them
    except pickle.UnpicklingError as e:
        if zipfile.is_zipfile(path):  # a real torch file whose pickle holds more than tensors and containers
            raise CheckpointError(f"{path}: holds Python objects besides tensors, refused because loading them "
                                  "could run code; re-save it as a state dict (torch.save(model.state_dict(), "
                                  "path)) where you trust the file") from e
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (unreadable contents); pass a deeplab-edge .pt "
                              "or a torchvision state dict") from e
    except Exception as e:  # torch raises KeyError, EOFError, RuntimeError... on files that are not checkpoints
        raise CheckpointError(f"{path}: not a PyTorch checkpoint ({type(e).__name__} while reading it); pass a "
                              "deeplab-edge .pt or a torchvision state dict") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict; save model.state_dict()")
    if {"model", "optimizer", "epoch", "step", "record"} <= set(obj):  # train's resume state (train_state.pt)
        raise CheckpointError(f"{path}: is `deeplab-edge train`'s resume state, not a model (its preprocessing and "
                              f"classes are in the checkpoints); use {path.parent / 'last.pt'} or "
                              f"{path.parent / 'best.pt'} beside it")
    return obj


def _own_format(path: Path, obj: dict[str, Any], arch: str | None
                ) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, Any]]:
    """(builder config, state dict, meta) of a deeplab-edge checkpoint; ``arch``, when given, must be its own."""
    config, sd = obj.get("config"), obj.get("state_dict")
    if not isinstance(config, dict) or not isinstance(sd, dict):
        raise CheckpointError(f"{path}: a {FORMAT} checkpoint without its "
                              f"{'config' if not isinstance(config, dict) else 'state_dict'} dict; write "
                              "checkpoints with deeplab_edge.checkpoint.save_checkpoint")
    config, meta = dict(config), dict(obj.get("meta") or {})
    if arch is not None and arch != config.get("arch"):
        raise CheckpointError(f"{path}: checkpoint is a {config.get('arch')}, not a {arch}; drop --arch or "
                              "pass the matching checkpoint")
    return config, sd, meta


def _plain_state_dict(path: Path, obj: dict[str, Any], arch: str | None
                      ) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, Any]]:
    """(builder config, state dict, meta) of a plain (or wrapped) state dict: the architecture from ``arch`` or
    its keys, the class count from its classifier, VOC's names for 21 classes, ImageNet's normalisation."""
    sd = obj.get("state_dict") or obj.get("model") or obj.get("model_state") or obj
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{path}: no state dict of tensors inside; pass a deeplab-edge .pt or a state dict")
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    arch = arch or _guess_arch(sd)
    if arch is None:
        raise CheckpointError(f"{path}: cannot tell the architecture from its keys; pass --arch (one of "
                              f"{', '.join(MODELS)}) to eval, predict, bench, export or info, or give a deeplab-edge "
                              "checkpoint (train or import writes one)")
    n = _num_classes(sd)
    if n is None:
        raise CheckpointError(f"{path}: no classifier weights found for a {arch}; is this a segmentation model?")
    config = {"arch": arch, "num_classes": n}
    if any(k.startswith("aux_classifier.") for k in sd):
        config["aux_loss"] = True
    meta = {"classes": VOC_CLASSES if n == 21 else [f"class_{i}" for i in range(n)],
            "preprocess": {"size": None, "resize": "none", "pad": False, **IMAGENET},
            "source": {"format": "state_dict", "file": path.name}}
    return config, sd, meta


def _build(path: Path, config: dict[str, Any], sd: dict[str, torch.Tensor]) -> DeepLab:
    """The model of ``config`` with the weights ``sd`` (strict); a mismatch names what is missing, unexpected or
    of the wrong shape."""
    name = config.pop("arch", None)
    if name not in MODELS:
        raise CheckpointError(f"{path}: unknown architecture {name!r}; expected one of {', '.join(MODELS)}")
    try:
        model = get_model(name, **config)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot build {name} from the checkpoint's config ({e}); re-save it with "
                              "this version") from e
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        ours = model.state_dict()
        missing = [k for k in ours if k not in sd]
        unexpected = [k for k in sd if k not in ours]
        shape = [k for k in ours if k in sd and tuple(sd[k].shape) != tuple(ours[k].shape)]
        detail = "; ".join(f"{label} {len(ks)} (e.g. {ks[0]})" for label, ks in
                           (("missing", missing), ("unexpected", unexpected), ("wrong shape", shape)) if ks)
        raise CheckpointError(f"{path}: weights do not fit {name} with {model.num_classes} classes "
                              f"({detail}); pass the matching --arch or checkpoint") from e
    return model


def _restride(path: Path, model: DeepLab, output_stride: int) -> DeepLab:
    """The same weights in a model built for ``output_stride`` (``models.restride_config``)."""
    try:
        config = restride_config(model.config, output_stride)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}; pick another --output-stride") from e
    restrided = get_model(config.pop("arch"), **config)
    restrided.load_state_dict(model.state_dict(), strict=True)
    return restrided


def _check_meta_and_weights(path: Path, model: DeepLab, meta: dict[str, Any]) -> None:
    """What the checkpoint says beside its weights fits them (one class name per class, names told apart, a
    preprocessing that can run), and the weights are numbers: else every result from it would be wrong."""
    classes = meta.get("classes")
    if classes is not None:
        if not isinstance(classes, list) or len(classes) != model.num_classes:
            raise CheckpointError(f"{path}: {len(classes) if isinstance(classes, list) else 'no list of'} class names "
                                  f"for a model of {model.num_classes} classes; re-save it with one name per class")
        if len(set(map(str, classes))) != len(classes):
            dup = next(c for c in classes if classes.count(c) > 1)
            raise CheckpointError(f"{path}: the class name {dup!r} is given twice; re-save it with distinct names")
    try:
        Preprocess.from_dict(meta.get("preprocess"))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: its preprocessing cannot run ({e}); re-save it with a valid one, or re-import "
                              "or re-train the model") from e
    bad = [k for k, v in model.state_dict().items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"{path}: {len(bad)} weight tensors hold NaN or infinity (e.g. {bad[0]}); the model "
                              "cannot predict anything: use an earlier checkpoint (a diverged training?)")
