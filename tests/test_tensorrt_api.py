"""Every TensorRT name the engine, build and runner code uses, against TensorRT's own Python
bindings, version by version, and every jetson-stats name the power sampler uses, against
jetson-stats' source.

TensorRT cannot be installed here, so ``tests/fixtures/tensorrt_api/extract.py`` imported the
bindings of each release (PyPI's ``tensorrt*-bindings`` wheels, against stub libraries) and kept
what pybind11 registered: classes, members, signatures, properties, enum values. This test
parses the code with ``ast`` (nothing is hand-listed): it follows the ``tensorrt`` module object
and what comes out of it (the return types of the bindings' own signatures: ``Builder(...)`` ->
``create_network`` -> ``INetworkDefinition``...) and walks each function once per TensorRT
version and INT8 route, evaluating the version gates (``major >= 11``...) with that version's
``__version__``. Every name reached on a version must exist there, every call must fit one of
its signatures (argument count and keyword names), every property written must be writable,
and every method a TensorRT subclass defines must be one TensorRT calls. The routes claim:

* QDQ (explicit quantization) and plain FP32/FP16 builds: every version, 8.6 to 11;
* the calibration cache (``IInt8EntropyCalibrator2``, ``int8_calibrator``): up to 10, and on 11
  the code must refuse it (every path raises) before touching a removed name.
"""

from __future__ import annotations

import ast
import itertools
import json
import operator
import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from deeplab_edge import engine as engine_mod

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "tensorrt_api"


def _vkey(v: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", v))


APIS = {d["tensorrt"]: d for d in (json.loads(p.read_text()) for p in sorted(FIXTURES.glob("trt*.json")))}
VERSIONS = sorted(APIS, key=_vkey)
JTOPS = {d["jetson_stats"]: d for d in (json.loads(p.read_text()) for p in sorted(FIXTURES.glob("jtop*.json")))}

# the code that talks to TensorRT: these files, and any other one that imports it
TRT_FILES = ["deeplab_edge/engine.py", "deeplab_edge/runtime/tensorrt.py", "deeplab_edge/build.py"]


def trt_files() -> list[str]:
    found = set(TRT_FILES)
    for d in ("deeplab_edge", "bench", "calibration", "kernels"):
        for p in (ROOT / d).rglob("*.py"):
            src = p.read_text(errors="replace")
            if re.search(r"^\s*(import tensorrt\b|from tensorrt\b)|import_tensorrt\(", src, re.M):
                found.add(str(p.relative_to(ROOT)))
    return sorted(found)


# ----------------------------------------------------------------------------- the API of one version

MODULE = ("module",)


@dataclass(frozen=True)
class Param:
    name: str
    kind: str  # "pos" (positional only), "any", "kw" (keyword only), "*", "**"
    default: bool


def parse_signature(sig: str) -> list[Param] | None:
    """``(a: T, b: U = 0) -> R`` -> its parameters (``self`` already dropped by the extractor)."""
    if not sig.startswith("("):
        return None
    depth, cur, parts = 0, "", []
    for ch in sig[1:]:
        if ch in "([{<":
            depth += 1
        elif ch in ")]}>":
            if depth == 0:
                break
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur)
    params: list[Param] = []
    kw_only = False
    for raw in (p.strip() for p in parts):
        if raw == "/":
            params = [Param(p.name, "pos", p.default) for p in params]
            continue
        if raw == "*":
            kw_only = True
            continue
        if raw.startswith("**"):
            params.append(Param(raw[2:].split(":")[0], "**", True))
            continue
        if raw.startswith("*"):
            params.append(Param(raw[1:].split(":")[0], "*", True))
            kw_only = True
            continue
        name = raw.split(":")[0].split("=")[0].strip()
        kind = "kw" if kw_only else ("pos" if re.fullmatch(r"arg\d+", name) else "any")
        params.append(Param(name, kind, "=" in raw))
    return params


def return_type(sig: str) -> str | None:
    return sig.rsplit(" -> ", 1)[1].strip() if " -> " in sig else None


def call_fits(sig: str, npos: int, kws: list[str], star: bool, dstar: bool) -> str | None:
    """Why a call with ``npos`` positional and ``kws`` keyword arguments does not fit ``sig`` (None: it fits)."""
    params = parse_signature(sig)
    if params is None:
        return None
    names = {p.name: p for p in params}
    positional = [p for p in params if p.kind in ("pos", "any")]
    if any(p.kind == "**" for p in params):
        return None
    for k in kws:
        if k not in names or names[k].kind in ("pos", "*"):
            return f"no keyword argument {k!r}"
        if positional.index(names[k]) < npos if names[k] in positional else False:
            return f"{k!r} given twice"
    if star or dstar:
        return None
    if npos > len(positional) and not any(p.kind == "*" for p in params):
        return f"takes {len(positional)} positional arguments, {npos} given"
    bound = {p.name for p in positional[:npos]} | set(kws)
    missing = [p.name for p in params if not p.default and p.kind not in ("*", "**") and p.name not in bound]
    return f"missing {', '.join(missing)}" if missing else None


