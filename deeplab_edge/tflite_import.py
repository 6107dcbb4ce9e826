"""Import Google's DeepLab-v3 MobileNetV2 TFLite models into deeplab-edge.

The flatbuffer is parsed with the ``tflite`` package (the maintained Python binding of
TensorFlow Lite's schema). Nothing about one particular file is hard-coded: the trunk is
read from the graph block by block (stem conv, then each depthwise conv with its optional
1x1 expand conv before it, its 1x1 projection after it, and the residual ADD), which gives
the channel counts (any depth multiplier), strides and atrous rates; the head is found
from the trunk's output (1x1 branch, atrous branches, image pooling behind an average
pool, the concatenation, its projection, the logits conv) and the final resize tells
``align_corners``. Weights are dequantized (uint8/int8, per-tensor or per-channel; float
models too). Batch norm is already folded into the convs there, so each BatchNorm of the
PyTorch model becomes an identity that carries the folded bias.

The recorded preprocessing is the interpreter's: a uint8 input with scale s and zero
point z means real = (x - z) * s, so mean = z and std = 1 / s (for Google's models
(x - 128) / 128; DeepLab trained with x / 127.5 - 1). Images are resized (long side) and
padded bottom/right with the mean to the input size, as TF DeepLab evaluates.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .data.datasets import VOC_CLASSES
from .errors import ImportModelError
from .models import DeepLab, get_model

__all__ = ["import_tflite", "TFLiteGraph"]

# tflite.ActivationFunctionType
_ACT = {0: "none", 1: "relu", 2: "relu_n1_to_1", 3: "relu6", 4: "tanh", 5: "sign_bit", 6: "sigmoid"}
# tflite.TensorType of the types a DeepLab export uses
_NP = {0: np.float32, 2: np.int32, 3: np.uint8, 4: np.int64, 9: np.int8, 1: np.float16}


@dataclass
class Op:
    index: int
    name: str
    inputs: list[int]
    outputs: list[int]
    options: dict[str, Any] = field(default_factory=dict)


class TFLiteGraph:
    """Operators and tensors of subgraph 0 with producer/consumer maps."""

    def __init__(self, path: str | Path) -> None:
        try:
            import tflite
        except ImportError as e:  # pragma: no cover - dependency of the package
            raise ImportModelError("the 'tflite' package is missing; pip install tflite") from e
        path = Path(path)
        if not path.is_file():
            what = "is a folder" if path.is_dir() else "no such file"
            raise ImportModelError(f"{path}: {what}; pass the path of a .tflite model")
        self.buf = path.read_bytes()
        if len(self.buf) < 8 or self.buf[4:8] != b"TFL3":
            raise ImportModelError(f"{path}: not a TFLite flatbuffer (no 'TFL3' identifier); pass a .tflite model")
        self.sha256 = hashlib.sha256(self.buf).hexdigest()
        try:
            self.model = tflite.Model.GetRootAsModel(self.buf, 0)
            self.sg = self.model.Subgraphs(0)
            self.ops = [self._op(i, tflite) for i in range(self.sg.OperatorsLength())]
        except ImportModelError:
            raise
        except Exception as e:  # a truncated or corrupt flatbuffer fails deep inside flatbuffers
            raise ImportModelError(f"{path}: corrupt TFLite flatbuffer ({type(e).__name__}: {e})") from e
        self.producer = {t: op for op in self.ops for t in op.outputs}
        self.consumers: dict[int, list[Op]] = {}
        for op in self.ops:
            for t in op.inputs:
                if t >= 0:
                    self.consumers.setdefault(t, []).append(op)

    def _op(self, i: int, tflite) -> Op:
        op = self.sg.Operators(i)
        code = self.model.OperatorCodes(op.OpcodeIndex())
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        name = tflite.BUILTIN_OPCODE2NAME.get(builtin, str(builtin))
        inputs = [op.Inputs(j) for j in range(op.InputsLength())]
        outputs = [op.Outputs(j) for j in range(op.OutputsLength())]
        cls = {"CONV_2D": tflite.Conv2DOptions, "DEPTHWISE_CONV_2D": tflite.DepthwiseConv2DOptions,
               "AVERAGE_POOL_2D": tflite.Pool2DOptions, "RESIZE_BILINEAR": tflite.ResizeBilinearOptions,
               "CONCATENATION": tflite.ConcatenationOptions, "ADD": tflite.AddOptions}.get(name)
        options: dict[str, Any] = {}
        table = op.BuiltinOptions()
        if cls is not None and table is not None:
            o = cls()
            o.Init(table.Bytes, table.Pos)
            for key in ("StrideH", "StrideW", "DilationHFactor", "DilationWFactor", "Padding",
                        "FusedActivationFunction", "DepthMultiplier", "AlignCorners", "HalfPixelCenters",
                        "Axis", "FilterHeight", "FilterWidth"):
                if hasattr(o, key):
                    options[key] = getattr(o, key)()
        return Op(i, name, inputs, outputs, options)

    # ---------------------------------------------------------------- tensors
    def shape(self, t: int) -> list[int]:
        tensor = self.sg.Tensors(t)
        return [int(v) for v in tensor.ShapeAsNumpy()] if tensor.ShapeLength() else []

    def tensor_name(self, t: int) -> str:
        return self.sg.Tensors(t).Name().decode(errors="replace")

    def quantization(self, t: int) -> tuple[np.ndarray, np.ndarray, int] | None:
        q = self.sg.Tensors(t).Quantization()
        if q is None or q.ScaleLength() == 0:
            return None
        return q.ScaleAsNumpy().astype(np.float64), q.ZeroPointAsNumpy().astype(np.int64), q.QuantizedDimension()

    def tensor_type(self, t: int) -> int:
        return self.sg.Tensors(t).Type()

    def constant(self, t: int) -> np.ndarray:
        """A constant tensor's value, dequantized to float32."""
        tensor = self.sg.Tensors(t)
        data = self.model.Buffers(tensor.Buffer()).DataAsNumpy()
        if isinstance(data, int) or data is None or len(data) == 0:
            raise ImportModelError(f"tensor {self.tensor_name(t)!r} has no constant data; not a DeepLab weight")
        dtype = _NP.get(tensor.Type())
        if dtype is None:
            raise ImportModelError(f"tensor {self.tensor_name(t)!r} has unsupported type {tensor.Type()}")
        arr = np.frombuffer(data.tobytes(), dtype=dtype).reshape(self.shape(t))
        q = self.quantization(t)
        if q is None or dtype in (np.float32, np.float16):
            return arr.astype(np.float32)
        scale, zero, axis = q
        bshape = [1] * arr.ndim
        if scale.size > 1:
            bshape[axis] = scale.size
        return ((arr.astype(np.float64) - zero.reshape(bshape)) * scale.reshape(bshape)).astype(np.float32)

    def only_consumer(self, t: int, name: str | None = None) -> Op | None:
        ops = self.consumers.get(t, [])
        if len(ops) != 1 or (name is not None and ops[0].name != name):
            return None
        return ops[0]


