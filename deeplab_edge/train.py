"""Fine-tune DeepLab on a labelled dataset, on one process or many (``torchrun``, PyTorch DDP).

The recipe is the paper's (Chen et al., TPAMI 2018, Sec. 4.1): SGD with momentum 0.9, the "poly"
learning rate ``lr * (1 - step / steps) ** 0.9`` per step, weight decay, random scale 0.5-2.0,
random crop padded with the ignore label, horizontal flip, batch norm trained or frozen; optional
median-frequency class weights (as SegNet trained CamVid). Validation every ``val_every`` epochs
keeps the best checkpoint; ``resume`` continues exactly: the weights, the optimizer, the schedule
and the data order (each sample's augmentation is drawn from (seed, epoch, index), so there is no
random state to restore beyond PyTorch's own).

Under torchrun every process takes its share of each global batch (``DistributedSampler``), the
loss is normalised by the labelled pixels of the whole global batch, so the gradients DDP
averages equal one process's on that batch; validation is sharded and its confusion matrix summed
over processes; only rank 0 writes files.
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import inspect
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from . import distributed
from .calibration.qat import FakeQuant, ptq_ranges, qdq_from_model
from .checkpoint import file_sha256, load_checkpoint, save_checkpoint
from .data.datasets import IGNORE, SegmentationDataset, open_dataset
from .data.overlap import image_digests
from .data.preprocess import IMAGENET, Preprocess
from .errors import DataError, DeepLabEdgeError
from .inference import Segmenter
from .interrupts import temp_dir
from .models import MODELS, OUTPUT_STRIDES, get_model, with_trunk
from .models.heads import ASPPPooling
from .outputs import atomic_path, check_run_folder, nearest_existing, refuse_writing_over
from .runtime import resolve_device
from .runtime.onnx import OnnxRunner
from .runtime.pytorch import TorchRunner

__all__ = ["TrainConfig", "train", "augment", "median_frequency_weights", "folded_batch_norms"]

STATE = "train_state.pt"
LOCK = ".train.lock"
AUX_WEIGHT = 0.5  # torchvision's segmentation reference: loss = out + 0.5 * aux
LOG_EVERY = 10  # on a GPU, the loss is read (a sync) every this many steps
LOADER_WORKERS = 4  # data-loading processes on a GPU
# what a run writes into its folder: a folder holding any of these holds a run
RUN_FILES = ("best.pt", "last.pt", STATE, "train_record.json", "train_record.csv", "train_curve.png", "model_qdq.onnx")
# what --resume may change: the length of the run, validation, where it runs; every other setting is the run's
RESUME_MAY_CHANGE = {"epochs", "max_steps", "val_data", "val_split", "val_every", "device", "resume", "output",
                     "extra", "given", "qat",  # (a QAT run resumed without --qat, or the reverse: its own message)
                     "data"}  # the data may have moved: its image count is checked against the run's instead


@dataclass(frozen=True)
class TrainConfig:
    """A training's settings, as given (the CLI's options) and as recorded; frozen: a stage that needs another
    setting (QAT's frozen batch norms, a resumed run's own values) derives a new one with ``dataclasses.replace``."""

    data: str
    output: str
    weights: str | None = None  # start from this checkpoint (a different class count gets a new classifier)
    arch: str | None = None  # or from scratch with this architecture
    trunk: str | None = None  # with arch: start from this checkpoint's trunk (weights copied), the head new
    aspp_rates: tuple[int, ...] | None = None  # with arch: the new model's atrous rates (default: the builder's)
    separable: bool = False  # with arch: atrous separable convolutions (DeepLab-v3+ builders that take them)
    output_stride: int | None = None  # another output stride than the checkpoint's (or the builder's default)
    dataset: str = "auto"
    split: str = "train"
    val_data: str | None = None
    val_split: str = "val"
    epochs: int = 30
    batch_size: int = 8  # global: split over the processes under torchrun
    crop: int = 321
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 4e-5
    poly_power: float = 0.9
    scale_min: float = 0.5
    scale_max: float = 2.0
    flip: bool = True
    freeze_bn: bool = False
    dropout: float | None = None  # override every Dropout's probability (0 turns dropout off)
    sync_bn: bool = False
    class_weights: str = "none"  # or "median-frequency"
    val_every: int = 1
    seed: int = 0
    device: str = "auto"
    max_steps: int | None = None  # stop early (tests, smoke runs)
    resume: bool = False
    qat: bool = False  # quantization-aware fine-tuning: fake int8 as the QDQ export computes it
    qat_ranges: str = "mse"  # the PTQ method whose activation thresholds QAT starts from (and keeps)
    qat_calib_num: int = 64  # images of --data those thresholds are calibrated on
    extra: dict[str, Any] = field(default_factory=dict)
    # the fields the user set (the CLI passes those typed on its command line); None: all of them
    given: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        """The numbers the CLI checks when parsed, checked again for the Python API (NaN and infinity refused)."""
        bounds = {"lr": (0, 10, False), "momentum": (0, 1, True), "weight_decay": (0, 1, True),
                  "poly_power": (0, 10, True), "scale_min": (0.05, 8, True), "scale_max": (0.05, 8, True),
                  "dropout": (0, 1, True)}
        for name, (lo, hi, lo_closed) in bounds.items():
            v = getattr(self, name)
            if v is None and name == "dropout":
                continue
            if not isinstance(v, (int, float)) or not math.isfinite(v) or not (v >= lo if lo_closed else v > lo) \
                    or v > hi or (name in ("momentum", "dropout") and v >= 1):
                raise DeepLabEdgeError(f"{name} = {v!r} is not a finite number in {lo}{'<=' if lo_closed else '<'}x"
                                       f"{'<' if name in ('momentum', 'dropout') else '<='}{hi}; give a number in "
                                       "that range")
        if self.scale_min > self.scale_max:
            raise DeepLabEdgeError(f"scale range {self.scale_min} > {self.scale_max}; give MIN MAX")
        if self.trunk and (self.weights or not self.arch):
            raise DeepLabEdgeError("--trunk starts a new --arch from a checkpoint's trunk; give --arch NAME and drop "
                                   "--weights (which continues a checkpoint's own architecture)")
        for given, name in ((self.aspp_rates is not None, "--aspp-rates"), (self.separable, "--separable")):
            if given and not self.arch:
                raise DeepLabEdgeError(f"{name} builds a new model; give --arch NAME (and --trunk FILE to start "
                                       "from a checkpoint's trunk)")


# ----------------------------------------------------------------------------- data

def augment(image: np.ndarray, label: np.ndarray, crop: int, scale: tuple[float, float], flip: bool,
            rng: np.random.Generator, pad_pixel: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Random scale (image bilinear, label nearest), pad to ``crop`` (image with ``pad_pixel``, the
    normalisation mean; label with the ignore value), random ``crop`` x ``crop`` window, random flip."""
    s = rng.uniform(*scale)
    h, w = label.shape
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    img = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR))
    lab = np.asarray(Image.fromarray(label).resize((nw, nh), Image.NEAREST))
    ph, pw = max(crop - nh, 0), max(crop - nw, 0)
    if ph or pw:
        img = np.concatenate([img, np.broadcast_to(np.asarray(pad_pixel, np.uint8), (ph, nw, 3))], 0) if ph else img
        img = np.concatenate([img, np.broadcast_to(np.asarray(pad_pixel, np.uint8), (nh + ph, pw, 3))], 1) \
            if pw else img
        lab = np.pad(lab, ((0, ph), (0, pw)), constant_values=IGNORE)
    y = int(rng.integers(0, img.shape[0] - crop + 1))
    x = int(rng.integers(0, img.shape[1] - crop + 1))
    img, lab = img[y:y + crop, x:x + crop], lab[y:y + crop, x:x + crop]
    if flip and rng.random() < 0.5:
        img, lab = img[:, ::-1], lab[:, ::-1]
    return np.ascontiguousarray(img), np.ascontiguousarray(lab)