class Api:
    """One TensorRT version's bindings, as extracted."""

    def __init__(self, doc: dict) -> None:
        self.doc, self.version = doc, doc["tensorrt"]
        self.classes, self.enums, self.module = doc["classes"], doc["enums"], doc["module"]

    def is_type(self, name: str | None) -> bool:
        return bool(name) and (name in self.classes or name in self.enums)

    def mro(self, cls: str) -> list[str]:
        out, todo = [], [cls]
        while todo:
            c = todo.pop(0)
            if c in out or c not in self.classes:
                continue
            out.append(c)
            todo += self.classes[c]["bases"]
        return out

    def member(self, cls: str, name: str):
        if cls in self.enums:
            if name in self.enums[cls]:
                return f"value: {cls}"
            return {"name": "property ro -> str", "value": "property ro -> int"}.get(name)
        for c in self.mro(cls):
            if name in self.classes[c]["members"]:
                return self.classes[c]["members"][name]
        return None


# ----------------------------------------------------------------------------- the checker

UNKNOWN = object()
HINTS = {"trt": MODULE, "builder": "Builder", "network": "INetworkDefinition", "parser": "OnnxParser",
         "config": "IBuilderConfig", "engine": "ICudaEngine", "context": "IExecutionContext",
         "ctx": "IExecutionContext", "runtime": "Runtime", "profile": "IOptimizationProfile", "logger": "ILogger"}
# pure helpers the version gates call; run for real on the version string
PURE = {"trt_major": engine_mod.trt_major, "_version_triple": engine_mod._version_triple, "int": int, "len": len,
        "tuple": tuple, "str": str, "bool": bool, "min": min, "max": max}
BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.FloorDiv: operator.floordiv,
          ast.Mod: operator.mod, ast.LShift: operator.lshift, ast.RShift: operator.rshift, ast.BitOr: operator.or_,
          ast.BitAnd: operator.and_}
COMPARE = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt,
           ast.GtE: operator.ge, ast.Is: operator.is_, ast.IsNot: operator.is_not,
           ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b}
STR_METHODS = ("split", "partition", "startswith", "strip")
# the INT8 routes, as deeplab_edge.build calls build_engine: (int8, route)
ROUTES = [(False, None), (True, "qdq"), (True, "cache")]


@dataclass
class Finding:
    file: str
    line: int
    version: str
    message: str
    scenario: str = ""

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: TensorRT {self.version}: {self.message}" + (
            f" (reached with {self.scenario})" if self.scenario else "")


@dataclass
class Outcome:
    completes: bool = False
    raises: bool = False


