"""A minimal TFLite writer (flatbuffers through the ``tflite`` package's builder functions),
used to make small float DeepLab-v3 MobileNetV2 graphs of other shapes than Google's file:
other widths, class counts, output strides, atrous ASPP branches. The LiteRT interpreter runs
them, so the importer is tested on graphs it has never seen against an independent runtime.
"""

from __future__ import annotations

import flatbuffers
import numpy as np
import tflite
from tflite import BuiltinOperator as OP
from tflite import BuiltinOptions as OPT

FLOAT32, INT32 = tflite.TensorType.FLOAT32, tflite.TensorType.INT32
NONE, RELU, RELU6 = 0, 1, 3
SAME, VALID = 0, 1


class Writer:
    def __init__(self) -> None:
        self.tensors: list[tuple[str, list[int], int, np.ndarray | None]] = []
        self.ops: list[tuple[int, list[int], list[int], int, dict]] = []
        self.inputs: list[int] = []
        self.outputs: list[int] = []

    def tensor(self, name: str, shape, dtype=FLOAT32, data: np.ndarray | None = None) -> int:
        self.tensors.append((name, [int(s) for s in shape], dtype, data))
        return len(self.tensors) - 1

    def op(self, code: int, inputs: list[int], outputs: list[int], opt_type: int = 0, **options) -> None:
        self.ops.append((code, inputs, outputs, opt_type, options))

    # ---------------------------------------------------------------- serialisation
    def _options(self, b: flatbuffers.Builder, opt_type: int, o: dict) -> int:
        if opt_type == OPT.Conv2DOptions:
            tflite.Conv2DOptionsStart(b)
            tflite.Conv2DOptionsAddPadding(b, o.get("padding", SAME))
            tflite.Conv2DOptionsAddStrideW(b, o.get("stride", 1))
            tflite.Conv2DOptionsAddStrideH(b, o.get("stride", 1))
            tflite.Conv2DOptionsAddDilationWFactor(b, o.get("dilation", 1))
            tflite.Conv2DOptionsAddDilationHFactor(b, o.get("dilation", 1))
            tflite.Conv2DOptionsAddFusedActivationFunction(b, o.get("act", NONE))
            return tflite.Conv2DOptionsEnd(b)
        if opt_type == OPT.DepthwiseConv2DOptions:
            tflite.DepthwiseConv2DOptionsStart(b)
            tflite.DepthwiseConv2DOptionsAddPadding(b, SAME)
            tflite.DepthwiseConv2DOptionsAddStrideW(b, o.get("stride", 1))
            tflite.DepthwiseConv2DOptionsAddStrideH(b, o.get("stride", 1))
            tflite.DepthwiseConv2DOptionsAddDepthMultiplier(b, 1)
            tflite.DepthwiseConv2DOptionsAddDilationWFactor(b, o.get("dilation", 1))
            tflite.DepthwiseConv2DOptionsAddDilationHFactor(b, o.get("dilation", 1))
            tflite.DepthwiseConv2DOptionsAddFusedActivationFunction(b, o.get("act", NONE))
            return tflite.DepthwiseConv2DOptionsEnd(b)
        if opt_type == OPT.Pool2DOptions:
            tflite.Pool2DOptionsStart(b)
            tflite.Pool2DOptionsAddPadding(b, VALID)
            tflite.Pool2DOptionsAddStrideW(b, 1)
            tflite.Pool2DOptionsAddStrideH(b, 1)
            tflite.Pool2DOptionsAddFilterWidth(b, o["size"][1])
            tflite.Pool2DOptionsAddFilterHeight(b, o["size"][0])
            return tflite.Pool2DOptionsEnd(b)
        if opt_type == OPT.ConcatenationOptions:
            tflite.ConcatenationOptionsStart(b)
            tflite.ConcatenationOptionsAddAxis(b, 3)
            return tflite.ConcatenationOptionsEnd(b)
        if opt_type == OPT.AddOptions:
            tflite.AddOptionsStart(b)
            return tflite.AddOptionsEnd(b)
        if opt_type == OPT.ResizeBilinearOptions:
            tflite.ResizeBilinearOptionsStart(b)
            tflite.ResizeBilinearOptionsAddAlignCorners(b, o.get("align_corners", True))
            return tflite.ResizeBilinearOptionsEnd(b)
        raise ValueError(opt_type)

    @staticmethod
    def _ivec(b: flatbuffers.Builder, start, values) -> int:
        start(b, len(values))
        for v in reversed(values):
            b.PrependInt32(v)
        return b.EndVector()

    @staticmethod
    def _ovec(b: flatbuffers.Builder, start, offsets) -> int:
        start(b, len(offsets))
        for v in reversed(offsets):
            b.PrependUOffsetTRelative(v)
        return b.EndVector()

    def to_bytes(self) -> bytes:
        b = flatbuffers.Builder(1 << 20)
        # buffers: 0 is the empty sentinel, then one per constant tensor
        buffer_data = [None] + [t[3] for t in self.tensors if t[3] is not None]
        buf_offsets = []
        for data in buffer_data:
            vec = None
            if data is not None:
                raw = np.ascontiguousarray(data).tobytes()
                b.StartVector(1, len(raw), 16)
                b.head = b.head - len(raw)
                b.Bytes[b.head:b.head + len(raw)] = raw
                vec = b.EndVector()
            tflite.BufferStart(b)
            if vec is not None:
                tflite.BufferAddData(b, vec)
            buf_offsets.append(tflite.BufferEnd(b))
        tensor_offsets, next_buf = [], 1
        for name, shape, dtype, data in self.tensors:
            n = b.CreateString(name)
            sh = self._ivec(b, tflite.TensorStartShapeVector, shape)
            tflite.TensorStart(b)
            tflite.TensorAddShape(b, sh)
            tflite.TensorAddType(b, dtype)
            tflite.TensorAddName(b, n)
            if data is not None:
                tflite.TensorAddBuffer(b, next_buf)
                next_buf += 1
            else:
                tflite.TensorAddBuffer(b, 0)
            tensor_offsets.append(tflite.TensorEnd(b))
        codes = sorted({op[0] for op in self.ops})
        op_offsets = []
        for code, ins, outs, opt_type, options in self.ops:
            opt = self._options(b, opt_type, options) if opt_type else None
            iv = self._ivec(b, tflite.OperatorStartInputsVector, ins)
            ov = self._ivec(b, tflite.OperatorStartOutputsVector, outs)
            tflite.OperatorStart(b)
            tflite.OperatorAddOpcodeIndex(b, codes.index(code))
            tflite.OperatorAddInputs(b, iv)
            tflite.OperatorAddOutputs(b, ov)
            if opt is not None:
                tflite.OperatorAddBuiltinOptionsType(b, opt_type)
                tflite.OperatorAddBuiltinOptions(b, opt)
            op_offsets.append(tflite.OperatorEnd(b))
        tv = self._ovec(b, tflite.SubGraphStartTensorsVector, tensor_offsets)
        ov = self._ovec(b, tflite.SubGraphStartOperatorsVector, op_offsets)
        iv = self._ivec(b, tflite.SubGraphStartInputsVector, self.inputs)
        outv = self._ivec(b, tflite.SubGraphStartOutputsVector, self.outputs)
        tflite.SubGraphStart(b)
        tflite.SubGraphAddTensors(b, tv)
        tflite.SubGraphAddOperators(b, ov)
        tflite.SubGraphAddInputs(b, iv)
        tflite.SubGraphAddOutputs(b, outv)
        sg = tflite.SubGraphEnd(b)
        code_offsets = []
        for code in codes:
            tflite.OperatorCodeStart(b)
            tflite.OperatorCodeAddBuiltinCode(b, code)
            tflite.OperatorCodeAddDeprecatedBuiltinCode(b, min(code, 127))
            tflite.OperatorCodeAddVersion(b, 1)
            code_offsets.append(tflite.OperatorCodeEnd(b))
        cv = self._ovec(b, tflite.ModelStartOperatorCodesVector, code_offsets)
        sv = self._ovec(b, tflite.ModelStartSubgraphsVector, [sg])
        bv = self._ovec(b, tflite.ModelStartBuffersVector, buf_offsets)
        desc = b.CreateString("deeplab-edge test graph")
        tflite.ModelStart(b)
        tflite.ModelAddVersion(b, 3)
        tflite.ModelAddOperatorCodes(b, cv)
        tflite.ModelAddSubgraphs(b, sv)
        tflite.ModelAddBuffers(b, bv)
        tflite.ModelAddDescription(b, desc)
        b.Finish(tflite.ModelEnd(b), file_identifier=b"TFL3")
        return bytes(b.Output())