class _TrainSet(torch.utils.data.Dataset):
    def __init__(self, ds: SegmentationDataset, cfg: TrainConfig, pre: Preprocess) -> None:
        self.ds, self.cfg, self.epoch = ds, cfg, 0
        self.mean = torch.tensor(pre.mean).view(3, 1, 1)
        self.std = torch.tensor(pre.std).view(3, 1, 1)
        self.pad_pixel = tuple(int(round(m)) for m in pre.mean)

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        _, image, label = self.ds.load(i)
        rng = np.random.default_rng([self.cfg.seed, self.epoch, i])
        img, lab = augment(image, label, self.cfg.crop, (self.cfg.scale_min, self.cfg.scale_max), self.cfg.flip,
                           rng, self.pad_pixel)
        x = (torch.from_numpy(img).permute(2, 0, 1).float() - self.mean) / self.std
        return x, torch.from_numpy(lab.astype(np.int64))


def median_frequency_weights(ds: SegmentationDataset) -> torch.Tensor:
    """SegNet's class weights: median(freq) / freq_c, freq_c = pixels of c / pixels of the images holding c."""
    n = ds.num_classes
    pixels, present = np.zeros(n), np.zeros(n)
    for i in range(len(ds)):
        lab = ds.load(i)[2]
        counts = np.bincount(lab[lab != IGNORE].ravel(), minlength=n)[:n]
        pixels += counts
        present += (counts > 0) * lab.size
    if not pixels.any():
        ds.check_labelled_pixels("weight")
    freq = np.where(present > 0, pixels / np.maximum(present, 1), 0)
    med = np.median(freq[freq > 0])
    return torch.tensor(np.where(freq > 0, med / np.maximum(freq, 1e-12), 0.0), dtype=torch.float32)


# ----------------------------------------------------------------------------- model

def _initial_model(cfg: TrainConfig, num_classes: int, classes: list[str]):
    """(model, meta) from --weights (classifier replaced when the class count differs) or --arch."""
    if cfg.weights:
        loaded = load_checkpoint(cfg.weights, arch=cfg.arch, output_stride=cfg.output_stride)
        config = dict(loaded.model.config)
        arch = config.pop("arch")
        if loaded.model.num_classes == num_classes:
            return loaded.model, dict(loaded.meta)
        config["num_classes"] = num_classes
        model = get_model(arch, **config)
        own = model.state_dict()
        keep = {k: v for k, v in loaded.model.state_dict().items() if k in own and own[k].shape == v.shape}
        model.load_state_dict(keep, strict=False)  # everything but the classifier's last layer
        return model, {**loaded.meta, "classes": classes}
    if not cfg.arch or cfg.arch not in MODELS:
        raise DeepLabEdgeError(f"give --weights FILE or --arch NAME (one of {', '.join(MODELS)})")
    stride = {} if cfg.output_stride is None else {"output_stride": cfg.output_stride}
    if stride and cfg.output_stride not in OUTPUT_STRIDES[cfg.arch]:
        raise DeepLabEdgeError(f"{cfg.arch} runs at output stride "
                               f"{' or '.join(map(str, OUTPUT_STRIDES[cfg.arch]))}, not {cfg.output_stride}; "
                               "pick another --output-stride")
    rates = {} if cfg.aspp_rates is None else {"aspp_rates": [int(r) for r in cfg.aspp_rates]}
    if cfg.separable:
        if "separable" not in inspect.signature(MODELS[cfg.arch].builder).parameters:
            raise DeepLabEdgeError(f"--separable: {cfg.arch} has no separable variant; use it with "
                                   "deeplabv3plus_mobilenet_v2")
        rates["separable"] = True
    if cfg.trunk:
        return _on_trunk(cfg, num_classes, classes, {**stride, **rates})
    return get_model(cfg.arch, num_classes=num_classes, **stride, **rates), {"classes": classes,
                                                         "preprocess": {"size": None, "resize": "none",
                                                                        "pad": False, **IMAGENET}}