@dataclass
class Checker:
    """Walks one file's functions for one TensorRT version; ``findings`` and ``outcomes`` result."""
    api: Api
    file: str
    findings: list[Finding] = field(default_factory=list)
    outcomes: dict[tuple[str, str], Outcome] = field(default_factory=dict)
    accesses: set[tuple[str, str]] = field(default_factory=set)
    record: bool = True

    # -- types (flow-insensitive, per function; self.X per class)

    def typeof(self, node, types: dict):
        api = self.api
        if isinstance(node, ast.Name):
            return types.get(node.id)
        if isinstance(node, ast.Attribute):
            base = self.typeof(node.value, types)
            if base is None:
                return None
            if base == ("self",):
                return types.get(("self", node.attr))
            desc = self.member_of(base, node.attr)
            return self.type_of_desc(base, node.attr, desc)
        if isinstance(node, ast.Call):
            if isinstance(node.func, ast.Name) and node.func.id == "import_tensorrt":
                return MODULE
            f = self.typeof(node.func, types)
            if isinstance(f, tuple) and f[0] == "class":
                return ("inst", f[1])
            if isinstance(f, tuple) and f[0] == "method":
                for sig in f[3]:
                    r = return_type(sig)
                    if r and api.is_type(r):
                        return ("inst", r)
            return None
        return None

    def member_of(self, base, attr: str):
        if base == MODULE:
            return self.api.module.get(attr)
        if isinstance(base, tuple) and base[0] in ("class", "inst"):
            return self.api.member(base[1], attr)
        return None

    def type_of_desc(self, base, attr: str, desc):
        api = self.api
        if desc is None:
            return None
        if base == MODULE:
            if desc in ("class", "enum"):
                return ("class", attr)
            if isinstance(desc, list):
                return ("method", None, attr, desc)
        if isinstance(desc, str):
            if desc.startswith("class "):
                return ("class", desc[6:])
            if desc.startswith("value: ") and api.is_type(desc[7:]):
                return ("inst", desc[7:])
            if desc.startswith("property") and " -> " in desc and api.is_type(desc.split(" -> ", 1)[1]):
                return ("inst", desc.split(" -> ", 1)[1])
            return None
        if isinstance(desc, list):
            return ("method", base[1], attr, desc)
        return None

    # -- checks of one reached statement's expressions

    def where(self, base) -> str:
        return "tensorrt" if base == MODULE else base[1]

    def check_expr(self, node, types: dict, scenario: str, store: ast.AST | None = None) -> None:
        for n in ast.walk(node):
            if isinstance(n, ast.Attribute):
                self.check_attr(n, types, scenario, write=n is store)
            elif isinstance(n, ast.Call):
                self.check_call(n, types, scenario)
                # a helper of this file is walked where a call to it is reached (so a helper only the
                # calibration-cache route calls is checked where that route runs, not on TensorRT 11)
                if self.record and isinstance(n.func, ast.Name) and n.func.id in self.helpers \
                        and n.func.id not in self.walked:
                    self.walked.add(n.func.id)
                    self.function(self.helpers[n.func.id], dict(self.module_types), scenario_label=scenario)

    def add(self, node, msg: str, scenario: str) -> None:
        if self.record:
            f = Finding(self.file, getattr(node, "lineno", 0), self.api.version, msg, scenario)
            if not any((g.line, g.message) == (f.line, f.message) for g in self.findings):
                self.findings.append(f)

    def check_attr(self, n: ast.Attribute, types: dict, scenario: str, write: bool = False) -> None:
        base = self.typeof(n.value, types)
        if base is None or base == ("self",) or not (base == MODULE or base[0] in ("class", "inst")):
            return
        if base != MODULE and base[1] not in self.api.classes and base[1] not in self.api.enums:
            return  # the receiver's own class is missing: reported where it was named
        self.accesses.add((self.where(base), n.attr))
        desc = self.member_of(base, n.attr)
        if desc is None:
            what = "the tensorrt module" if base == MODULE else base[1]
            self.add(n, f"{what} has no {n.attr!r}", scenario)
        elif write:
            if not (isinstance(desc, str) and desc.startswith("property rw")):
                kind = desc if isinstance(desc, str) else "a method"
                self.add(n, f"{self.where(base)}.{n.attr} cannot be assigned ({kind})", scenario)

    def check_call(self, n: ast.Call, types: dict, scenario: str) -> None:
        f = self.typeof(n.func, types)
        if not isinstance(f, tuple):
            return
        if f[0] == "class":
            if f[1] in self.api.enums:
                return
            init = self.api.member(f[1], "__init__")
            if init == "no constructor":
                self.add(n, f"{f[1]} cannot be constructed from Python", scenario)
                return
            sigs, what = (init if isinstance(init, list) else []), f"{f[1]}()"
        elif f[0] == "method":
            sigs, what = f[3], f"{f[1] + '.' if f[1] else 'tensorrt.'}{f[2]}()"
        else:
            return
        if not sigs:
            return
        npos = sum(not isinstance(a, ast.Starred) for a in n.args)
        kws = [k.arg for k in n.keywords if k.arg is not None]
        star = any(isinstance(a, ast.Starred) for a in n.args)
        dstar = any(k.arg is None for k in n.keywords)
        why = [call_fits(s, npos, kws, star, dstar) for s in sigs]
        if all(w is not None for w in why):
            self.add(n, f"{what}: the call fits no signature ({'; '.join(f'{s}: {w}' for s, w in zip(sigs, why))})",
                     scenario)

    # -- values for the gates

    def value(self, node, env: dict):
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            return env.get(node.id, UNKNOWN)
        if isinstance(node, ast.Attribute) and node.attr == "__version__":
            t = self.typeof(node.value, env["__types__"])
            return self.api.version if t == MODULE else UNKNOWN
        if isinstance(node, ast.Tuple):
            vals = [self.value(e, env) for e in node.elts]
            return UNKNOWN if any(v is UNKNOWN for v in vals) else tuple(vals)
        if isinstance(node, ast.Subscript):
            v, i = self.value(node.value, env), self.value(node.slice, env)
            try:
                return UNKNOWN if UNKNOWN in (v, i) else v[i]
            except Exception:  # noqa: BLE001
                return UNKNOWN
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in PURE \
                and not node.keywords:
            args = [self.value(a, env) for a in node.args]
            if any(a is UNKNOWN for a in args):
                return UNKNOWN
            try:
                return PURE[node.func.id](*args)
            except Exception:  # noqa: BLE001
                return UNKNOWN
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in STR_METHODS \
                and not node.keywords:
            recv, args = self.value(node.func.value, env), [self.value(a, env) for a in node.args]
            if isinstance(recv, str) and UNKNOWN not in args:
                try:
                    return getattr(recv, node.func.attr)(*args)
                except Exception:  # noqa: BLE001
                    return UNKNOWN
            return UNKNOWN
        if isinstance(node, (ast.Compare, ast.BoolOp)) or (isinstance(node, ast.UnaryOp)
                                                           and isinstance(node.op, ast.Not)):
            t = self.truth(node, env)
            return UNKNOWN if t is UNKNOWN else t
        if isinstance(node, ast.BinOp):
            a, b = self.value(node.left, env), self.value(node.right, env)
            if UNKNOWN in (a, b):
                return UNKNOWN
            try:
                return BINOPS[type(node.op)](a, b)
            except Exception:  # noqa: BLE001 - an op this walk does not evaluate, or a type error
                return UNKNOWN
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            v = self.value(node.operand, env)
            return UNKNOWN if v is UNKNOWN else -v
        return UNKNOWN

    def truth(self, node, env: dict):
        if isinstance(node, ast.BoolOp):
            ts = [self.truth(v, env) for v in node.values]
            if isinstance(node.op, ast.And):
                return False if False in ts else (True if all(t is True for t in ts) else UNKNOWN)
            return True if True in ts else (False if all(t is False for t in ts) else UNKNOWN)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            t = self.truth(node.operand, env)
            return UNKNOWN if t is UNKNOWN else not t
        if isinstance(node, ast.Compare):
            left = self.value(node.left, env)
            for op, right_node in zip(node.ops, node.comparators):
                right = self.value(right_node, env)
                if UNKNOWN in (left, right):
                    return UNKNOWN
                try:
                    ok = COMPARE[type(op)](left, right)
                except Exception:  # noqa: BLE001 - e.g. None < 10
                    return UNKNOWN
                if not ok:
                    return False
                left = right
            return True
        v = self.value(node, env)
        return UNKNOWN if v is UNKNOWN else bool(v)

    # -- the walk

    def bind(self, target, value_node, env: dict, types: dict) -> None:
        if isinstance(target, ast.Name):
            env[target.id] = self.value(value_node, env) if value_node is not None else UNKNOWN
            t = self.typeof(value_node, types) if value_node is not None else None
            if t is not None:
                types[target.id] = t
        elif isinstance(target, (ast.Tuple, ast.List)):
            for e in target.elts:
                self.bind(e, None, env, types)
        elif isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and target.value.id == "self":
            t = self.typeof(value_node, types) if value_node is not None else None
            if t is not None:
                types[("self", target.attr)] = t
                self.self_types[("self", target.attr)] = t

    def block(self, stmts, states: list[dict], fn: str, scenario: str, in_try: int = 0) -> list[dict]:
        for s in stmts:
            if not states:
                break
            states = self.stmt(s, states, fn, scenario, in_try)
            uniq = {}
            for st in states:
                uniq.setdefault(repr(sorted((k, v if v is not UNKNOWN else "?") for k, v in st.items()
                                            if k != "__types__")), st)
            states = list(uniq.values())
        return states

    def stmt(self, s, states, fn, scenario, in_try) -> list[dict]:
        types = states[0]["__types__"]
        chk = lambda node, store=None: self.check_expr(node, types, scenario, store)  # noqa: E731
        out = self.outcomes.setdefault((fn, scenario), Outcome())
        if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            self.define(s, types, scenario)
            return states
        if isinstance(s, ast.Return):
            if s.value is not None:
                chk(s.value)
            out.completes = True
            return []
        if isinstance(s, ast.Raise):
            if s.exc is not None:
                chk(s.exc)
            if not in_try:
                out.raises = True
            return [] if not in_try else states
        if isinstance(s, ast.If):
            chk(s.test)
            res = []
            for st in states:
                t = self.truth(s.test, st)
                if t is not False:
                    res += self.block(s.body, [dict(st)], fn, scenario, in_try)
                if t is not True:
                    res += self.block(s.orelse, [dict(st)], fn, scenario, in_try)
            return res
        if isinstance(s, (ast.For, ast.AsyncFor, ast.While)):
            chk(s.iter if not isinstance(s, ast.While) else s.test)
            if not isinstance(s, ast.While):
                for st in states:
                    self.bind(s.target, None, st, types)
            body = self.block(s.body, [dict(st) for st in states], fn, scenario, in_try)
            return self.block(s.orelse, states + body, fn, scenario, in_try)
        if isinstance(s, (ast.With, ast.AsyncWith)):
            for item in s.items:
                chk(item.context_expr)
                for st in states:
                    if item.optional_vars is not None:
                        self.bind(item.optional_vars, None, st, types)
            return self.block(s.body, states, fn, scenario, in_try)
        if isinstance(s, ast.Try):
            body = self.block(s.body, [dict(st) for st in states], fn, scenario, in_try + 1)
            handled = []
            for h in s.handlers:
                if h.type is not None:
                    chk(h.type)
                handled += self.block(h.body, [dict(st) for st in states + body], fn, scenario, in_try)
            body = self.block(s.orelse, body, fn, scenario, in_try)
            return self.block(s.finalbody, body + handled, fn, scenario, in_try)
        if isinstance(s, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            value = s.value
            targets = s.targets if isinstance(s, ast.Assign) else [s.target]
            if value is not None:
                chk(value)
            for t in targets:
                if isinstance(t, ast.Attribute):
                    chk(t, store=t)
                elif not isinstance(t, ast.Name):
                    chk(t)
            for st in states:
                for t in targets:
                    if isinstance(s, ast.AugAssign):
                        if isinstance(t, ast.Name):
                            st[t.id] = self.value(ast.BinOp(ast.Name(t.id, ast.Load()), s.op, value), st)
                    elif value is not None:
                        self.bind(t, value, st, types)
            return states
        if isinstance(s, (ast.Import, ast.ImportFrom)):
            for a in s.names:
                if isinstance(s, ast.Import) and a.name == "tensorrt":
                    types[a.asname or "tensorrt"] = MODULE
            return states
        for child in ast.iter_child_nodes(s):  # Expr, Assert, Delete...
            if isinstance(child, ast.expr):
                chk(child)
        return states

    def define(self, node, outer_types: dict, scenario: str) -> None:
        """A nested (or top-level) def or class: walked on its own, with the outer types in view."""
        if isinstance(node, ast.ClassDef):
            bases = [self.typeof(b, outer_types) for b in node.bases]
            for b in node.bases:
                self.check_expr(b, outer_types, scenario)
            trt_bases = [b[1] for b in bases if isinstance(b, tuple) and b[0] == "class"]
            saved, self.self_types = self.self_types, {}
            methods = [m for m in node.body if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef))]
            for m in methods:
                if trt_bases and not m.name.startswith("__") and not any(self.api.member(b, m.name) for b in trt_bases):
                    self.add(m, f"{node.name} overrides {m.name!r}, which {'/'.join(trt_bases)} does not have: "
                                "TensorRT never calls it", scenario)
            for m in methods:  # twice: self.X assigned in one method is typed in the others
                self.function(m, {**outer_types, "self": ("self",)}, record=False, prefix=node.name + ".")
            for m in methods:
                self.function(m, {**outer_types, "self": ("self",), **self.self_types}, prefix=node.name + ".")
            self.self_types = saved
        else:
            self.function(node, dict(outer_types))

    self_types: dict = field(default_factory=dict)
    helpers: dict = field(default_factory=dict)  # module-level functions this file calls itself
    walked: set = field(default_factory=set)
    module_types: dict = field(default_factory=dict)

    def function(self, fn, types: dict, record: bool = True, prefix: str = "", scenario_label: str = "") -> None:
        a = fn.args
        params = a.posonlyargs + a.args + a.kwonlyargs
        for p in params:
            if p.annotation is None and p.arg in HINTS:
                types[p.arg] = HINTS[p.arg] if HINTS[p.arg] == MODULE else ("inst", HINTS[p.arg])
        names = {p.arg for p in params}
        combos: list[dict] = [{}]
        if {"int8", "route"} <= names:
            combos = [{"int8": i, "route": r} for i, r in ROUTES]
        if "fp16" in names:
            combos = [{**c, "fp16": f} for c, f in itertools.product(combos, (False, True))]
        saved = self.record
        self.record = record and saved
        for combo in combos:
            env = {p.arg: UNKNOWN for p in params}
            env.update(combo)
            env["__types__"] = types
            scenario = ", ".join(f"{k}={v!r}" for k, v in combo.items())
            label = ", ".join(x for x in (scenario_label, scenario) if x)
            live = self.block(fn.body, [env], prefix + fn.name, label)
            out = self.outcomes.setdefault((prefix + fn.name, label), Outcome())
            out.completes = out.completes or bool(live)
        self.record = saved

    def run(self, source: str) -> "Checker":
        tree = ast.parse(source)
        types: dict = {}
        for node in tree.body:
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name == "tensorrt":
                        types[a.asname or "tensorrt"] = MODULE
        self.module_types = types
        funcs = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
        called = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
        self.helpers = {name: f for name, f in funcs.items() if name in called}
        for node in tree.body:  # entry points: classes and the functions this file does not call itself
            if isinstance(node, ast.ClassDef) or (node in funcs.values() and node.name not in self.helpers):
                self.define(node, dict(types), "")
        return self