# ------------------------------------------------------------------------------ parsing

@dataclass
class ConvW:
    op: Op
    weight: torch.Tensor  # PyTorch layout (out, in/groups, kh, kw)
    bias: torch.Tensor

    @property
    def act(self) -> str:
        return _ACT.get(self.op.options.get("FusedActivationFunction", 0), "?")

    @property
    def stride(self) -> int:
        return int(self.op.options.get("StrideH", 1))

    @property
    def dilation(self) -> int:
        return int(self.op.options.get("DilationHFactor", 1))


def _conv(g: TFLiteGraph, op: Op) -> ConvW:
    w = g.constant(op.inputs[1])
    if op.name == "CONV_2D":          # TFLite (out, kh, kw, in)
        weight = w.transpose(0, 3, 1, 2)
    elif op.name == "DEPTHWISE_CONV_2D":  # TFLite (1, kh, kw, out)
        if op.options.get("DepthMultiplier", 1) not in (0, 1) and w.shape[3] != g.shape(op.inputs[0])[3]:
            raise ImportModelError("depthwise conv with a channel multiplier is not a MobileNetV2 block")
        weight = w.transpose(3, 0, 1, 2)
    else:
        raise ImportModelError(f"expected a convolution, got {op.name}")
    opts = op.options
    if opts.get("StrideH") != opts.get("StrideW") or opts.get("DilationHFactor") != opts.get("DilationWFactor"):
        raise ImportModelError(f"op {op.index} ({op.name}) has unequal H/W stride or dilation; not supported")
    if weight.shape[2] != weight.shape[3] or weight.shape[2] not in (1, 3):
        raise ImportModelError(f"op {op.index} ({op.name}) has a {weight.shape[2]}x{weight.shape[3]} kernel; "
                               "expected 1x1 or 3x3")
    bias = g.constant(op.inputs[2]) if len(op.inputs) > 2 and op.inputs[2] >= 0 else np.zeros(weight.shape[0])
    return ConvW(op, torch.from_numpy(np.ascontiguousarray(weight)), torch.from_numpy(np.asarray(bias, np.float32)))