def _on_trunk(cfg: TrainConfig, num_classes: int, classes: list[str], options: dict[str, Any]):
    """(model, meta): ``cfg.arch`` with a new head on the trunk of ``cfg.trunk`` (its preprocessing kept)."""
    source = load_checkpoint(cfg.trunk, output_stride=options.get("output_stride"))
    try:
        model = with_trunk(source.model, cfg.arch, num_classes, **options)
    except ValueError as e:
        raise DeepLabEdgeError(f"--trunk {cfg.trunk}: {e}; start {cfg.arch} from a checkpoint with its trunk") from None
    trunk = {"file": str(cfg.trunk), "sha256": source.meta.get("sha256"), "arch": source.model.config.get("arch")}
    return model, {"classes": classes, "preprocess": source.meta.get("preprocess"), "trunk": trunk}


def _batch_norms(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in model.modules() if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d,
                                                         torch.nn.BatchNorm3d, torch.nn.SyncBatchNorm))]


def folded_batch_norms(model: torch.nn.Module) -> bool:
    """True when every batch norm is an identity carrying a bias (scale 1, running mean 0, variance
    1 or 1 - eps, never updated, some bias non-zero): the statistics were folded into the convolutions, as in
    models imported from TFLite. Training such layers from batch statistics changes what the network
    computes (and eval mode then sees running statistics far from the batches'): freeze them."""
    bns = _batch_norms(model)
    return bool(bns) and all(
        bn.weight is not None and bool((bn.weight == 1).all()) and bool((bn.running_mean == 0).all())
        and bool(((bn.running_var - 1).abs() <= 1e-3).all()) and int(bn.num_batches_tracked) == 0 for bn in bns) \
        and any(bool(bn.bias.abs().max() > 0) for bn in bns)


def _loader(train_set, sampler, local_bs: int, device: torch.device) -> torch.utils.data.DataLoader:
    """On a GPU, worker processes load and augment the next batches into pinned memory (the non_blocking copies
    then overlap); each sample's augmentation depends on (seed, epoch, index) only, so workers change no result.
    Workers start per epoch (not persistent): each gets the dataset with the epoch just set. On a CPU the
    training process loads them itself (workers would take its cores)."""
    cuda = device.type == "cuda"
    return torch.utils.data.DataLoader(train_set, batch_size=local_bs, sampler=sampler, drop_last=True,
                                       num_workers=min(LOADER_WORKERS, os.cpu_count() or 1) if cuda else 0,
                                       pin_memory=cuda)


def _validate(model: torch.nn.Module, ds: SegmentationDataset, pre: Preprocess, device: torch.device,
              info: distributed.DistInfo) -> dict[str, Any]:
    """mIoU of ``model`` on ``ds`` (sharded over the processes), the model left in the mode it was in."""
    was = model.training
    try:
        return distributed.evaluate_sharded(Segmenter(TorchRunner(model, device), pre, ds.num_classes), ds, info,
                                            device)
    finally:
        model.train(was)


# ----------------------------------------------------------------------------- the run folder

_STATE_KEYS = {"arch": str, "num_classes": int, "model": dict, "optimizer": dict, "epoch": int, "step": int,
               "torch_rng": torch.Tensor, "record": str}


def load_state(path: Path) -> dict[str, Any]:
    """A run's ``train_state.pt``, checked: a corrupt, foreign or text file is a one-line error, not a traceback
    after the model was built."""
    try:
        st = torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError... on what is not its file
        raise DeepLabEdgeError(f"{path}: not a deeplab-edge training state ({type(e).__name__} while reading it); "
                               "resume only from a folder `deeplab-edge train` wrote, or train into a new folder"
                               ) from e
    bad = [k for k, t in _STATE_KEYS.items() if not isinstance(st, dict) or not isinstance(st.get(k), t)] \
        if isinstance(st, dict) else list(_STATE_KEYS)
    record = None
    if not bad:
        try:
            record = json.loads(st["record"])
        except ValueError:
            bad = ["record"]
    if bad or not isinstance(record, dict) or not isinstance(record.get("epochs"), list):
        raise DeepLabEdgeError(f"{path}: not a deeplab-edge training state (no {', '.join(bad) or 'record'}); resume "
                               "only from a folder `deeplab-edge train` wrote, or train into a new folder")
    return {**st, "record": record}


def resume_config(cfg: TrainConfig, state: dict[str, Any]) -> TrainConfig:
    """The configuration a resumed run continues with: the run's own settings, except what --resume may
    change (:data:`RESUME_MAY_CHANGE`); a setting the user gave that differs from the run's is refused
    (it would be recorded as used while the optimizer and the schedule keep the run's)."""
    started = dict(state["record"].get("config") or {})
    if started.get("arch") is None and cfg.arch is not None:
        started["arch"] = state["arch"]  # a run started from --weights: the architecture it trains
    given = set(f.name for f in fields(cfg)) if cfg.given is None else set(cfg.given)
    keep = {}
    for f in fields(cfg):
        if f.name in RESUME_MAY_CHANGE or f.name not in started:
            continue
        ours, theirs = getattr(cfg, f.name), started[f.name]
        same_file = f.name == "weights" and ours and theirs and Path(ours).resolve() == Path(theirs).resolve()
        if f.name in given and ours != theirs and not same_file:
            flag = "--" + f.name.replace("_", "-")
            raise DeepLabEdgeError(f"{flag} {ours} differs from the run's {theirs} (-o {cfg.output}): --resume "
                                   f"continues the run as it was started; drop {flag}, or train a new run into "
                                   "another folder")
        keep[f.name] = theirs
    if "scale_min" in keep:  # the CLI's --scale gives both
        keep["scale_min"], keep["scale_max"] = started["scale_min"], started["scale_max"]
    return replace(cfg, **keep)