def check(source: str, version: str, file: str = "<snippet>") -> Checker:
    return Checker(Api(APIS[version]), file).run(source)


# ----------------------------------------------------------------------------- the fixtures

def test_bindings_fixtures_are_there_and_span_the_claimed_versions():
    assert {_vkey(v)[0] for v in VERSIONS} >= {8, 10, 11}, VERSIONS
    for v, d in APIS.items():
        assert (FIXTURES / f"trt{'.'.join(v.split('.')[:2])}.json").is_file()
        assert {"Builder", "IBuilderConfig", "OnnxParser", "ICudaEngine", "IExecutionContext", "Runtime"} <= set(
            d["classes"]), v
    # what the extraction saw, as TensorRT's release notes say it
    assert all("build_engine" in APIS[v]["classes"]["Builder"]["members"] for v in VERSIONS if _vkey(v) < (10,))
    assert not any("build_engine" in APIS[v]["classes"]["Builder"]["members"] for v in VERSIONS if _vkey(v) >= (10,))
    assert not any("INT8" in APIS[v]["enums"]["BuilderFlag"] for v in VERSIONS if _vkey(v) >= (11,))


# ----------------------------------------------------------------------------- the project's code

def _scan(version: str) -> list[Checker]:
    return [Checker(Api(APIS[version]), f).run((ROOT / f).read_text()) for f in trt_files()]