def _expect(cond: bool, msg: str) -> None:
    if not cond:
        raise ImportModelError(f"not a DeepLab-v3 MobileNetV2 TFLite model: {msg}")


@dataclass
class Block:
    expand: ConvW | None
    depthwise: ConvW
    project: ConvW
    residual: bool
    output: int


@dataclass
class Parsed:
    input_tensor: int
    input_hw: tuple[int, int]
    mean: float
    std: float
    stem: ConvW
    blocks: list[Block]
    aspp0: ConvW
    atrous: list[ConvW]
    pooling: ConvW | None
    concat_order: list[str]  # branch keys in the concatenation's order: "1x1", "rate<r>", "pool"
    projection: ConvW
    logits: ConvW
    align_corners: bool


def _passthrough(g: TFLiteGraph, t: int) -> int:
    """Follow a tensor back through RESIZE_BILINEAR / QUANTIZE / DEQUANTIZE / RESHAPE to its source."""
    while t in g.producer and g.producer[t].name in ("RESIZE_BILINEAR", "QUANTIZE", "DEQUANTIZE", "RESHAPE"):
        t = g.producer[t].inputs[0]
    return t


def _forward_passthrough(g: TFLiteGraph, t: int) -> tuple[int, list[Op]]:
    seen: list[Op] = []
    while True:
        op = g.only_consumer(t)
        if op is None or op.name not in ("RESIZE_BILINEAR", "QUANTIZE", "DEQUANTIZE"):
            return t, seen
        seen.append(op)
        t = op.outputs[0]


def asymmetric_same_padding(g: TFLiteGraph) -> list[str]:
    """Strided SAME convs whose input size is even: TF pads them bottom/right only, PyTorch's
    symmetric padding then shifts the result by a pixel. Sizes of the form k * stride + 1
    (DeepLab's 513) never hit this."""
    found = []
    for op in g.ops:
        if op.name in ("CONV_2D", "DEPTHWISE_CONV_2D") and op.options.get("StrideH", 1) > 1 \
                and op.options.get("Padding") == 0:
            h, w = g.shape(op.inputs[0])[1:3]
            if h % 2 == 0 or w % 2 == 0:
                found.append(f"op {op.index} ({op.name}) on {h}x{w}")
    return found


def input_normalization(g: TFLiteGraph, inp: int) -> tuple[float, float]:
    """(mean, std) in pixel units such that the graph sees (x - mean) / std."""
    q = g.quantization(inp)
    if q is not None and g.tensor_type(inp) in (3, 9):
        scale, zero = float(q[0][0]), int(q[1][0])
        # uint8: real = (x - z) * s; int8 holds x - 128, so real = (x - (z + 128)) * s
        return float(zero if g.tensor_type(inp) == 3 else zero + 128), 1.0 / scale
    return 127.5, 127.5  # float export: TF DeepLab's x / 127.5 - 1 happens outside the graph


def parse(g: TFLiteGraph) -> Parsed:
    """The DeepLab-v3 MobileNetV2 in ``g``, read from the graph in order: the input and its normalisation,
    the stem conv, the inverted residual blocks, the ASPP branches on the trunk's output, their
    concatenation and projection, the logits conv and the final resize."""
    inp, hw, mean, std = _input(g)
    first = g.only_consumer(inp)
    _expect(first is not None and first.name == "CONV_2D", "the input does not feed one CONV_2D (the stem)")
    stem = _conv(g, first)
    _expect(stem.weight.shape[1] == 3 and stem.act == "relu6", "the stem is not a 3-channel ReLU6 conv")
    blocks, features = _blocks(g, first.outputs[0])
    aspp0, atrous, pooling, branch_of = _aspp_branches(g, features)
    order, projection, after = _concat_projection(g, branch_of)
    logits, align = _logits(g, after)
    return Parsed(inp, hw, mean, std, stem, blocks, aspp0, atrous, pooling, order, projection, logits, align)


