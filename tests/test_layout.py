"""The code's layout rules (issue 25), read from the source: imports inside functions only where they are needed,
no long functions without a reason, and the by-hand experiments apart from the installed library."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# import name -> folder (setuptools package-dir: one namespace)
PACKAGES = {"deeplab_edge": ROOT / "deeplab_edge", "deeplab_edge.kernels": ROOT / "kernels",
            "deeplab_edge.calibration": ROOT / "calibration", "deeplab_edge.bench": ROOT / "bench"}
# optional, heavy dependencies: imported where they are used, so that the rest works without them
OPTIONAL = {"onnx", "onnxruntime", "onnxscript", "onnxslim", "triton", "tensorrt", "pydensecrf", "matplotlib", "cv2",
            "openvino", "ai_edge_litert", "tflite", "modelopt", "jtop"}
LONG = 80


def _modules() -> dict[str, Path]:
    """Every installed module by import name (bench/experiments/ is not a package: not installed)."""
    found = {}
    for pkg, folder in PACKAGES.items():
        for path in folder.glob("**/*.py"):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            name = ".".join([pkg, *parts])
            if any(name.startswith(other + ".") or name == other for other in PACKAGES if other != pkg
                   and other.startswith(pkg + ".")):
                continue  # e.g. deeplab_edge/kernels does not exist; guard against overlaps anyway
            if (path.parent / "__init__.py").is_file() or path.parent == folder:
                found[name] = path
    return found


MODULES = _modules()


def _resolve(module: str, node: ast.ImportFrom | ast.Import) -> list[str]:
    """The absolute names an import statement in ``module`` loads."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if node.level == 0:
        base = node.module or ""
    else:
        pkg = module if MODULES.get(module, Path()).name == "__init__.py" else module.rsplit(".", 1)[0]
        for _ in range(node.level - 1):
            pkg = pkg.rsplit(".", 1)[0]
        base = f"{pkg}.{node.module}" if node.module else pkg
    names = [base]
    names += [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES]
    return names


def _top_level_imports(module: str, tree: ast.Module) -> list[str]:
    """Imports that run when the module is imported (not those inside functions or ``try`` blocks)."""
    out = []
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out += _resolve(module, node)
    return out


def _heavy_modules() -> set[str]:
    """The installed modules that need an OPTIONAL dependency to import (directly or through another module)."""
    trees = {m: ast.parse(p.read_text()) for m, p in MODULES.items()}
    deps = {m: _top_level_imports(m, t) for m, t in trees.items()}
    heavy = {m for m, ds in deps.items() if any(d.split(".")[0] in OPTIONAL for d in ds)}
    while True:
        more = {m for m, ds in deps.items() if m not in heavy and any(d in heavy for d in ds)}
        if not more:
            return heavy
        heavy |= more


def _function_imports(tree: ast.Module):
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    yield fn, node


def _library(name: str) -> bool:
    """What a command imports inside itself: the library (and torch, numpy, PIL, which it needs), not cli/."""
    top = name.split(".")[0]
    return (top == "deeplab_edge" and not name.startswith("deeplab_edge.cli")) or top in ("torch", "numpy", "PIL")


def test_the_module_table_sees_the_layout():
    assert {"deeplab_edge.calibration.workflow", "deeplab_edge.kernels.aspp", "deeplab_edge.bench.harness",
            "deeplab_edge.cli.app", "deeplab_edge.bench.ptq"} <= set(MODULES)
    assert not [m for m in MODULES if "experiments" in m]
    heavy = _heavy_modules()
    assert "deeplab_edge.calibration.workflow" in heavy  # imports onnx at its top
    assert "deeplab_edge.metrics" not in heavy and "deeplab_edge.calibration.methods" not in heavy


def test_imports_inside_functions_are_for_optional_dependencies_only():
    """A function-level import in the library is an optional heavy dependency, a module that needs one, or is
    marked ``# lazy: <reason>`` (an import cycle); in cli/, the library is imported inside the commands (so
    that ``deeplab-edge --help`` never imports torch), everything else at the top."""
    heavy = _heavy_modules()
    bad = []
    for module, path in MODULES.items():
        text = path.read_text()
        lines = text.splitlines()
        for fn, node in _function_imports(ast.parse(text)):
            names = _resolve(module, node)
            line = lines[node.lineno - 1]
            if "# lazy:" in line or "# lazy:" in lines[node.end_lineno - 1]:
                continue
            if module.startswith("deeplab_edge.cli.") and all(_library(n) for n in names):
                continue
            if any(n.split(".")[0] in OPTIONAL or n in heavy for n in names):
                continue
            bad.append(f"{path.relative_to(ROOT)}:{node.lineno} in {fn.name}(): {', '.join(names)}")
    assert not bad, "imports to move to the module's top (or mark `# lazy: reason`):\n" + "\n".join(bad)


def test_no_function_is_long_without_a_reason():
    """Functions over 80 lines say why in their docstring (the word "long")."""
    bad = []
    for module, path in MODULES.items():
        for fn in ast.walk(ast.parse(path.read_text())):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) and fn.end_lineno - fn.lineno + 1 > LONG:
                if "long" not in (ast.get_docstring(fn) or "").lower():
                    bad.append(f"{path.relative_to(ROOT)}:{fn.lineno} {fn.name} ({fn.end_lineno - fn.lineno + 1} lines)")
    assert not bad, "\n".join(bad)


def test_the_rules_can_fail():
    """The two checks above flag what they should: a stdlib import in a function, an 81-line function."""
    src = "def f():\n    import json\n    return json\n\n\ndef g():\n" + "    x = 1\n" * 80
    tree = ast.parse(src)
    found = list(_function_imports(tree))
    assert [(fn.name, _resolve("deeplab_edge.x", node)) for fn, node in found] == [("f", ["json"])]
    assert [fn.name for fn in ast.walk(tree) if isinstance(fn, ast.FunctionDef)
            and fn.end_lineno - fn.lineno + 1 > LONG] == ["g"]


def test_experiments_are_scripts_beside_their_results():
    """bench/experiments/ holds the by-hand scripts (not a package: not installed); their results sit in
    bench/results/."""
    exp = ROOT / "bench" / "experiments"
    assert not (exp / "__init__.py").exists()
    for name in ("ptq_compare.py", "modelopt_compare.py", "cle_precondition.py"):
        assert (exp / name).is_file() and not (ROOT / "bench" / name).exists()
    assert (ROOT / "bench" / "results" / "ptq_compare_camvid_val.json").is_file()


@pytest.mark.parametrize("script", ["ptq_compare.py", "cle_precondition.py"])
def test_experiment_scripts_run(script):
    import subprocess

    res = subprocess.run([sys.executable, str(ROOT / "bench" / "experiments" / script), "--help"],
                         capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0 and "usage:" in res.stdout, res.stderr


def test_command_modules_import_only_app_and_common():
    """A command module parses, calls the library and prints: it imports no other command module (the one
    command in two groups is wired in cli/__init__.py)."""
    bad = []
    for module, path in MODULES.items():
        if not module.startswith("deeplab_edge.cli.") or module.endswith(("cli.app", "cli.common", "cli.__main__")):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                cli = [n for n in _resolve(module, node) if n.startswith("deeplab_edge.cli.")]
                bad += [f"{path.name}:{node.lineno} imports {n}" for n in cli
                        if n not in ("deeplab_edge.cli.app", "deeplab_edge.cli.common")]
    assert not bad, "\n".join(bad)