@pytest.mark.parametrize("version", VERSIONS)
def test_every_tensorrt_name_the_code_reaches_exists_in_that_version(version):
    checkers = _scan(version)
    findings = [f for c in checkers for f in c.findings]
    assert not findings, "\n".join(map(str, findings))
    used = set().union(*(c.accesses for c in checkers))
    # the walk really followed the objects (not a vacuous pass): builder, network, config, engine, context...
    for cls, name in [("Builder", "build_serialized_network"), ("Builder", "create_network"),
                      ("OnnxParser", "parse_from_file"), ("IBuilderConfig", "set_memory_pool_limit"),
                      ("IBuilderConfig", "add_optimization_profile"), ("IOptimizationProfile", "set_shape"),
                      ("Runtime", "deserialize_cuda_engine"), ("ICudaEngine", "get_tensor_name"),
                      ("IExecutionContext", "execute_async_v3"), ("IExecutionContext", "set_tensor_address"),
                      ("tensorrt", "nptype")]:
        assert (cls, name) in used, (cls, name, version)


@pytest.mark.parametrize("version", VERSIONS)
def test_int8_routes_are_taken_where_claimed_and_refused_elsewhere(version):
    c = Checker(Api(APIS[version]), "deeplab_edge/engine.py").run((ROOT / "deeplab_edge/engine.py").read_text())
    for fp16 in (False, True):
        for int8, route in ROUTES:
            o = c.outcomes[("build_engine", f"int8={int8!r}, route={route!r}, fp16={fp16!r}")]
            if route == "cache" and _vkey(version) >= (11,):
                assert o.raises and not o.completes, "TensorRT 11 has no calibrators: the cache route must refuse"
            else:
                assert o.completes, f"route {route} does not complete on {version}"
    cache_only = {("IBuilderConfig", "int8_calibrator"), ("tensorrt", "IInt8EntropyCalibrator2")}
    if _vkey(version) < (11,):
        assert cache_only <= c.accesses  # reached, and so checked, on 8.6-10
    else:
        assert not cache_only & c.accesses  # never reached on 11


# ----------------------------------------------------------------------------- the checker fails when it must

SNIPPET = """
import tensorrt as trt

def build(onnx, route, int8, fp16):
    major = int(trt.__version__.split(".")[0])
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    config = builder.create_builder_config()
    {body}
"""


def _snippet(body: str) -> str:
    return SNIPPET.replace("    {body}", textwrap.indent(textwrap.dedent(body).strip(), "    "))


def _msgs(body: str, version: str) -> list[str]:
    return [f.message for f in check(_snippet(body), version).findings]


