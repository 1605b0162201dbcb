"""Faults for `edgekit run` and recipes, made on purpose: cheap real recipes (random-init
SqueezeNet at 64 px, a few iterations), a cell that fails part way, a run killed after its
first cell, hostile outputs, deeply nested and huge TOML. Shared by tests/test_faults_runs.py
and benchmarks/reliability_runs.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parent.parent

BENCH = '[bench]\niterations = 3\nwarmup = 1\npower = "off"\nviews = 1\n'
CHEAP = 'variants = ["fp32"]\nbackends = ["onnxruntime"]\nbatch = [1]\n'


def recipe(folder: Path, text: str, name: str = "recipe.toml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


def cheap_recipe(folder: Path, models: list[str], extra: str = "", output: Optional[str] = "results.json", artifacts: Optional[Path] = None) -> Path:
    """Random-init models at 64 px on ONNX Runtime, 3 iterations: a cell in seconds."""
    head = f"models = {json.dumps(models)}\n{CHEAP}" + (f'output = "{output}"\n' if output else "")
    export = "[export]\ninput_size = 64\n" + (f'artifacts = "{artifacts}"\n' if artifacts else "")
    per_model = "".join(f'[model.{m}]\nrandom_init = true\n' for m in models if f"[model.{m}]" not in extra)
    return recipe(folder, head + export + per_model + extra + BENCH)


def failing_second_cell(folder: Path, artifacts: Optional[Path] = None) -> Path:
    """Two cells; the second's weights file exists but is text, so its build fails after
    the first cell was measured."""
    (folder).mkdir(parents=True, exist_ok=True)
    (folder / "bad.pth").write_text("not a checkpoint\n")
    return cheap_recipe(folder, ["squeezenet1_1", "squeezenet1_0"], '[model.squeezenet1_0]\nweights = "bad.pth"\n', artifacts=artifacts)


def nested_toml(depth: int = 10_000, kind: str = "array") -> str:
    if kind == "array":
        return "models = " + "[" * depth + "]" * depth + "\n"
    return "models = " + "{a = " * depth + "1" + "}" * depth + "\n"


def huge_recipe(path: Path, megabytes: int = 2) -> Path:
    """A valid-looking recipe padded with a comment to more than edgekit reads."""
    path.write_text('models = ["squeezenet1_1"]\n' + "#" * (megabytes * 1024 * 1024) + "\n")
    return path


def units(document: dict) -> list[dict]:
    return (document.get("cluster") or {}).get("units") or []


def read_json(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def kill_after_first_cell(args: list[str], cwd: Path, results: Path, timeout: float = 300, env: Optional[dict] = None) -> tuple[subprocess.CompletedProcess, Optional[dict], Optional[dict]]:
    """Run `edgekit ARGS` in a process of its own; as soon as the results file says the first
    cell is done and another runs, SIGTERM it. Returns (the finished process, the document
    seen at the kill, the document left)."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    proc = subprocess.Popen([sys.executable, "-m", "edgekit.cli", *args], cwd=cwd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = None
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            document = read_json(results)
            states = [u.get("state") for u in units(document or {})]
            if states and states[0] == "done" and "running" in states[1:]:
                seen = document
                proc.send_signal(signal.SIGTERM)
                break
            time.sleep(0.05)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), seen, read_json(results)
