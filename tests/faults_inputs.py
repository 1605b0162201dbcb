"""Hostile and huge inputs, made on purpose (issue 28): a checkpoint zip bomb, results
documents with duplicate cells or absurd numbers, malformed results from a remote device,
resealed manifests with bad fields. Shared by tests/test_faults_inputs.py and
benchmarks/reliability_inputs.py."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent

GiB = 1 << 30


# --------------------------------------------------------------------------- checkpoints


def checkpoint_zip_bomb(target: Path, key: str = "features.0.weight", nbytes: int = 2 * GiB) -> Path:
    """A PyTorch zip checkpoint of about 2 MB whose one float32 tensor inflates to ``nbytes``
    of zeros: a real torch.save layout (data.pkl, data/0, version, byteorder) with the
    storage deflated instead of stored. Written streaming: making it never holds it."""
    import pickle

    import torch

    numel = nbytes // 4

    class _Storage:
        pass

    class _Tensor:
        def __reduce__(self):
            return torch._utils._rebuild_tensor_v2, (_Storage(), 0, (numel,), (1,), False, OrderedDict())

    class _Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", torch.FloatStorage, "0", "cpu", numel) if isinstance(obj, _Storage) else None

    import io

    buffer = io.BytesIO()
    _Pickler(buffer, protocol=2).dump({key: _Tensor()})
    prefix = Path(target).stem or "archive"
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        z.writestr(f"{prefix}/data.pkl", buffer.getvalue())
        z.writestr(f"{prefix}/byteorder", "little")
        with z.open(f"{prefix}/data/0", "w", force_zip64=True) as f:
            chunk = bytes(16 << 20)
            left = numel * 4
            while left:
                f.write(chunk[: min(left, len(chunk))])
                left -= min(left, len(chunk))
        z.writestr(f"{prefix}/version", "3\n")
    return target


def peak_rss_of(argv: list[str], cwd: Path, timeout: int = 600) -> tuple[subprocess.CompletedProcess, int]:
    """Run ``argv`` as a child and return (process, its peak resident set in bytes). Run in
    a fresh helper process so that RUSAGE_CHILDREN holds this child alone."""
    probe = (
        "import json, resource, subprocess, sys\n"
        "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "print(json.dumps({'rc': p.returncode, 'stdout': p.stdout, 'stderr': p.stderr,"
        " 'rss': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    outer = subprocess.run([sys.executable, "-c", probe, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if outer.returncode != 0:
        raise RuntimeError(f"the RSS probe failed: {outer.stderr[-2000:]}")
    got = json.loads(outer.stdout)
    return subprocess.CompletedProcess(argv, got["rc"], got["stdout"], got["stderr"]), int(got["rss"])


# --------------------------------------------------------------------------- results documents


def results_row(model: str = "mobilenet_v2", variant: str = "fp32", backend: str = "onnxruntime", p50: float = 4.0, batch: int = 1) -> dict:
    """One well-formed results row (as edgekit writes it), batch ``batch`` timed at ``p50`` ms."""
    return {
        "model": model, "backend": backend, "variant": variant, "artifact_key": f"{model}-{variant}", "precision": variant,
        "providers": ["CPUExecutionProvider"], "threads": None,
        "latency": [{"batch_size": batch, "iterations": 50, "p50_ms": p50, "p90_ms": p50 * 1.1, "p99_ms": p50 * 1.3,
                     "mean_ms": p50, "throughput_ips": batch * 1000 / p50}],
        "peak_rss_mb": 300.0, "size_mb": 10.0,
        "accuracy": {"images": 112, "top1": 71.9, "top5": None, "top1_drop": None, "agreement": 98.0, "mean_kl": 1e-3, "max_abs_diff": 0.2},
        "environment": {"runtime": "onnxruntime 1.20"},
    }


def results_document(rows: list[dict]) -> dict:
    from edgekit.results.document import results_document as build

    return json.loads(json.dumps(build([], command="edgekit bench", images={"description": "synthetic", "count": 112}) | {"results": rows}))


def with_p50(document: dict, value: float) -> dict:
    """Every latency figure of the first row set to ``value`` (1e308, 5e-324...)."""
    doc = copy.deepcopy(document)
    for stats in doc["results"][0]["latency"]:
        for key in ("p50_ms", "p90_ms", "p99_ms", "mean_ms"):
            stats[key] = value
    return doc


def with_duplicate_cell(document: dict, slower: float = 4.0) -> dict:
    """The first row repeated at the end, ``slower`` times slower: a regression that a
    duplicate hides when only the last copy is compared, or the first."""
    doc = copy.deepcopy(document)
    first = copy.deepcopy(doc["results"][0])
    doc["results"].append(copy.deepcopy(first))
    for stats in doc["results"][0]["latency"]:
        for key in ("p50_ms", "p90_ms", "p99_ms", "mean_ms"):
            stats[key] *= slower
    return doc


def write(document: Any, path: Path) -> Path:
    Path(path).write_text(json.dumps(document, indent=1))
    return Path(path)


# --------------------------------------------------------------------------- a remote device that answers badly

FAKE_SSH = """#!/bin/sh
# A stand-in for ssh to a device whose runner sends back the file $EDGEKIT_FAKE_RESULTS:
# every remote command succeeds (the bundle is swallowed), `cat .../results.json` prints it.
for arg; do command="$arg"; done
case "$command" in
  *"cat "*results.json*) cat "$EDGEKIT_FAKE_RESULTS" ;;
  *platform.python_version*) echo 3.11.9 ;;
  *) cat >/dev/null ;;