@pytest.mark.parametrize("body, name, bad_from", [
    ("plan = builder.build_engine(network, config)", "build_engine", (10,)),
    ("config.max_workspace_size = 1 << 30", "max_workspace_size", (10,)),
    ("engine = trt.Runtime(logger).deserialize_cuda_engine(b'')\n"
     "engine.create_execution_context().execute_async_v2([0, 0], 0)", "execute_async_v2", (10,)),
    ("engine = trt.Runtime(logger).deserialize_cuda_engine(b'')\ni = engine.get_binding_index('input')",
     "get_binding_index", (10,)),
    ("config.set_flag(trt.BuilderFlag.INT8)", "INT8", (11,)),
    ("config.int8_calibrator = None", "int8_calibrator", (11,)),
    ("flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)", "EXPLICIT_BATCH", (11,)),
    ("if major < 12:\n    flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)", "EXPLICIT_BATCH",
     (11,)),
    ("flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)", "STRONGLY_TYPED", (0,)),
])
def test_removed_names_are_found_unless_gated(body, name, bad_from):
    for v in VERSIONS:
        msgs = _msgs(body, v)
        if _vkey(v) >= bad_from and not (name == "STRONGLY_TYPED" and _vkey(v) >= (10,)):
            assert any(name in m for m in msgs), (v, msgs)
        else:
            assert not msgs, (v, msgs)


def test_a_version_gate_hides_what_it_guards():
    gated = """
    if major < 10:
        plan = builder.build_engine(network, config)
    if major >= 11:
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    elif int8 and route == "cache":
        config.int8_calibrator = None
    """
    for v in VERSIONS:
        assert not _msgs(gated, v), v
    raising = """
    if major >= 11 and route == "cache":
        raise RuntimeError("no calibrators")
    if int8 and route == "cache":
        config.int8_calibrator = None
    """
    assert not any(_msgs(raising, v) for v in VERSIONS)
    not_raising = raising.replace('raise RuntimeError("no calibrators")', "pass")
    assert any("int8_calibrator" in m for m in _msgs(not_raising, VERSIONS[-1]))


def test_calls_are_checked_against_the_signatures():
    v = VERSIONS[-1]
    assert not _msgs("plan = builder.build_serialized_network(network, config)", v)
    assert any("fits no signature" in m for m in _msgs("plan = builder.build_serialized_network(network)", v))
    assert any("fits no signature" in m for m in _msgs("p = trt.OnnxParser(network, logger)\n"
                                                        "p.parse_from_file(path='m.onnx')", v))
    tc = "tc = config.create_timing_cache(b'')\n"
    assert not _msgs(tc + "config.set_timing_cache(tc, ignore_mismatch=False)", v)
    assert any("ignore_mismatches" in m for m in _msgs(tc + "config.set_timing_cache(tc, ignore_mismatches=False)", v))
    assert any("cannot be assigned" in m for m in _msgs(
        "engine = trt.Runtime(logger).deserialize_cuda_engine(b'')\nengine.num_io_tensors = 3", v))
    assert any("cannot be constructed" in m for m in _msgs("c = trt.IBuilderConfig()", v))


def test_calibrator_overrides_must_be_methods_tensorrt_calls():
    ok = """
    class C(trt.IInt8EntropyCalibrator2):
        def get_batch_size(self):
            return 1
    """
    assert not _msgs(ok, "8.6.1")
    assert any("get_batch_sizes" in m for m in _msgs(ok.replace("get_batch_size", "get_batch_sizes"), "8.6.1"))


@pytest.mark.parametrize("old, new, version, expect", [
    # the TensorRT 11 refusal of the cache route taken out: the removed calibrator names are reached
    ('            raise EngineError("TensorRT 11 has no INT8 calibrators: build from the QDQ ONNX (--calib-data or '
     '--qdq)")', "            pass", "11", "int8_calibrator"),
    ("    if major < 10:\n        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)",
     "    if major < 12:\n        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)", "11",
     "EXPLICIT_BATCH"),
    ("config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)",
     "config.max_workspace_size = workspace_mb << 20", "10", "max_workspace_size"),
    ("parser.parse_from_file(str(onnx))", "parser.parse_from_file(model_path=str(onnx))", "8", "model_path"),
    ("plan = builder.build_serialized_network(network, config)", "plan = builder.build_engine(network, config)",
     "10", "build_engine"),
])
def test_a_removed_name_put_in_a_copy_of_the_engine_code_is_found(old, new, version, expect):
    src = (ROOT / "deeplab_edge/engine.py").read_text()
    assert old in src, f"engine.py changed: update this mutation ({old!r})"
    for v in VERSIONS:
        assert not check(src, v).findings
    bad = src.replace(old, new)
    hits = [v for v in VERSIONS if any(expect in f.message for f in check(bad, v, "engine.py (mutated)").findings)]
    assert hits and all(v.startswith(version) or _vkey(v) > _vkey(version) for v in hits), hits
    assert any(v.split(".")[0] == version for v in hits), hits


# ----------------------------------------------------------------------------- jetson-stats (jtop)

def _power_tree():
    return ast.parse((ROOT / "bench/power.py").read_text())