def _input(g: TFLiteGraph) -> tuple[int, tuple[int, int], float, float]:
    """(the one input tensor, its (H, W), the mean and std it is normalised with)."""
    sg = g.sg
    _expect(sg.InputsLength() == 1, f"expected 1 input, got {sg.InputsLength()}")
    inp = sg.Inputs(0)
    shape = g.shape(inp)
    _expect(len(shape) == 4 and shape[3] == 3, f"expected an NHWC RGB input, got shape {shape}")
    mean, std = input_normalization(g, inp)
    return inp, (shape[1], shape[2]), mean, std


def _blocks(g: TFLiteGraph, cur: int) -> tuple[list[Block], int]:
    """The MobileNetV2 inverted residual blocks that follow tensor ``cur`` (the stem's output), and the
    tensor after the last (the trunk's output)."""
    blocks: list[Block] = []
    while True:
        nxt = g.consumers.get(cur, [])
        # A MobileNetV2 block starts with a 1x1 expand conv or directly with the depthwise conv.
        dw_op = next((o for o in nxt if o.name == "DEPTHWISE_CONV_2D"), None)
        expand = None
        if dw_op is None:
            ex_op = next((o for o in nxt if o.name == "CONV_2D" and g.only_consumer(o.outputs[0], "DEPTHWISE_CONV_2D")),
                         None)
            if ex_op is None:
                break
            expand = _conv(g, ex_op)
            dw_op = g.only_consumer(ex_op.outputs[0], "DEPTHWISE_CONV_2D")
        depthwise = _conv(g, dw_op)
        pj_op = g.only_consumer(dw_op.outputs[0], "CONV_2D")
        _expect(pj_op is not None, f"depthwise conv {dw_op.index} is not followed by a 1x1 projection")
        project = _conv(g, pj_op)
        _expect(project.act == "none", f"projection conv {pj_op.index} has activation {project.act}; expected none")
        out = pj_op.outputs[0]
        add = g.only_consumer(out, "ADD")
        residual = add is not None and set(add.inputs) == {out, cur}
        if residual:
            out = add.outputs[0]
        blocks.append(Block(expand, depthwise, project, residual, out))
        cur = out
    _expect(len(blocks) > 0, "no inverted residual blocks follow the stem")
    return blocks, cur


def _aspp_branches(g: TFLiteGraph, features: int
                   ) -> tuple[ConvW, list[ConvW], ConvW | None, dict[int, str]]:
    """The head's branches on the trunk's output: (the 1x1 conv, the atrous convs, the image pooling conv
    behind its average pool or None, each branch's output tensor -> its key in :attr:`Parsed.concat_order`)."""
    aspp0 = None
    atrous: list[ConvW] = []
    pooling = None
    branch_of: dict[int, str] = {}
    for op in g.consumers.get(features, []):
        if op.name == "CONV_2D":
            c = _conv(g, op)
            if c.weight.shape[-1] == 1:
                _expect(aspp0 is None, "two 1x1 convs on the trunk output")
                aspp0 = c
                branch_of[op.outputs[0]] = "1x1"
            else:
                atrous.append(c)
                branch_of[op.outputs[0]] = f"rate{c.dilation}"
        elif op.name == "AVERAGE_POOL_2D":
            pc = g.only_consumer(op.outputs[0], "CONV_2D")
            _expect(pc is not None, "the average pool is not followed by a conv (image pooling)")
            pooling = _conv(g, pc)
            branch_of[pc.outputs[0]] = "pool"
        elif op.name in ("DEPTHWISE_CONV_2D",):
            raise ImportModelError("separable atrous ASPP branches (aspp_with_separable_conv) are not supported; "
                                   "export the model with plain atrous convs")
        else:
            raise ImportModelError(f"not a DeepLab-v3 MobileNetV2 TFLite model: unexpected {op.name} on the trunk "
                                   "output (a decoder or another head?)")
    _expect(aspp0 is not None, "no 1x1 ASPP branch on the trunk output")
    return aspp0, atrous, pooling, branch_of