def _check_run_folder(cfg: TrainConfig, out: Path, state: dict[str, Any] | None) -> None:
    """Before any work: a new run goes into a new or empty folder; a resumed run into its own (a folder
    holding anything else is the user's: refused, never mixed with a run)."""
    check_run_folder(out, set(RUN_FILES) | {LOCK}, "training")
    if not cfg.resume:
        held = [n for n in RUN_FILES if (out / n).exists()]
        if held:
            raise DeepLabEdgeError(f"-o {out} holds an earlier training run ({', '.join(held[:3])}); pass --resume to "
                                   "continue it, or choose a new folder (nothing there was changed)")
    if cfg.weights:  # the run's own files are replaced as it trains: none may be its starting point
        refuse_writing_over([out / n for n in RUN_FILES], {"--weights": [Path(cfg.weights)]})
    if not cfg.resume:
        return
    record = state["record"]
    was_qat = "qat" in record
    if was_qat != cfg.qat:
        raise DeepLabEdgeError(f"{out / STATE}: the run was {'a QAT' if was_qat else 'an FP32'} run; resume it "
                               f"{'with' if was_qat else 'without'} --qat, as it was started")
    if state["epoch"] >= cfg.epochs and not (cfg.max_steps is not None and state["step"] < cfg.max_steps):
        raise DeepLabEdgeError(f"{out}: the run has already trained {state['epoch']} epochs; give --epochs above "
                               f"{state['epoch']} to train it further")
    for n in RUN_FILES:  # an immutable or read-only file would fail after others were replaced
        if (out / n).exists() and not os.access(out / n, os.W_OK):
            raise DeepLabEdgeError(f"{out / n}: cannot be replaced (read-only or immutable); make it writable or "
                                   "train into a new folder")


class _RunLock:
    """``RUN/.train.lock``, held (flock) by the process that writes the run: a second training into the same
    folder is refused instead of both writing it. The lock goes with the process, even when it is killed."""

    def __init__(self, out: Path) -> None:
        self.out, self.fd, self.existing = out, None, out

    def acquire(self) -> None:
        self.existing = nearest_existing(self.out)  # the folders below it are this run's to remove on failure
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / LOCK
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            other = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise DeepLabEdgeError(f"-o {self.out}: another training (pid {other}) is writing this folder; wait for "
                                   "it to finish or choose another folder") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self.fd = fd

    def release(self, failed: bool = False) -> None:
        if self.fd is None:
            return
        try:
            os.unlink(self.out / LOCK)
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None
        folder = Path(os.path.abspath(self.out))
        while failed and folder != self.existing and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()  # the folders this run made and wrote nothing into
            folder = folder.parent


# ----------------------------------------------------------------------------- the run's parts

@dataclass(frozen=True)
class _Setting:
    """Where the run runs and whom it tells: the same for every stage."""

    device: torch.device
    info: distributed.DistInfo
    progress: Callable[[dict[str, Any]], None] | None
    log: Callable[[str], None]

    @property
    def amp(self) -> bool:
        """Mixed precision (float16 autocast, the GradScaler) on a GPU only."""
        return self.device.type == "cuda"


@dataclass(frozen=True)
class _Data:
    """The checked training and validation data, and each process's share of a global batch."""

    train: SegmentationDataset
    val: SegmentationDataset | None
    local_bs: int


@dataclass(frozen=True)
class _Model:
    """The model being trained (never DDP's wrapper: that is :class:`_Fit`'s), what its checkpoints carry, and the
    two preprocessings: the training images' normalisation, and whole images for validation and the checkpoints."""

    net: torch.nn.Module
    meta: dict[str, Any]
    pre: Preprocess
    eval_pre: Preprocess
    qat: FakeQuant | None = None


@dataclass(frozen=True)
class _Fit:
    """What the steps run: the module (DDP's wrapper under torchrun), the optimizer, the loss scaler, the class
    weights, and the batches with the length of the whole schedule."""

    module: torch.nn.Module
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    class_weights: torch.Tensor | None
    train_set: _TrainSet
    sampler: torch.utils.data.DistributedSampler
    loader: torch.utils.data.DataLoader
    total: int


@dataclass(frozen=True)
class _Run:
    """One training once it is set up: every stage of the epoch loop takes it whole."""

    cfg: TrainConfig
    where: _Setting
    data: _Data
    model: _Model
    fit: _Fit

    @property
    def out(self) -> Path:
        return Path(self.cfg.output)


# ----------------------------------------------------------------------------- set-up, resume, data

