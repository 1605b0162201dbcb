"""A new backend is its module and one registration line: a throwaway CPU backend with one
option of its own, provided by a package on the path (an ``edgekit.backends`` entry point),
gets its flag in `bench`, a recipe key, a device-runner argument, the applicability check,
and runs through the same bench session as every other backend, in worker processes."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO

TOY_BACKEND = '''
from dataclasses import dataclass

from edgekit.backends.base import BackendBase, SessionBase, backend_option

SPINNING = backend_option("toy_spinning", "--toy-spinning", "choice", "toy: let ONNX Runtime's threads spin.", "on", choices=("on", "off"))


@dataclass(frozen=True)
class ToyOptions:
    spinning: str = SPINNING.field()


class ToySession(SessionBase):
    def __init__(self, path, spinning):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning == "on" else "0")
        self._session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        self.precision = "fp32"
        self.providers = (f"toy spinning={spinning}",)
        self.device = "cpu"
        self.threads = None

    def run(self, batch):
        return self._session.run(None, {self._input: batch})[0]


class ToyBackend(BackendBase):
    name = "toy"
    options = (SPINNING,)
    options_type = ToyOptions

    def check_available(self):
        pass

    def compile(self, artifact, options):
        return artifact

    def load(self, artifact, options):
        return ToySession(artifact.onnx_path, self.own_options(options).spinning)

    def size_mb(self, artifact):
        return None
'''


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory):
    """The toy backend's module, and its one registration line (an entry point)."""
    root = tmp_path_factory.mktemp("plugin")
    (root / "toy_backend.py").write_text(TOY_BACKEND)
    info = root / "toy_backend-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-backend\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[edgekit.backends]\ntoy = toy_backend:ToyBackend\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(REPO)])}


def _python(code: str, env: dict, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_its_option_reaches_every_interface_from_its_own_module(plugin_env, tmp_path):
    proc = _python("""
        from edgekit.options import BY_KEY, Settings, check_applicable, device_options, recipe_options, runner_argv, settings_from_recipe
        from edgekit.core import UsageError
        option = BY_KEY["toy_spinning"]
        assert option.applies_to == ("toy",), option
        assert recipe_options()["bench"]["toy_spinning"] is not None
        assert option in device_options()
        argv = runner_argv(Settings(toy_spinning="off"))
        assert argv[argv.index("--toy-spinning") + 1] == "off", argv
        assert settings_from_recipe({"bench": {"toy_spinning": "off"}})["toy_spinning"] == "off"
        assert "toy" in BY_KEY["backends"].help
        try:
            check_applicable(Settings(toy_spinning="off"), ["onnxruntime"])
        except UsageError as e:
            print(e)
        else:
            raise SystemExit("not refused")
    """, plugin_env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "--toy-spinning applies to the toy backend; add --backend toy" in proc.stdout
    help_text = subprocess.run([sys.executable, "-m", "edgekit.cli", "bench", "--help"], env=plugin_env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert "--toy-spinning" in help_text.stdout, help_text.stdout


def test_it_runs_in_the_bench_session_with_its_option(plugin_env, tiny_artifact, tmp_path):
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, "-m", "edgekit.cli", "bench", str(tiny_artifact.path), "--backend", "pytorch,toy", "--toy-spinning", "off",
         "--iterations", "3", "--warmup", "1", "--limit", "2", "--views", "1", "--json", str(out)],
        env=plugin_env, cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    document = json.loads(out.read_text())
    toy = next(r for r in document["results"] if r["backend"] == "toy")
    assert toy["error"] is None, toy["error"]
    assert toy["providers"] == ["toy spinning=off"]  # the worker process bound the option to the backend's own type
    assert toy["latency"][0]["p50_ms"] > 0
    parity = next(p for p in document["parity"] if "toy" in (p["first"], p["second"]))
    assert parity["agreement"] == 100.0 and parity["max_abs_diff"] < 1e-3  # the same graph as the PyTorch original
