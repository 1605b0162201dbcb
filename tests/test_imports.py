"""Heavy frameworks load only where needed: `import edgekit` and the ONNX Runtime worker skip torch."""

import subprocess
import sys

from conftest import REPO


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys; print(' '.join(sys.modules))"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout
    return set(out.split())


def test_package_import_is_light():
    loaded = _modules_after("import edgekit, edgekit.cli, edgekit.plan, edgekit.session, edgekit.timing, edgekit.backends")
    assert not {"torch", "onnx", "onnxruntime", "timm", "torchvision"} & loaded


def test_onnxruntime_worker_runs_without_torch(tiny_artifact):
    code = f"""
from pathlib import Path
from edgekit.backends import get_backend, BackendOptions
from edgekit.core import Artifact
from edgekit.data import load_all, resolve_images
artifact = Artifact.load(Path({str(tiny_artifact.path)!r}))
x, _ = load_all(resolve_images(views_per_image=1, limit=2), artifact.preprocessing)
assert get_backend("onnxruntime").load(artifact, BackendOptions()).run(x).shape == (2, 1000)
"""
    loaded = _modules_after(code)
    assert "onnxruntime" in loaded and "torch" not in loaded