def _out_hw(h: int, stride: int) -> int:
    return (h + stride - 1) // stride  # SAME padding


def deeplab_mnv2_graph(*, side: int, stem: int, blocks: list[tuple[int, int, int, int, int]], num_classes: int,
                       rates: tuple[int, ...], concat_order: tuple[str, ...], seed: int = 0) -> bytes:
    """A float DeepLab-v3 MobileNetV2 graph. ``blocks``: (cin, hidden, cout, stride, dilation);
    the output is the logits resized (align_corners) to the input: [1, side, side, num_classes]."""
    rng = np.random.default_rng(seed)
    w = Writer()

    def const(name, shape, fan_in):
        return w.tensor(name, shape, data=(rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32))

    def conv(x, hw, cin, cout, k=1, stride=1, dilation=1, act=NONE, name="conv"):
        wt = const(f"{name}/w", [cout, k, k, cin], k * k * cin)
        bs = w.tensor(f"{name}/b", [cout], data=(0.1 * rng.standard_normal(cout)).astype(np.float32))
        oh = _out_hw(hw, stride)
        y = w.tensor(f"{name}/out", [1, oh, oh, cout])
        w.op(OP.CONV_2D, [x, wt, bs], [y], OPT.Conv2DOptions, stride=stride, dilation=dilation, act=act)
        return y, oh

    x = w.tensor("input", [1, side, side, 3])
    w.inputs = [x]
    cur, hw = conv(x, side, 3, stem, k=3, stride=2, act=RELU6, name="stem")
    for i, (cin, hidden, cout, stride, dil) in enumerate(blocks):
        inp = cur
        if hidden != cin:
            cur, hw = conv(cur, hw, cin, hidden, act=RELU6, name=f"b{i}/expand")
        dw = const(f"b{i}/dw/w", [1, 3, 3, hidden], 9)
        dwb = w.tensor(f"b{i}/dw/b", [hidden], data=(0.1 * rng.standard_normal(hidden)).astype(np.float32))
        oh = _out_hw(hw, stride)
        y = w.tensor(f"b{i}/dw/out", [1, oh, oh, hidden])
        w.op(OP.DEPTHWISE_CONV_2D, [cur, dw, dwb], [y], OPT.DepthwiseConv2DOptions, stride=stride, dilation=dil,
             act=RELU6)
        hw_in, hw = hw, oh
        cur, hw = conv(y, hw, hidden, cout, name=f"b{i}/project")
        if stride == 1 and cin == cout:
            s = w.tensor(f"b{i}/add", [1, hw, hw, cout])
            w.op(OP.ADD, [cur, inp], [s], OPT.AddOptions)
            cur = s
        assert hw_in >= hw
    feat, fhw, fc = cur, hw, blocks[-1][2]
    branches = {}
    pooled = w.tensor("pool/out", [1, 1, 1, fc])
    w.op(OP.AVERAGE_POOL_2D, [feat], [pooled], OPT.Pool2DOptions, size=(fhw, fhw))
    pc, _ = conv(pooled, 1, fc, 32, act=RELU, name="image_pooling")
    size = w.tensor("pool/size", [2], INT32, np.array([fhw, fhw], np.int32))
    up = w.tensor("pool/resized", [1, fhw, fhw, 32])
    w.op(OP.RESIZE_BILINEAR, [pc, size], [up], OPT.ResizeBilinearOptions, align_corners=True)
    branches["pool"] = up
    branches["1x1"], _ = conv(feat, fhw, fc, 32, act=RELU, name="aspp0")
    for r in rates:
        branches[f"rate{r}"], _ = conv(feat, fhw, fc, 32, k=3, dilation=r, act=RELU, name=f"aspp_r{r}")
    cat = w.tensor("concat", [1, fhw, fhw, 32 * len(branches)])
    w.op(OP.CONCATENATION, [branches[k] for k in concat_order], [cat], OPT.ConcatenationOptions)
    proj, _ = conv(cat, fhw, 32 * len(branches), 32, act=RELU, name="concat_projection")
    logits, _ = conv(proj, fhw, 32, num_classes, name="logits")
    osize = w.tensor("out/size", [2], INT32, np.array([side, side], np.int32))
    out = w.tensor("logits_resized", [1, side, side, num_classes])
    w.op(OP.RESIZE_BILINEAR, [logits, osize], [out], OPT.ResizeBilinearOptions, align_corners=True)
    w.outputs = [out]
    return w.to_bytes()
