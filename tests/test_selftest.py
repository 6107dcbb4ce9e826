"""``selftest --gpu`` (issue #18): its plan, checked here against the CLI's own parser, and its
runner, run here on CPU-sized steps. The plan itself can only run on a GPU."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest

from deeplab_edge.bench.selftest import BUDGET_S, Inputs, Step, plan, run_plan
from deeplab_edge.cli import main

ROOT = Path(__file__).parents[1]


def _inputs(shared) -> Inputs:
    return Inputs(voc=shared["voc"], camvid=shared["camvid"], tflite=shared["tflite"],
                  camvid_weights=ROOT / "weights" / "deeplabv3_mnv2_camvid.pt",
                  camvid_train=shared["camvid"].parent / "camvid_train")


def _parse(argv: list[str]) -> click.Context:
    """Parse a `deeplab-edge` command line as the CLI would, without running it."""
    top = click.Context(main, info_name="deeplab-edge")
    name, cmd, rest = main.resolve_command(top, list(argv))
    parent = top
    while isinstance(cmd, click.Group) and rest and rest[0] in cmd.commands:
        parent = cmd.make_context(name, [], parent=parent, resilient_parsing=True)  # the group alone
        name, cmd, rest = cmd.resolve_command(parent, rest)
    return cmd.make_context(name, rest, parent=parent)


@pytest.mark.parametrize("tensorrt", [False, True], ids=["gpu", "gpu+tensorrt"])
def test_every_planned_command_parses_and_its_inputs_exist(shared, tmp_path, tensorrt):
    steps = plan(tmp_path / "run", _inputs(shared), tensorrt=tensorrt)
    names = [s.name for s in steps]
    assert names[:6] == ["import", "kernels-check", "kernels-bench", "crf-bench", "bench-voc", "bench-camvid"]
    assert ("build-int8" in names) == tensorrt
    for s in steps:
        ctx = _parse(s.argv)  # raises click's UsageError / BadParameter on any wrong option or value
        assert not ctx.args, (s.name, ctx.args)
        for value in ctx.params.values():
            if isinstance(value, Path) and not str(value).startswith(str(tmp_path)):
                assert value.exists(), (s.name, value)  # every input the GPU run reads is here
    assert sum(s.estimate_s for s in steps if s.needs == "cuda") <= BUDGET_S


def test_without_a_gpu_it_prints_the_plan_and_exits_2_at_once(tmp_path):
    start = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "deeplab_edge.cli", "selftest", "--gpu", "--json",
                          "-o", str(tmp_path / "run")], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert res.returncode == 2, res.stderr
    assert time.monotonic() - start < 30
    shown = json.loads(res.stdout)
    assert [s["name"] for s in shown["plan"]][:2] == ["import", "kernels-check"]
    assert res.stderr.count("error:") == 1 and "no CUDA GPU" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "run").exists()


def test_runner_runs_real_steps_records_failures_and_keeps_to_the_budget(tmp_path, monkeypatch):
    """The runner on CPU-sized steps: a real `kernels check` in the interpreter (its JSON
    folded into the results), a step that fails, and a step past the budget."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    out = tmp_path / "run"
    out.mkdir()
    steps = [Step("kernels-check", ["kernels", "check", "--device", "cpu", "--dtype", "fp32",
                                    "-o", str(out / "kernels_check.json")], 1, "kernels_check.json"),
             Step("fails", ["eval", "--weights", str(tmp_path / "missing.pt"), "--data", str(tmp_path)], 1),
             Step("sleeps", ["kernels", "check", "--device", "cpu", "--dtype", "fp32"], 1)]
    res = run_plan(steps[:2], out, budget_s=300)
    first, second = res["steps"]
    assert first["status"] == "ok" and first["result"]["ok"] and len(first["result"]["rows"]) == 7
    assert second["status"] == "exit 2" and "checkpoint not found" in second["log"]
    assert res["ok"] is False and res["environment"]["git_commit"]
    late = run_plan(steps[2:], out, budget_s=4)
    assert late["steps"][0]["status"] == "not run"