def jtop_uses(tree) -> tuple[list[tuple[int, str, object]], list[tuple[int, str]]]:
    """What bench/power.py does with jetson-stats: (line, jtop member, (positional count, keywords)
    of a call or None) and (line, ``jtop(...)`` keyword). A jtop object is, in each function, a
    name bound to ``jtop(...)`` (or ``with jtop(...) as x``); in a callback given to ``attach``,
    its first argument; and in a method of the same class, the element of a tuple another method
    returned it in (``return handle, readings`` ... ``handle, readings = run``)."""
    jtop_names = {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module == "jtop"
                  for a in n.names if a.name == "jtop"}

    def is_ctor(node) -> bool:
        return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in jtop_names

    scopes: list[tuple[ast.AST, set[str]]] = []  # (where, names holding a jtop object there)
    funcs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    own: dict[ast.AST, set[str]] = {}
    for f in funcs:
        held = set()
        for n in ast.walk(f):
            if isinstance(n, ast.Assign) and is_ctor(n.value):
                held |= {t.id for t in n.targets if isinstance(t, ast.Name)}
            if isinstance(n, ast.With):
                held |= {it.optional_vars.id for it in n.items if is_ctor(it.context_expr)
                         and isinstance(it.optional_vars, ast.Name)}
        own[f] = held
    for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
        methods = [m for m in cls.body if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef))]
        slots = {(len(r.value.elts), i) for m in methods for r in ast.walk(m) if isinstance(r, ast.Return)
                 and isinstance(r.value, ast.Tuple) for i, e in enumerate(r.value.elts)
                 if isinstance(e, ast.Name) and e.id in own.get(m, set())}
        for m in methods:
            for n in ast.walk(m):
                if isinstance(n, ast.Assign) and isinstance(n.targets[0], ast.Tuple):
                    elts = n.targets[0].elts
                    own[m] |= {e.id for i, e in enumerate(elts) if (len(elts), i) in slots and isinstance(e, ast.Name)}
    scopes += [(f, held) for f, held in own.items() if held]
    for n in ast.walk(tree):  # the observer given to attach() receives the jtop object
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "attach" and n.args:
            cb = n.args[0]
            if isinstance(cb, ast.Lambda) and cb.args.args:
                scopes.append((cb.body, {cb.args.args[0].arg}))
            elif isinstance(cb, ast.Name):
                scopes += [(f, {f.args.args[0].arg}) for f in funcs if f.name == cb.id and f.args.args]
    calls = {id(n.func): n for n in ast.walk(tree) if isinstance(n, ast.Call)}
    uses, seen = [], set()
    for where, held in scopes:
        for n in ast.walk(where):
            if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id in held \
                    and id(n) not in seen:
                seen.add(id(n))
                call = calls.get(id(n))
                uses.append((n.lineno, n.attr, None if call is None else
                             (len(call.args), [k.arg for k in call.keywords if k.arg])))
    ctor_kw = [(n.lineno, k.arg) for n in ast.walk(tree) if is_ctor(n) for k in n.keywords if k.arg]
    return uses, ctor_kw


def power_keys_by_layout(tree) -> dict[str, set[str]]:
    """The keys :func:`bench.power.jtop_power_mw` reads, per ``jtop.power`` layout (its
    ``isinstance(power, dict)`` and ``isinstance(power, (tuple, list))`` branches)."""
    import sys

    sys.path.insert(0, str(FIXTURES))
    try:
        from extract import _string_keys
    finally:
        sys.path.pop(0)
    fn = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "jtop_power_mw")
    out: dict[str, set[str]] = {}
    for n in ast.walk(fn):
        if isinstance(n, ast.If):
            test = ast.unparse(n.test)
            layout = "dict" if "isinstance(power, dict)" in test else "tuple" if "tuple" in test else None
            if layout:
                out.setdefault(layout, set()).update(*(_string_keys(s) for s in n.body), _string_keys(n.test))
    return out


def test_jtop_fixtures_cover_both_power_layouts():
    assert {d["power"]["returns"] for d in JTOPS.values()} == {"dict", "tuple"}, list(JTOPS)
    assert any(_vkey(v) >= (7,) for v in JTOPS)


@pytest.mark.parametrize("version", sorted(JTOPS, key=_vkey))
def test_power_sampler_uses_only_what_jtop_has(version):
    api = JTOPS[version]["jtop"]
    members = {**api["inherited"], **api["members"]}
    uses, ctor_kw = jtop_uses(_power_tree())
    assert {"attach", "start", "close", "power"} <= {u[1] for u in uses}, uses  # the walk found the sampler
    for line, kw in ctor_kw:
        assert kw in members["__init__"], f"bench/power.py:{line}: jtop() has no argument {kw!r} in {version}"
    for line, name, call in uses:
        assert name in members, f"bench/power.py:{line}: jtop {version} has no {name!r}"
        desc = members[name]
        if call is not None:
            assert isinstance(desc, list), f"bench/power.py:{line}: jtop.{name} is a {desc}, not a method"
            npos, kws = call
            assert npos <= len(desc) and set(kws) <= set(desc[npos:]), \
                f"bench/power.py:{line}: jtop.{name}({', '.join(desc)}) called with {npos} positional, {kws}"
    keys = power_keys_by_layout(_power_tree())
    layout = JTOPS[version]["power"]["returns"]
    assert keys.get(layout), f"jtop_power_mw has no branch for jetson-stats {version}'s {layout} layout"
    missing = keys[layout] - set(JTOPS[version]["power"]["keys"])
    assert not missing, f"jtop_power_mw reads {sorted(missing)}, which jetson-stats {version}'s jtop.power never has"