def train(cfg: TrainConfig, progress: Callable[[dict[str, Any]], None] | None = None,
          log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Run the training; returns the record (config, one row per epoch, best validation). Under torchrun every
    process returns it; ``progress`` and ``log`` are called on the main process only (one log for the job)."""
    device = resolve_device(cfg.device)
    info = distributed.init(device)
    try:
        with distributed.peer_failures(info):
            quiet = not info.is_main
            return _train(cfg, _Setting(device, info, None if quiet else progress, (lambda s: None) if quiet else log))
    finally:
        distributed.shutdown()


def _train(cfg: TrainConfig, where: _Setting) -> dict[str, Any]:
    """Every input checked before any work; then the run, holding its folder's lock (released, and the folders
    it made removed when empty, if it fails)."""
    cfg, state = _resumed(cfg)
    data = _open_data(cfg, where.info, state)
    out = Path(cfg.output)
    lock = _RunLock(out)
    try:
        # rank 0 writes the run: it holds the folder's lock and checks the folder; every process stops if it refuses
        distributed.on_main(lambda: (lock.acquire(), _check_run_folder(cfg, out, state)), where.info)
        run, record, start_epoch, step = _set_up(cfg, where, data, state)
        return _epochs(run, record, start_epoch, step)
    except BaseException:
        lock.release(failed=True)
        raise
    finally:
        lock.release()


def _resumed(cfg: TrainConfig) -> tuple[TrainConfig, dict[str, Any] | None]:
    """With --resume: the run's checked state, and the configuration it continues with (the run's own settings,
    before anything is checked against them). Without: ``cfg`` as it is, and no state."""
    if not cfg.resume:
        return cfg, None
    state_path = Path(cfg.output) / STATE
    if not state_path.is_file():
        raise DeepLabEdgeError(f"{state_path}: nothing to resume; train without --resume first")
    state = load_state(state_path)
    return resume_config(cfg, state), state


def _open_data(cfg: TrainConfig, info: distributed.DistInfo, state: dict[str, Any] | None) -> _Data:
    """The training and validation data, checked whole before the run starts: layout, labels, classes, the batch
    against the processes and the images, a resumed run's image count, every image-label pair."""
    ds = open_dataset(cfg.data, cfg.dataset, cfg.split)
    if ds.kind == "folder" or not ds.has_labels:
        raise DataError(f"{cfg.data}: no labelled {cfg.split} split found; training needs a VOC, Cityscapes or "
                        "CamVid folder with labels")
    val = None
    if cfg.val_data:
        val = open_dataset(cfg.val_data, cfg.dataset, cfg.val_split)
        if val.num_classes != ds.num_classes or not val.has_labels:
            raise DataError(f"{cfg.val_data}: {val.num_classes} classes{'' if val.has_labels else ', no labels'}, "
                            f"the training data {ds.num_classes}; validate on labelled data of the same classes")
    if cfg.batch_size % info.world:
        raise DeepLabEdgeError(f"--batch-size {cfg.batch_size} is not divisible by the {info.world} processes; "
                               "give a multiple")
    if len(ds) < cfg.batch_size:
        raise DataError(f"{cfg.data}: {len(ds)} images, fewer than one batch of {cfg.batch_size}; lower --batch-size")
    if state is not None and state["record"].get("images") not in (None, len(ds)):
        raise DataError(f"{cfg.data}: {len(ds)} images of split {cfg.split!r}, the run trained on "
                        f"{state['record']['images']}; resume it on its own data")
    ds.check_pairs()
    ds.check_labelled_pixels("train on")
    if val is not None:
        val.check_pairs()
        val.check_labelled_pixels("validate on")
    return _Data(ds, val, cfg.batch_size // info.world)


# ----------------------------------------------------------------------------- model and optimizer

def _set_up(cfg: TrainConfig, where: _Setting, data: _Data, state: dict[str, Any] | None
            ) -> tuple[_Run, dict[str, Any], int, int]:
    """The run once the data, the state and the folder passed their checks: the model, the optimizer, the batches
    and the record, new or the resumed run's (its weights, optimizer, random states and loss scale restored
    last, just before DDP wraps the model). Returns the run, its record and the epoch and step it starts at."""
    torch.manual_seed(cfg.seed)
    cfg, model, extra = _prepare_model(cfg, where, data)
    params = [p for p in model.net.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    weights = median_frequency_weights(data.train).to(where.device) if cfg.class_weights == "median-frequency" \
        else None
    train_set = _TrainSet(data.train, cfg, model.pre)
    info = where.info
    sampler = torch.utils.data.DistributedSampler(train_set, num_replicas=info.world, rank=info.rank, shuffle=True,
                                                  seed=cfg.seed, drop_last=True)
    loader = _loader(train_set, sampler, data.local_bs, where.device)
    record: dict[str, Any] = {"config": asdict(cfg), "world_size": info.world, "steps_per_epoch": len(loader),
                              "images": len(data.train), "classes": data.train.classes, "epochs": [], "best": None,
                              **extra}
    scaler = torch.amp.GradScaler("cuda", enabled=where.amp)
    start_epoch, step = 0, 0
    if state is not None:
        start_epoch, step, record = _restore(cfg, state, model.net, opt, scaler, data.train)
        where.log(f"resuming at epoch {start_epoch + 1}, step {step}")
    module = model.net
    if info.distributed:
        module = torch.nn.parallel.DistributedDataParallel(model.net, device_ids=[where.device.index]
                                                           if where.device.type == "cuda" else None)
    fit = _Fit(module, opt, scaler, weights, train_set, sampler, loader, cfg.epochs * len(loader))
    return _Run(cfg, where, data, model, fit), record, start_epoch, step


def _prepare_model(cfg: TrainConfig, where: _Setting, data: _Data) -> tuple[TrainConfig, _Model, dict[str, Any]]:
    """The model on its device, ready for the optimizer: dropout and SyncBatchNorm as asked, the aux head trained
    (or left as it is, under QAT), fake quantization started, the batch norms frozen where asked or where the
    checkpoint folded them. Returns the configuration derived with ``freeze_bn`` where QAT or the folding sets
    it, the model, and what the record notes of it (its ``notes``, and ``qat`` under QAT)."""
    net, meta = _initial_model(cfg, data.train.num_classes, data.train.classes)
    pre = Preprocess.from_dict(meta.get("preprocess") or {})
    eval_pre = Preprocess.from_dict({**(meta.get("preprocess") or {}), "size": None, "resize": "none", "pad": False})
    if cfg.dropout is not None:
        for m in net.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = cfg.dropout
    if cfg.sync_bn and where.info.distributed:
        net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
    net.to(where.device)
    if where.device.type == "cuda":
        net = net.to(memory_format=torch.channels_last)
    if getattr(net, "aux_classifier", None) is not None:
        # a torchvision checkpoint's aux head: forward would never call it (DDP then fails on its unused
        # parameters); it trains as in torchvision's reference, its loss weighted AUX_WEIGHT. QAT fine-tunes
        # what the QDQ model runs, which has no aux head: there it is left as it is.
        if cfg.qat:
            net.aux_classifier.requires_grad_(False)
        else:
            net.train_aux = True
            where.log(f"training the aux head too (loss weight {AUX_WEIGHT}, as torchvision's reference)")
    model, extra = _Model(net, meta, pre, eval_pre), {"notes": []}
    if cfg.qat:  # before the batch norms are frozen below and before DDP wraps the model
        fq, extra["qat"] = _start_qat(cfg, model, data.train, where.log)
        cfg, model = replace(cfg, freeze_bn=True), replace(model, qat=fq)
    if not cfg.freeze_bn and cfg.weights and folded_batch_norms(net):
        where.log("the checkpoint's batch norms are folded into its convolutions (e.g. imported from TFLite): "
                  "training them from batch statistics would change the network; freezing them (--freeze-bn)")
        cfg = replace(cfg, freeze_bn=True)
        extra["notes"].append("batch norm frozen: folded in the initial checkpoint")
    if cfg.freeze_bn:  # before the optimizer and DDP: frozen parameters are no parameters of theirs
        for bn in _batch_norms(net):
            bn.requires_grad_(False)
    elif data.local_bs == 1 and any(isinstance(m, ASPPPooling) and _batch_norms(m) for m in net.modules()):
        raise DeepLabEdgeError(f"--batch-size {cfg.batch_size} over {where.info.world} process(es) is one image per "
                               "process: the batch norm after image pooling cannot train on one value per channel; "
                               f"give --batch-size {2 * where.info.world} or more, or --freeze-bn")
    return cfg, model, extra


def _restore(cfg: TrainConfig, state: dict[str, Any], net: torch.nn.Module, opt: torch.optim.Optimizer,
             scaler: torch.amp.GradScaler, ds: SegmentationDataset) -> tuple[int, int, dict[str, Any]]:
    """A resumed run's weights, optimizer, random states and loss scale into this one; returns the epoch and step
    it stands at and its record, which notes what this phase runs with."""
    state_path = Path(cfg.output) / STATE
    if state["arch"] != net.config["arch"] or state["num_classes"] != ds.num_classes:
        raise DeepLabEdgeError(f"{state_path}: a {state['arch']} with {state['num_classes']} classes, not a "
                               f"{net.config['arch']} with {ds.num_classes}; resume with the same model and data")
    try:
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise DeepLabEdgeError(f"{state_path}: its weights or optimizer state do not fit this model "
                               f"({str(e).splitlines()[0][:120]}); resume with the run's own settings") from e
    _restore_random_and_scale(state, scaler)
    record = state["record"]
    # what this phase ran with: the same settings continue exactly; another --epochs stretches the schedule
    record.setdefault("resumed", []).append({"at_epoch": state["epoch"], "at_step": state["step"],
                                             "config": asdict(cfg)})
    return state["epoch"], state["step"], record


def _start_qat(cfg: TrainConfig, model: _Model, ds: SegmentationDataset, log: Callable[[str], None]
               ) -> tuple[FakeQuant, dict[str, Any]]:
    """Fake quantization on ``model`` at the PTQ thresholds of its FP32 export (``calibrate``'s method
    ``cfg.qat_ranges`` on the first ``cfg.qat_calib_num`` images of the training data); returns it and the
    record's ``qat``. QAT trains with frozen batch norms: the caller derives its configuration so."""
    if not cfg.weights:
        raise DeepLabEdgeError("--qat fine-tunes a trained FP32 model; pass --weights FILE")
    if cfg.sync_bn:
        raise DeepLabEdgeError("--qat keeps batch norms frozen (folded into the Convs); drop --sync-bn")
    n = min(len(ds), cfg.qat_calib_num)
    calib = ds.take(range(n))
    images = [calib.load(i)[1] for i in range(n)]
    log(f"QAT: {cfg.qat_ranges} thresholds from {n} images of {cfg.data} (the FP32 export, as `calibrate`)")
    qmeta = {**model.meta, "preprocess": asdict(model.eval_pre)}
    with temp_dir() as work:
        ranges, plan = ptq_ranges(model.net, qmeta, images, cfg.qat_ranges, Path(work))
    fq = FakeQuant(model.net, plan, ranges)
    return fq, {"images_sha1": image_digests(smp.image for smp in calib.samples), "ranges": ranges,
                "ranges_method": cfg.qat_ranges, "calibration_images": n, "calibration_data": cfg.data,
                "quantized_convs": len(plan.pairs), "residual_adds": len(plan.blocks),
                "notes": "batch norm frozen and folded into the Convs; activation "
                "thresholds fixed at the PTQ ones; weights per channel, recomputed every step"}


# ----------------------------------------------------------------------------- the epoch loop

def _epochs(run: _Run, record: dict[str, Any], start_epoch: int, step: int) -> dict[str, Any]:
    """Epoch after epoch from where the run stands, each one validated, checked and saved; a QAT run ends with
    its QDQ model. Returns the record."""
    cfg = run.cfg
    for epoch in range(start_epoch, cfg.epochs):
        row = _train_epoch(run, record, epoch, step)
        step = row["step"]
        _end_epoch(run, record, row)
        if cfg.max_steps is not None and step >= cfg.max_steps:
            break
    if run.model.qat is not None and run.where.info.is_main:
        _finish_qat(run, record)
        write_record(record, run.out)
    return record


def _train_epoch(run: _Run, record: dict[str, Any], epoch: int, step: int) -> dict[str, Any]:
    """One epoch's steps from global step ``step`` (up to --max-steps); returns its row of the record (without
    validation). Its loss is summed on the device and read once, at the end (on a GPU a read is a sync)."""
    cfg, fit, info = run.cfg, run.fit, run.where.info
    fit.sampler.set_epoch(epoch)
    fit.train_set.epoch = epoch
    fit.module.train()
    if cfg.freeze_bn:  # running statistics stay as they are
        for bn in _batch_norms(run.model.net):
            bn.eval()
    t0, seen, n_steps = time.perf_counter(), 0, 0
    loss_sum = torch.zeros((), dtype=torch.float64, device=run.where.device)  # summed on the device: no sync per step
    lr = poly_lr(cfg, min(step, fit.total - 1), fit.total)
    for x, y in fit.loader:
        if cfg.max_steps is not None and step >= cfg.max_steps:
            break
        lr = poly_lr(cfg, step, fit.total)
        loss, value = _step(run, record, x, y, lr, epoch, step)
        step += 1
        n_steps += 1
        seen += x.shape[0] * info.world
        loss_sum += loss / info.world  # this process's share of the global-batch loss
        if run.where.progress and value is not None:
            elapsed = time.perf_counter() - t0
            run.where.progress({"epoch": epoch + 1, "epochs": cfg.epochs, "step": step, "steps": fit.total,
                                "loss": float(loss_sum) / n_steps, "lr": lr, "images_per_s": seen / max(elapsed, 1e-9)})
    seconds = time.perf_counter() - t0
    epoch_loss = float(distributed.all_reduce_sum(loss_sum, info)) / max(n_steps, 1)
    if not math.isfinite(epoch_loss):
        raise _diverged(f"the training loss became {epoch_loss} in epoch {epoch + 1}", "lower --lr (or check the data)",
                        record)
    return {"epoch": epoch + 1, "step": step, "lr": lr if n_steps else None, "seconds": seconds,
            "loss": epoch_loss, "images_per_s": seen / max(seconds, 1e-9)}


def _step(run: _Run, record: dict[str, Any], x: torch.Tensor, y: torch.Tensor, lr: float, epoch: int,
          step: int) -> tuple[torch.Tensor, float | None]:
    """One optimizer step at ``lr`` on this process's share of a global batch; returns its loss (detached, on the
    device) and the loss's value where it was read (every step on a CPU, every LOG_EVERY-th on a GPU)."""
    fit, info, device, n = run.fit, run.where.info, run.where.device, run.data.train.num_classes
    for g in fit.opt.param_groups:
        g["lr"] = lr
    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    valid = y != IGNORE
    w_valid = (fit.class_weights[y.clamp_max(n - 1)] * valid).sum() if fit.class_weights is not None else valid.sum()
    denom = distributed.all_reduce_sum(w_valid.double().detach(), info).clamp_min(1)
    try:
        with torch.autocast(device.type, dtype=torch.float16, enabled=run.where.amp):
            logits = fit.module(x)
        aux = None
        if isinstance(logits, tuple):  # the aux head's logits too (torchvision's recipe: weight 0.5)
            logits, aux = logits
        loss = F.cross_entropy(logits.float(), y, weight=fit.class_weights, ignore_index=IGNORE, reduction="sum")
        if aux is not None:
            loss = loss + AUX_WEIGHT * F.cross_entropy(aux.float(), y, weight=fit.class_weights,
                                                       ignore_index=IGNORE, reduction="sum")
        loss = loss * info.world / denom.to(loss)  # DDP averages over processes: the global-batch mean
        # on the CPU the value costs nothing and is checked before the step; on a GPU reading it is a
        # sync, so it is read every LOG_EVERY steps (AMP's GradScaler skips steps with non-finite grads)
        value = loss.item() if not run.where.amp or (step + 1) % LOG_EVERY == 0 else None
        if value is not None and not math.isfinite(value):  # the weights stay the last finite ones
            raise _diverged(f"the training loss became {value} at epoch {epoch + 1}, step {step + 1}",
                            "lower --lr (or check the data)", record)
        fit.opt.zero_grad(set_to_none=True)
        fit.scaler.scale(loss).backward()
        fit.scaler.step(fit.opt)
        fit.scaler.update()
    except torch.OutOfMemoryError as e:
        raise DeepLabEdgeError(f"out of memory at batch {run.data.local_bs} x {run.cfg.crop}^2 per process; lower "
                               "--crop or --batch-size") from e
    return loss.detach(), value


def _diverged(problem: str, fix: str, record: dict[str, Any]) -> DeepLabEdgeError:
    """The one line for a run whose loss or weights stopped being finite, saying what its folder holds."""
    return DeepLabEdgeError(f"{problem}; {fix}; " + ("last.pt holds the last epoch that finished" if record["epochs"]
                                                     else "no checkpoint was written"))


# ----------------------------------------------------------------------------- saving and records

def _end_epoch(run: _Run, record: dict[str, Any], row: dict[str, Any]) -> None:
    """An epoch's end: validation where due (best.pt when it is the best), the weights checked finite, the row
    recorded; the main process logs it and writes last.pt, the state and the record."""
    cfg, model, info, epoch = run.cfg, run.model, run.where.info, row["epoch"]
    val = run.data.val
    if val is not None and (epoch % cfg.val_every == 0 or epoch == cfg.epochs):
        res = _validate(model.net, val, model.eval_pre, run.where.device, info)
        row.update(val_miou=res["miou"], val_pixel_acc=res["pixel_acc"],
                   val_class_iou=dict(zip(run.data.train.classes, res["class_iou"])))
        if record["best"] is None or res["miou"] > record["best"]["val_miou"]:
            record["best"] = {"epoch": epoch, "val_miou": res["miou"]}
            if info.is_main:
                _save_model(model, cfg, record, run.out / "best.pt")
    if not all(bool(torch.isfinite(p).all()) for p in model.net.parameters()):
        raise _diverged(f"the weights are no longer finite after epoch {epoch}", "lower --lr", record)
    record["epochs"].append(row)
    if info.is_main:
        run.where.log(f"epoch {epoch}/{cfg.epochs}: loss {row['loss']:.4f}"
                      + (f", val mIoU {100 * row['val_miou']:.2f}%" if "val_miou" in row else ""))
        _save_model(model, cfg, record, run.out / "last.pt")
        _save_state(model.net, run.fit.opt, run.fit.scaler, epoch, row["step"], record, run.out / STATE)
        write_record(record, run.out)


def _finish_qat(run: _Run, record: dict[str, Any]) -> None:
    """model_qdq.onnx from the last weights, checked against the fake-quant model it came from."""
    cfg, out, fq, eval_pre = run.cfg, run.out, run.model.qat, run.model.eval_pre
    m = run.model.net
    images = [run.data.train.load(i)[1] for i in range(min(2, len(run.data.train)))]
    m.eval()
    x = [eval_pre(im)[0][None] for im in images]
    dev = next(m.parameters()).device
    with torch.no_grad():
        fake = [m(t.to(dev)).float().cpu() for t in x]
    fq.remove()
    # the QDQ model belongs to last.pt (build --weights last.pt --qdq model_qdq.onnx checks that)
    qmeta = {**run.model.meta, "preprocess": asdict(eval_pre), "sha256": file_sha256(out / "last.pt")}
    with temp_dir() as work:
        info = qdq_from_model(m, qmeta, fq.ranges, fq.plan, images, out / "model_qdq.onnx", Path(work),
                              ranges_method=cfg.qat_ranges, images_sha1=record["qat"]["images_sha1"])
    runner = OnnxRunner(out / "model_qdq.onnx", optimize=False)
    same = total = 0
    worst = 0.0
    for t, f in zip(x, fake):
        q = runner(t)
        same += int((q.argmax(1) == f.argmax(1)).sum())
        total += f[:, 0].numel()
        worst = max(worst, float((q - f).abs().max()))
    record["qat"].update(qdq_onnx=info["qdq_onnx"], qdq_from="last.pt", qdq_vs_fake_quant_agreement=same / total,
                         qdq_vs_fake_quant_max_abs=worst, logit_range=float(np.max([f.abs().max() for f in fake])))
    run.where.log(f"QAT: wrote {info['qdq_onnx']} ({info['quantized_convs']} Convs in int8); against the fake-quant "
                  f"model on {len(x)} images: argmax agreement {100 * same / total:.3f}%, max |logit diff| "
                  f"{worst:.2e}")


def _save_model(model: _Model, cfg: TrainConfig, record: dict[str, Any], path: Path) -> None:
    """A checkpoint of the model as it stands (plain BatchNorm, whole-image preprocessing, where it came from)."""
    m = model.net
    if any(isinstance(x, torch.nn.SyncBatchNorm) for x in m.modules()):  # checkpoints hold plain BatchNorm
        config = dict(m.config)
        plain = get_model(config.pop("arch"), **config)
        plain.load_state_dict(m.state_dict())  # SyncBatchNorm's parameters and buffers are BatchNorm's
        m = plain
    meta = {**model.meta, "preprocess": asdict(model.eval_pre),
            "source": {"format": "train", "data": cfg.data, "split": cfg.split, "init": cfg.weights or cfg.arch,
                       "epochs": len(record["epochs"]), "best": record["best"]}}
    meta.pop("sha256", None)
    if "qat" in record:  # an FP32 checkpoint whose weights were trained for these int8 thresholds
        meta["qat"] = {k: record["qat"][k] for k in ("ranges", "ranges_method", "calibration_images",
                                                     "calibration_data")}
    save_checkpoint(m, meta, path)


def _save_state(model, opt, scaler, epoch: int, step: int, record: dict[str, Any], path: Path) -> None:
    """Everything ``--resume`` needs to continue exactly: weights, optimizer, the AMP loss scale (GradScaler),
    PyTorch's CPU and CUDA random states, where the run stands, and its record."""
    m = model.module if hasattr(model, "module") else model
    state = {"arch": m.config["arch"], "num_classes": m.num_classes, "model": m.state_dict(),
             "optimizer": opt.state_dict(), "epoch": epoch, "step": step, "torch_rng": torch.get_rng_state(),
             "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
             "scaler": scaler.state_dict(), "record": json.dumps(record, default=str)}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _restore_random_and_scale(st: dict[str, Any], scaler) -> None:
    """PyTorch's random states and the loss scale as the state saved them (a state from before they were saved
    restores the CPU state only: the loss scale then restarts at its initial value, as it did)."""
    torch.set_rng_state(st["torch_rng"])
    cuda = st.get("cuda_rng") or []
    if cuda and torch.cuda.is_available():
        if len(cuda) != torch.cuda.device_count():
            raise DeepLabEdgeError(f"the run was saved with {len(cuda)} CUDA devices and this machine has "
                                   f"{torch.cuda.device_count()}; resume it where it was trained for an exact "
                                   "continuation, or train into a new folder")
        torch.cuda.set_rng_state_all(cuda)
    if st.get("scaler"):
        scaler.load_state_dict(st["scaler"])


def write_record(record: dict[str, Any], out: Path) -> dict[str, str]:
    """train_record.json, train_record.csv (one row per epoch) and train_curve.png (loss and val mIoU)."""
    files = {"json": out / "train_record.json", "csv": out / "train_record.csv"}
    with atomic_path(files["json"]) as tmp:
        tmp.write_text(json.dumps(record, indent=1, default=str))
    buf = io.StringIO()
    cols = ["epoch", "step", "loss", "lr", "seconds", "images_per_s", "val_miou", "val_pixel_acc"]
    wr = csv.DictWriter(buf, cols, extrasaction="ignore")
    wr.writeheader()
    wr.writerows(record["epochs"])
    with atomic_path(files["csv"]) as tmp:
        tmp.write_text(buf.getvalue())
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return {k: str(v) for k, v in files.items()}
    ep = [r["epoch"] for r in record["epochs"]]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(ep, [r["loss"] for r in record["epochs"]], "o-", label="train loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    val = [(r["epoch"], 100 * r["val_miou"]) for r in record["epochs"] if "val_miou" in r]
    if val:
        ax2 = ax.twinx()
        ax2.plot(*zip(*val), "s-", color="tab:green", label="val mIoU")
        ax2.set_ylabel("val mIoU %")
    ax.set_title(f"training: {record['config']['data']}")
    fig.tight_layout()
    files["png"] = out / "train_curve.png"
    with atomic_path(files["png"]) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return {k: str(v) for k, v in files.items()}


def poly_lr(cfg: TrainConfig, step: int, total: int) -> float:
    """The learning rate at ``step`` of ``total``: ``lr * (1 - step / total) ** power``."""
    return cfg.lr * math.pow(1 - step / total, cfg.poly_power)