def _concat_projection(g: TFLiteGraph, branch_of: dict[int, str]) -> tuple[list[str], ConvW, int]:
    """(the branches' keys in the concatenation's order, the 1x1 projection after it, the projection's output)."""
    cat_candidates = {op.index: op for t in branch_of for op in g.ops if op.name == "CONCATENATION"
                      and t in [_passthrough(g, i) for i in op.inputs]}
    if not cat_candidates:
        raise ImportModelError("not a DeepLab-v3 MobileNetV2 TFLite model: the ASPP branches are not concatenated")
    _expect(len(cat_candidates) == 1, "ASPP branches feed several concatenations")
    cat = next(iter(cat_candidates.values()))
    srcs = [_passthrough(g, i) for i in cat.inputs]
    _expect(all(s in branch_of for s in srcs) and len(srcs) == len(branch_of),
            "the concatenation does not join exactly the ASPP branches")
    order = [branch_of[s] for s in srcs]
    proj_op = g.only_consumer(cat.outputs[0], "CONV_2D")
    _expect(proj_op is not None, "the ASPP concatenation is not followed by a 1x1 projection")
    return order, _conv(g, proj_op), proj_op.outputs[0]


def _logits(g: TFLiteGraph, after: int) -> tuple[ConvW, bool]:
    """(the linear 1x1 logits conv on tensor ``after``, whether the final resize aligns corners)."""
    lg_op = g.only_consumer(after, "CONV_2D")
    _expect(lg_op is not None, "the ASPP projection is not followed by the logits conv")
    logits = _conv(g, lg_op)
    _expect(logits.act == "none" and logits.weight.shape[-1] == 1, "the logits conv is not a linear 1x1 conv")
    _, resizes = _forward_passthrough(g, lg_op.outputs[0])
    align = bool(resizes[-1].options.get("AlignCorners", False)) if any(
        o.name == "RESIZE_BILINEAR" for o in resizes) else False
    return logits, align


# ------------------------------------------------------------------------------ loading

def _set_conv(conv: nn.Conv2d, w: ConvW, bn: nn.BatchNorm2d | None, what: str) -> None:
    if tuple(conv.weight.shape) != tuple(w.weight.shape):
        raise ImportModelError(f"{what}: TFLite weight {tuple(w.weight.shape)} does not fit the model's "
                               f"{tuple(conv.weight.shape)}")
    with torch.no_grad():
        conv.weight.copy_(w.weight)
        if bn is None:
            conv.bias.copy_(w.bias)
        else:  # folded batch norm: identity scale, the folded bias as its shift
            bn.weight.fill_(1.0)
            bn.bias.copy_(w.bias)
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0 - bn.eps)