esac
exit 0
"""


def fake_ssh(folder: Path) -> Path:
    """A folder holding an executable ``ssh`` (FAKE_SSH); put it first on PATH."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ssh").write_text(FAKE_SSH)
    (folder / "ssh").chmod(0o755)
    return folder


def remote_env(bin_dir: Path, payload: Path) -> dict:
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "EDGEKIT_FAKE_RESULTS": str(payload)}


def malformed_remote_results() -> dict[str, str]:
    """What a broken or hostile device may send back as results.json, by name."""
    good = results_document([results_row("mobilenet_v3_small", p50=2.0)])
    wrong_types = copy.deepcopy(good)
    wrong_types["results"][0]["latency"] = "fast"
    missing = copy.deepcopy(good)
    del missing["results"]
    huge = json.dumps(good).replace('"p50_ms": 2.0', '"p50_ms": 1e308')  # finite, and overflows every ratio
    return {
        "not JSON": "Segmentation fault (core dumped)\n",
        "wrong types": json.dumps(wrong_types),
        "missing keys": json.dumps(missing),
        "huge numbers": huge,
        "huge integer": json.dumps(good).replace('"iterations": 50', '"iterations": ' + "9" * 5000),
    }


# --------------------------------------------------------------------------- bundles and manifests


def _set_views(value: Any) -> Callable[[dict], None]:
    def change(meta: dict) -> None:
        meta["images"]["views"] = value(meta["images"]["views"])
    return change


# bundle.json's images.views edited by hand: each must be one error line from the runner
TAMPERED_VIEWS: dict[str, Callable[[dict], None]] = {
    "views not a list": _set_views(lambda views: "all"),
    "a view index out of range": _set_views(lambda views: [{**views[0], "view": 10**6}] + views[1:]),
    "a view without labels key": _set_views(lambda views: [{"file": views[0]["file"], "view": 0}] + views[1:]),
    "labels as a string": _set_views(lambda views: [{**views[0], "labels": "281"}] + views[1:]),
}


def edit_bundle_json(bundle_dir: Path, change: Callable[[dict], None]) -> None:
    path = Path(bundle_dir) / "bundle.json"
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta, indent=2))


def reseal(artifact_dir: Path, change: Callable[[dict], None]) -> None:
    """Edit an artifact's manifest and recompute its seal, as anyone can (the seal is an
    unkeyed SHA-256: an integrity check, not a signature)."""
    from edgekit.core import manifest_seal

    path = Path(artifact_dir) / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    manifest["seal"] = manifest_seal(manifest)
    path.write_text(json.dumps(manifest, indent=2))


def _setter(*keys: str, value: Any) -> Callable[[dict], None]:
    def change(manifest: dict) -> None:
        target = manifest
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value
    return change


# resealed manifests with fields of the wrong type: each must be one error line
RESEALED_MANIFESTS: dict[str, Callable[[dict], None]] = {
    "files not an object": _setter("files", value=["model.onnx"]),
    "input shape of strings": _setter("input", "shape", value=["N", "three", "x", "y"]),
    "preprocessing mean of text": _setter("preprocessing", "mean", value="imagenet"),
}