def test_jtop_check_fails_on_a_name_jtop_lacks():
    tree = ast.parse(textwrap.dedent("""
        def start():
            from jtop import jtop
            handle = jtop(interval=0.1, rate=5)
            handle.attach(lambda j: j.power_now)
            handle.begin()
    """))
    uses, ctor_kw = jtop_uses(tree)
    members = {**JTOPS[max(JTOPS, key=_vkey)]["jtop"]["members"], **JTOPS[max(JTOPS, key=_vkey)]["jtop"]["inherited"]}
    assert [kw for _, kw in ctor_kw if kw not in members["__init__"]] == ["rate"]
    assert sorted(n for _, n, _ in uses if n not in members) == ["begin", "power_now"]
    keys = power_keys_by_layout(ast.parse(textwrap.dedent("""
        def jtop_power_mw(power):
            if isinstance(power, dict) and "tot" in power:
                return power["total"]["watts"]
    """)))
    assert keys["dict"] - set(JTOPS[max(JTOPS, key=_vkey)]["power"]["keys"]) == {"total", "watts"}


# ----------------------------------------------------------------------------- the power sampler ends its child

READING = "RAM 1802/7620MB (lfb 2x4MB) CPU [5%@1420,3%@1420] GR3D_FREQ 0% VDD_IN 4900mW/4900mW VDD_SOC 1500mW/1500mW"


@pytest.fixture
def fake_tegrastats(tmp_path, monkeypatch):
    """A real child process named tegrastats on PATH: prints a reading every interval until it is
    stopped, and leaves its pid in a file."""
    import os
    import stat
    import sys

    bindir = tmp_path / "bin"
    bindir.mkdir()
    pidfile = tmp_path / "tegrastats.pid"
    exe = bindir / "tegrastats"
    exe.write_text(f"#!{sys.executable}\n" + textwrap.dedent(f"""
        import os, sys, time
        ms = int(sys.argv[sys.argv.index("--interval") + 1])
        with open({str(pidfile)!r} + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.replace({str(pidfile)!r} + ".tmp", {str(pidfile)!r})
        while True:
            print({READING!r}, flush=True)
            time.sleep(ms / 1e3)
    """))
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    return pidfile


def _started(pidfile: Path) -> int:
    import time

    deadline = time.monotonic() + 20
    while not pidfile.exists():
        assert time.monotonic() < deadline, "the fake tegrastats did not start"
        time.sleep(0.02)
    return int(pidfile.read_text())


def _gone(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_tegrastats_sampler_measures_and_ends_its_child(fake_tegrastats):
    from deeplab_edge.bench import power

    s = power.TegrastatsSampler(interval_ms=20)
    assert s.available and s.executable.endswith("tegrastats")
    with power.sampling(s) as r:
        pid = _started(fake_tegrastats)
        import time

        time.sleep(0.2)
    assert r.watts == pytest.approx(4.9) and r.details["samples"] >= 1 and r.details["total_from"] == "VDD_IN"
    assert _gone(pid)


def test_an_exception_in_the_measured_block_still_ends_tegrastats(fake_tegrastats):
    from deeplab_edge.bench import power
    from deeplab_edge.interrupts import _children

    s = power.TegrastatsSampler(interval_ms=20)
    with pytest.raises(RuntimeError, match="benchmark failed"):
        with power.sampling(s) as r:
            pid = _started(fake_tegrastats)
            assert not _gone(pid)
            raise RuntimeError("benchmark failed")
    assert _gone(pid), "tegrastats outlived the failed benchmark"
    assert r.watts is None  # no reading from a failed block
    assert all(p.pid != pid for p in _children.values())  # nor left registered for the signal handler


def test_jtop_sampler_closes_jtop_however_the_block_ends(tmp_path, monkeypatch):
    """jtop's client (a thread talking to jtop.service) is closed on an exception, and when its
    start() fails; stood in for by a module with jtop's interface (its own names are checked
    against jetson-stats above)."""
    pkg = tmp_path / "fakejtop" / "jtop"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(textwrap.dedent("""
        EVENTS = []
        FAIL_START = False

        class jtop:
            def __init__(self, interval=1.0):
                self.observers = []
            def attach(self, observer):
                self.observers.append(observer)
            def start(self):
                EVENTS.append("start")
                if FAIL_START:
                    raise OSError("jtop.service is not active")
                self.power = {"rail": {"VDD_SOC": {"power": 1500, "avg": 1500}},
                              "tot": {"power": 4900, "avg": 4900, "name": "VDD_IN"}}
                for o in self.observers:
                    o(self)
            def close(self):
                EVENTS.append("close")
    """))
    import sys

    from deeplab_edge.bench import power

    monkeypatch.syspath_prepend(str(tmp_path / "fakejtop"))
    assert "jtop" not in sys.modules
    try:
        import jtop as fake

        _jtop_sampler_cases(power, fake)
    finally:
        sys.modules.pop("jtop", None)


def _jtop_sampler_cases(power, fake) -> None:
    s = power.JtopSampler(interval_ms=50)
    with power.sampling(s) as r:
        pass
    assert r.watts == pytest.approx(4.9) and fake.EVENTS == ["start", "close"]
    fake.EVENTS.clear()
    with pytest.raises(KeyError):
        with power.sampling(s):
            raise KeyError("boom")
    assert fake.EVENTS == ["start", "close"]
    fake.EVENTS.clear()
    fake.FAIL_START = True
    with pytest.raises(OSError):
        with power.sampling(s):
            pass
    assert fake.EVENTS == ["start", "close"]
    fake.EVENTS.clear()
    assert isinstance(power.power_sampler(), (power.TegrastatsSampler, type(None)))  # service down: fallback
    assert fake.EVENTS == ["start", "close"]


def test_no_sampler_measures_nothing():
    from deeplab_edge.bench import power

    with power.sampling(None) as r:
        pass
    assert r.watts is None and r.details is None
