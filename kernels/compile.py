"""Compile the Triton kernels for real GPUs on a machine without one, and read their resources.

``triton.compile(ASTSource(...), target=GPUTarget("cuda", cc, 32))`` runs Triton's whole
pipeline down to a cubin with the ``ptxas`` bundled in the triton wheel; its bundled
``cuobjdump --dump-resource-usage`` then reports registers per thread, stack and local
memory (spills) and static shared memory. Triton's shared memory is dynamic, so the
kernel's ``metadata.shared`` is added. Occupancy follows the CUDA occupancy model with
the per-architecture limits below.
"""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from ..errors import KernelUnavailableError
from .dtypes import DTYPES

__all__ = ["ARCHS", "CompileResult", "KernelSpec", "compile_all", "explain", "kernel_specs", "occupancy"]


@dataclass(frozen=True)
class Arch:
    """Per-SM limits from the CUDA C++ Programming Guide, "Technical Specifications per
    Compute Capability" (registers 64 K per SM, 255 per thread, allocated per warp in
    units of 256; 1 KB of shared memory reserved per block from cc 8.0 on)."""

    name: str
    cc: int
    max_warps: int
    max_blocks: int
    smem_per_sm: int
    smem_per_block: int
    regs_per_sm: int = 65536
    max_regs_per_thread: int = 255
    reg_unit: int = 256
    smem_reserved_per_block: int = 1024


KB = 1024
# Per compute capability (CUDA C++ Programming Guide, "Technical Specifications per Compute Capability"):
# resident warps and blocks per SM, shared memory per SM and the most one block may use (opt-in); cc 7.5
# reserves no shared memory per block (1 KB from 8.0 on).
ARCHS = {
    75: Arch("sm_75 (T4, RTX 20)", 75, max_warps=32, max_blocks=16, smem_per_sm=64 * KB, smem_per_block=64 * KB,
             smem_reserved_per_block=0),
    80: Arch("sm_80 (A100)", 80, max_warps=64, max_blocks=32, smem_per_sm=164 * KB, smem_per_block=163 * KB),
    86: Arch("sm_86 (RTX 30, A10)", 86, max_warps=48, max_blocks=16, smem_per_sm=100 * KB, smem_per_block=99 * KB),
    87: Arch("sm_87 (Jetson AGX Orin)", 87, max_warps=48, max_blocks=16, smem_per_sm=164 * KB,
             smem_per_block=163 * KB),
    89: Arch("sm_89 (RTX 40, L4)", 89, max_warps=48, max_blocks=24, smem_per_sm=100 * KB, smem_per_block=99 * KB),
    90: Arch("sm_90 (H100)", 90, max_warps=64, max_blocks=32, smem_per_sm=228 * KB, smem_per_block=227 * KB),
    120: Arch("sm_120 (RTX 50)", 120, max_warps=48, max_blocks=32, smem_per_sm=100 * KB, smem_per_block=99 * KB),
}