def build_model(p: Parsed) -> DeepLab:
    stride = p.stem.stride
    for b in p.blocks:
        stride *= b.depthwise.stride
    blocks = []
    for b in p.blocks:
        cin = b.expand.weight.shape[1] if b.expand is not None else b.depthwise.weight.shape[0]
        blocks.append([cin, b.depthwise.weight.shape[0], b.project.weight.shape[0], b.depthwise.stride,
                       b.depthwise.dilation])
    rates = [c.dilation for c in p.atrous]
    model = get_model("deeplabv3_mobilenet_v2", num_classes=int(p.logits.weight.shape[0]), output_stride=stride,
                      aspp_rates=rates, head_conv=False, align_corners=p.align_corners,
                      stem=int(p.stem.weight.shape[0]), blocks=blocks, aspp_channels=int(p.aspp0.weight.shape[0]))
    if p.pooling is None:
        raise ImportModelError("models without image pooling are not supported yet")
    trunk = model.backbone
    _set_conv(trunk[0][0], p.stem, trunk[0][1], "stem")
    for i, b in enumerate(p.blocks, start=1):
        seq = trunk[i].conv
        j = 0
        if b.expand is not None:
            _set_conv(seq[0][0], b.expand, seq[0][1], f"block {i} expand")
            j = 1
        _set_conv(seq[j][0], b.depthwise, seq[j][1], f"block {i} depthwise")
        _set_conv(seq[j + 1], b.project, seq[j + 2], f"block {i} project")
    aspp = model.classifier[0]
    _set_conv(aspp.convs[0][0], p.aspp0, aspp.convs[0][1], "ASPP 1x1")
    for k, c in enumerate(p.atrous, start=1):
        _set_conv(aspp.convs[k][0], c, aspp.convs[k][1], f"ASPP rate {c.dilation}")
    _set_conv(aspp.convs[-1][1], p.pooling, aspp.convs[-1][2], "image pooling")
    # The projection's input channels follow the graph's concatenation order; ours is
    # [1x1, atrous by rate..., pooling].
    ours = ["1x1"] + [f"rate{r}" for r in rates] + ["pool"]
    width = p.aspp0.weight.shape[0]
    w = p.projection.weight
    _expect(w.shape[1] == width * len(p.concat_order), "projection input channels do not match the branches")
    chunks = {k: w[:, i * width:(i + 1) * width] for i, k in enumerate(p.concat_order)}
    reordered = ConvW(p.projection.op, torch.cat([chunks[k] for k in ours], dim=1), p.projection.bias)
    _set_conv(aspp.project[0], reordered, aspp.project[1], "ASPP projection")
    _set_conv(model.classifier[1], p.logits, None, "logits")
    for c, what in [(p.aspp0, "ASPP 1x1"), (p.projection, "projection")] + [(c, "ASPP") for c in p.atrous] + (
            [(p.pooling, "image pooling")]):
        if c.act != "relu":
            raise ImportModelError(f"{what} conv has activation {c.act}; the PyTorch head uses ReLU")
    for i, b in enumerate(p.blocks, start=1):
        for c in (b.expand, b.depthwise):
            if c is not None and c.act != "relu6":
                raise ImportModelError(f"block {i} has activation {c.act}; MobileNetV2 uses ReLU6")
    return model.eval()


def read_labels(path: str | Path, num_classes: int) -> list[str]:
    """Class names, one per line (the first ``num_classes`` non-empty lines)."""
    path = Path(path)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "file not found"
        raise ImportModelError(f"--labels {path}: {what}; give a text file with one class name per line")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise ImportModelError(f"--labels {path}: not a UTF-8 text file; give a text file with one class name per "
                               "line") from None
    if "\x00" in text:
        raise ImportModelError(f"--labels {path}: a binary file; give a text file with one class name per line")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if len(lines) < num_classes:
        raise ImportModelError(f"{path}: {len(lines)} class names for a {num_classes}-class model; "
                               "give one name per line")
    names = lines[:num_classes]
    dup = next((n for i, n in enumerate(names) if n in names[:i]), None)
    if dup is not None:  # two classes under one name: their pixels would be counted as one class
        raise ImportModelError(f"--labels {path}: the class name {dup!r} is given twice; give each class its own name")
    return names


def preprocess_of(p: Parsed) -> dict[str, Any]:
    """The interpreter's preprocessing: long side to the input size, padded with the mean."""
    return {"size": max(p.input_hw), "resize": "long_side", "pad": True, "mean": [p.mean] * 3,
            "std": [p.std] * 3, "pad_value": p.mean}


def import_tflite(path: str | Path, labels: str | Path | None = None) -> tuple[DeepLab, dict[str, Any]]:
    """Convert a TFLite DeepLab-v3 MobileNetV2 into a model and its checkpoint metadata."""
    if labels is not None and not Path(labels).is_file():  # before the work
        read_labels(labels, 0)
    g = TFLiteGraph(path)
    p = parse(g)
    model = build_model(p)
    n = model.num_classes
    if labels is not None:
        classes = read_labels(labels, n)
    else:
        classes = VOC_CLASSES if n == 21 else [f"class_{i}" for i in range(n)]
    meta = {
        "classes": classes,
        "ignore_index": 255,
        "preprocess": preprocess_of(p),
        "source": {"format": "tflite", "file": Path(path).name, "sha256": g.sha256,
                   "input_tensor": g.tensor_name(p.input_tensor), "ops": len(g.ops),
                   "blocks": len(p.blocks), "concat_order": p.concat_order},
    }
    asym = asymmetric_same_padding(g)
    if asym:
        meta["warnings"] = [f"TF SAME padding is asymmetric at {', '.join(asym)}; the PyTorch model pads "
                            "symmetrically there, so its outputs are shifted by a pixel against the TFLite model"]
    return model, meta