def occupancy(arch: Arch, regs: int, smem: int, num_warps: int) -> dict[str, Any]:
    """Resident blocks per SM and the fraction of the SM's warps they fill."""
    regs_per_warp = -(-max(regs, 1) * 32 // arch.reg_unit) * arch.reg_unit
    by_regs = (arch.regs_per_sm // regs_per_warp) // num_warps
    by_smem = arch.smem_per_sm // (smem + arch.smem_reserved_per_block) if smem else arch.max_blocks
    by_warps = arch.max_warps // num_warps
    limits = {"registers": by_regs, "shared memory": by_smem, "warps": by_warps, "blocks": arch.max_blocks}
    blocks = min(limits.values())
    return {"blocks_per_sm": blocks, "occupancy": blocks * num_warps / arch.max_warps,
            "limited_by": min(limits, key=limits.get)}


@dataclass(frozen=True)
class KernelSpec:
    """One kernel, one dtype, one config: what ``triton.compile`` needs."""

    kernel: str
    dtype: str
    config: dict[str, int]
    num_warps: int
    num_stages: int
    fn: Any
    signature: dict[str, str]
    constexprs: dict[str, Any]
    divisible: tuple[str, ...] = ()  # integer / pointer arguments the runtime sees as multiples of 16

    def attrs(self) -> dict[tuple[int], list[list[Any]]]:
        return {(self.fn.arg_names.index(n),): [["tt.divisibility", 16]] for n in self.divisible}

    @property
    def label(self) -> str:
        c = self.config
        return "x".join(str(c[k]) for k in sorted(c)) + f" w{self.num_warps} s{self.num_stages}"


@dataclass
class CompileResult:
    kernel: str
    dtype: str
    arch: str
    config: dict[str, int]
    num_warps: int
    num_stages: int
    registers: int
    spill_bytes: int  # local memory per thread
    stack_bytes: int
    shared_bytes: int  # static + dynamic
    blocks_per_sm: int
    occupancy: float
    limited_by: str
    ok: bool
    problem: str
    seconds: float
    mma_instructions: int = 0  # tensor-core MMA instructions (mma.*, wgmma.*) in the PTX
    reason: str = ""  # why a config that is not ok is accepted (see explain); empty: unexplained

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# What Triton's runtime specialises for the head shapes (16-byte aligned tensors; ints that
# are multiples of 16 get tt.divisibility=16). v3: Cin, Cout and all strides are multiples of
# 16 (320/2048 channels in, 256 out; also the projection). v2: 21 class logits, so Cout and
# the output strides are not; the packed weights are padded to 32 columns and stay aligned.
_ALIGNED = ("y_ptr", "x_ptr", "w_ptr", "bias_ptr", "tap_w_ptr", "tap_dy_ptr", "tap_dx_ptr", "group_start_ptr",
            "stride_xb", "stride_xh", "stride_xw", "stride_wt", "stride_wk", "stride_bias_b", "Cin")
_TAP_CONV_VARIANTS = {  # name: (output channels, aligned arguments)
    "v3": (256, _ALIGNED + ("stride_yb", "stride_yh", "stride_yw", "Cout")),
    "v2": (21, _ALIGNED),
}


def _tap_conv_specs(dtypes: Iterable[str]) -> list[KernelSpec]:
    from triton.runtime.jit import JITFunction

    from . import aspp

    fn = aspp._tap_conv_kernel
    if not isinstance(fn, JITFunction):  # decorated under TRITON_INTERPRET=1
        fn = JITFunction(fn.fn)
    specs = []
    for (variant, (cout, divisible)), dtype in itertools.product(_TAP_CONV_VARIANTS.items(), dtypes):
        # As the runtime specialises a channels-last input and the branch output: unit channel strides.
        constexprs: dict[str, Any] = {"stride_xc": 1, "stride_yc": 1, "RELU": True,
                                      "DOT_PRECISION": "tf32", "UPCAST": False}
        sig = {name: "i32" for name in fn.arg_names}
        # ``dtype`` is a name from DTYPES, which Triton's types share (*fp16, *bf16, *fp32).
        sig.update({"y_ptr": f"*{dtype}", "x_ptr": f"*{dtype}", "w_ptr": f"*{dtype}", "bias_ptr": "*fp32",
                    "tap_w_ptr": "*i32", "tap_dy_ptr": "*i32", "tap_dx_ptr": "*i32", "group_start_ptr": "*i32"})
        for cfg in aspp.autotune_configs(dtype, cout):
            c = {**constexprs, **cfg.kwargs}
            s = dict(sig)
            s.update({k: "constexpr" for k in c})
            specs.append(KernelSpec(f"aspp.tap_conv[{variant}]", dtype, dict(cfg.kwargs), cfg.num_warps,
                                    cfg.num_stages, fn, s, c, divisible))
    return specs


def _fp32_specs(entries, int_pointer: Callable[[str], bool], float_args: tuple[str, ...]) -> list[KernelSpec]:
    """Compile specs of fp32 kernels, one per autotune config. ``entries``: (name, @triton.jit
    function, configs, extra constexprs); pointers are ``*fp32`` unless ``int_pointer(name)``,
    ``float_args`` are fp32 scalars, every other argument i32; all pointers 16-byte aligned."""
    from triton.runtime.jit import JITFunction

    specs = []
    for name, fn, configs, extra in entries:
        if not isinstance(fn, JITFunction):  # decorated under TRITON_INTERPRET=1
            fn = JITFunction(fn.fn)
        sig = {a: "i32" for a in fn.arg_names}
        sig.update({a: "*i32" if int_pointer(a) else "*fp32" for a in fn.arg_names if a.endswith("_ptr")})
        sig.update({a: "fp32" for a in fn.arg_names if a in float_args})
        aligned = tuple(a for a in fn.arg_names if a.endswith("_ptr"))
        for cfg in configs:
            c = {**extra, **cfg.kwargs}
            s = dict(sig)
            s.update({k: "constexpr" for k in c})
            specs.append(KernelSpec(name, "fp32", dict(cfg.kwargs), cfg.num_warps, cfg.num_stages, fn, s, c, aligned))
    return specs


def _crf_specs(dtypes: Iterable[str]) -> list[KernelSpec]:
    """The window CRF kernels are fp32 whatever the network's dtype; the step is compiled for
    21 labels (VOC, padded to 32)."""
    from . import crf_window as crf

    return _fp32_specs([("crf.step[21 labels]", crf._crf_step_kernel, crf.autotune_configs(), {"L_PAD": 32}),
                        ("crf.norm", crf._crf_norm_kernel, crf.norm_configs(), {})],
                       lambda a: a.startswith(("bil_d", "sp_d")), ("w1", "w2", "inv2_alpha", "inv2_beta", "inv2_gamma"))


def _lattice_specs(dtypes: Iterable[str]) -> list[KernelSpec]:
    """The lattice CRF kernels (fp32), compiled for 21 labels (padded to 32) and the 5-D
    position + colour lattice (6 simplex corners); the step with messages and splat, as
    every iteration but the last runs it, with the 2-D spatial window and separable."""
    from . import crf_lattice as lattice

    return _fp32_specs([("crf.lattice_step[21 labels]", lattice._lattice_step_kernel, lattice.step_configs(),
                         {"L_PAD": 32, "D1": 6, "MESSAGES": True, "SPLAT": True, "SEPARABLE": False}),
                        ("crf.lattice_step[21 labels, separable]", lattice._lattice_step_kernel,
                         lattice.step_configs(), {"L_PAD": 32, "D1": 6, "MESSAGES": True, "SPLAT": True,
                                                  "SEPARABLE": True}),
                        ("crf.lattice_blur[21 labels]", lattice._lattice_blur_kernel, lattice.blur_configs(),
                         {"L_PAD": 32}),
                        ("crf.spatial_rows[21 labels]", lattice._spatial_rows_kernel, lattice.step_configs(),
                         {"L_PAD": 32})],
                       lambda a: a in ("corner_ptr", "plus_ptr", "minus_ptr"), ("w1_alpha", "w2"))


#: Kernel name -> function giving its compile specs for some dtypes.
KERNELS: dict[str, Callable[[Iterable[str]], list[KernelSpec]]] = {"aspp": _tap_conv_specs, "crf": _crf_specs,
                                                                   "lattice": _lattice_specs}


def kernel_specs(kernels: Iterable[str] | None = None, dtypes: Iterable[str] = ("fp16", "bf16", "fp32")
                 ) -> list[KernelSpec]:
    names = list(dict.fromkeys(kernels)) if kernels else list(KERNELS)  # each once, in the order given
    dtypes = list(dict.fromkeys(dtypes))
    unknown = [n for n in names if n not in KERNELS]
    if unknown:
        raise ValueError(f"expected kernels from {sorted(KERNELS)}, got {unknown}")
    bad = [d for d in dtypes if d not in DTYPES]
    if bad:
        raise ValueError(f"expected dtypes from {sorted(DTYPES)}, got {bad}")
    return [s for n in names for s in KERNELS[n](dtypes)]


def _cuobjdump() -> Path:
    import triton

    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not path.exists():
        raise KernelUnavailableError(f"{path} not found: this triton build has no bundled CUDA tools")
    return path


_USAGE = re.compile(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)")


def resource_usage(cubin: bytes) -> dict[str, int]:
    """Registers, stack, static shared and local bytes of the (single) function in a cubin."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "kernel.cubin")
        Path(path).write_bytes(cubin)
        out = subprocess.run([str(_cuobjdump()), "--dump-resource-usage", path], capture_output=True, text=True,
                             check=False)
    m = _USAGE.search(out.stdout)
    if out.returncode or not m:
        raise KernelUnavailableError(f"cuobjdump could not read the cubin: {(out.stderr or out.stdout).strip()}")
    reg, stack, shared, local = map(int, m.groups())
    return {"registers": reg, "stack": stack, "shared": shared, "local": local}


def _check_not_interpreted() -> None:
    """Under TRITON_INTERPRET=1 Triton's own library (tl.cdiv, tl.max, ...) is built as
    interpreted functions at import, so no real compilation can happen in this process."""
    from triton.language import standard
    from triton.runtime.jit import JITFunction

    if not isinstance(standard.cdiv, JITFunction):
        raise KernelUnavailableError("Triton was imported with TRITON_INTERPRET=1, which rules out compiling for a "
                                     "GPU in this process; run `env -u TRITON_INTERPRET deeplab-edge kernels compile`")


def compile_one(spec: KernelSpec, cc: int) -> CompileResult:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    arch = ARCHS[cc]
    t0 = time.perf_counter()
    src = ASTSource(spec.fn, spec.signature, spec.constexprs, spec.attrs())
    k = triton.compile(src, target=GPUTarget("cuda", cc, 32),
                       options={"num_warps": spec.num_warps, "num_stages": spec.num_stages})
    use = resource_usage(k.asm["cubin"])
    mma = len(re.findall(r"\b(?:wgmma|mma)\.", k.asm["ptx"]))
    shared = use["shared"] + int(k.metadata.shared)
    occ = occupancy(arch, use["registers"], shared, spec.num_warps)
    problems = []
    if use["local"] or use["stack"]:
        problems.append(f"spills ({use['local']} B local, {use['stack']} B stack per thread)")
    if shared > arch.smem_per_block:
        problems.append(f"{shared} B shared memory > {arch.smem_per_block} B per block")
    return CompileResult(spec.kernel, spec.dtype, f"sm_{cc}", spec.config, spec.num_warps, spec.num_stages,
                         use["registers"], use["local"], use["stack"], shared, occ["blocks_per_sm"],
                         occ["occupancy"], occ["limited_by"], not problems, "; ".join(problems),
                         time.perf_counter() - t0, mma)


def compile_all(specs: list[KernelSpec], archs: Iterable[int] = tuple(ARCHS),
                progress: Callable[[KernelSpec, int], None] | None = None) -> list[CompileResult]:
    _check_not_interpreted()
    archs = list(dict.fromkeys(archs))  # each architecture once, in the order given (--arch 87,87 is sm_87 once)
    bad = [a for a in archs if a not in ARCHS]
    if bad:
        raise ValueError(f"expected compute capabilities from {sorted(ARCHS)}, got {bad}")
    results = []
    for cc in archs:
        for spec in specs:
            if progress:
                progress(spec, cc)
            results.append(compile_one(spec, cc))
    return explain(results)


def explain(results: list[CompileResult]) -> list[CompileResult]:
    """Give each config that spills a reason, derived from the compiled code, where one holds:

    * the kernel's ``tl.dot`` has tensor-core MMA instructions on other architectures and none on this one:
      this Triton lowers it to FMAs here, and the tile's accumulators no longer fit the registers;
    * other configs of the same kernel and dtype compile without spills on this architecture: the
      autotuner, which times them all, has a spill-free choice.

    Rows that fit neither keep ``reason`` empty: ``kernels compile`` fails on them."""
    import triton

    def same_kernel(a, b):
        return (a.kernel, a.dtype) == (b.kernel, b.dtype)

    for r in results:
        if r.ok:
            continue
        twins = [o for o in results if same_kernel(o, r) and o.arch != r.arch and o.config == r.config
                 and (o.num_warps, o.num_stages) == (r.num_warps, r.num_stages)]
        clean = [o for o in results if same_kernel(o, r) and o.arch == r.arch and o.ok]
        if r.mma_instructions == 0 and any(t.mma_instructions for t in twins):
            r.reason = (f"Triton {triton.__version__} emits no tensor-core MMA for tl.dot on {r.arch} (FMAs instead; "
                        f"{max(t.mma_instructions for t in twins)} MMA instructions on "
                        f"{next(t.arch for t in twins if t.mma_instructions)}), so the tile's accumulators spill: on "
                        "this GPU run the PyTorch head (--backend torch, cuDNN's tensor cores)")
        elif clean:
            r.reason = (f"{len(clean)} other config{'s' if len(clean) > 1 else ''} of this kernel compile"
                        f"{'' if len(clean) > 1 else 's'} without spills on {r.arch}: the autotuner, which times "
                        "every config, has a spill-free choice")
    return results
