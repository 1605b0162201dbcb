"""Which file each runtime should load from an artifact: the manifest's ``deploy`` section.

An INT8 artifact's model.onnx is the portable QDQ graph (signed activations, zero point 0,
as TensorRT requires). CPU runtimes run exact forms of it several times faster (see
backends/int8_cpu_form): ONNX Runtime's CPU provider one per weight form (int8 weights
where the CPU has VNNI/AMX or is ARM, uint8 weights on x86 without VNNI; the exporting
machine need not be the deploying one, so both are made), OpenVINO's CPU plugin two of its
own (clamped tensors at 0..255 on x86 with VNNI/AMX, 0..127 elsewhere).
`edgekit export` makes them beside the artifact and records, per runtime, each file to
load and where::

    "deploy": {"onnxruntime": [{"file": "model.ort-cpu-vnni-arm.onnx", "when": "CPU, x86 with VNNI/AMX, or ARM"}, ...],
               "openvino": [...], "tensorrt": [{"file": "model.onnx", "when": ""}]}

FP32 and FP16 artifacts name model.onnx for every runtime. Each backend declares its own
entries (``Backend.deploy_files``); bench picks the same files.

The CPU forms stay derived caches, hashed in ``<file>.edgekit.json`` (edgekit.files), not
sealed files: a damaged one fails only the backend that reads it, never the artifact.
The deploy section is added to the manifest of an intact artifact only, which is then
sealed again (an atomic rewrite; nothing else in the manifest changes).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Iterable, Optional

from .artifacts import write_manifest
from .core import Artifact

SECTION = "deploy"


def deploy_section(artifact: Artifact) -> dict[str, list[dict[str, str]]]:
    """{runtime: [{file, when}]} from every deployable backend; makes the files it names."""
    from .backends import get_backend
    from .backends.base import deployable_backends

    section: dict[str, list[dict[str, str]]] = {}
    for name in deployable_backends():
        for entry in get_backend(name).deploy_files(artifact):
            section.setdefault(entry.runtime, []).append({"file": entry.file, "when": entry.when})
    return section


def record_deploy_files(artifact: Artifact) -> Artifact:
    """Make the files each runtime should load from ``artifact`` and name them in its
    manifest (unchanged where it names them already); returns the artifact as it now is.
    A one-line error, and nothing written, when the artifact is not intact."""
    artifact.verified()  # never seal again over a changed file
    section = deploy_section(artifact)
    if artifact.manifest.get(SECTION) == section:
        return artifact
    write_manifest(artifact.path, {**artifact.manifest, SECTION: section})
    return Artifact.load(artifact.path).verified()


def _entries(manifest: dict) -> list[tuple[str, str, str]]:
    """(runtime, file, when) for every entry of the deploy section, in its order."""
    section = manifest.get(SECTION)
    if not isinstance(section, dict):
        return []
    return [(runtime, str(e.get("file")), str(e.get("when") or "")) for runtime, entries in section.items() for e in entries]


def file_state(artifact: Artifact, name: str) -> Optional[str]:
    """What is wrong with a file the deploy section names (None: its hash verifies): sealed
    files against the manifest, derived ones against their own record."""
    from .core import InvalidModelFileError, sha256_file
    from .files import derived_problem

    try:
        path = artifact.file(name)
    except InvalidModelFileError:
        return "not a path inside the artifact"
    sealed = (artifact.manifest.get("sha256") or {}).get(name)
    if sealed is None:
        return derived_problem(path)
    if not path.is_file():
        return "missing"
    return None if sha256_file(path) == sealed else "does not match its SHA-256 in the manifest"


def deploy_lines(artifact: Artifact, check: bool = False) -> list[str]:
    """The deploy section as a short block for the screen; with ``check``, each file's state."""
    entries = _entries(artifact.manifest)
    if not entries:
        return ["deploy: not recorded; `edgekit export <this folder>` writes the files each runtime loads and names them"]
    states = {file: file_state(artifact, file) for _, file, _ in entries} if check else {}
    files = {file for _, file, when in entries}
    if len(files) == 1 and not any(when for _, _, when in entries):
        (file,) = files
        state = f"  [{states[file] or 'hash verified'}]" if check else ""
        return [f"deploy: {file} on every runtime ({', '.join(dict.fromkeys(r for r, _, _ in entries))}){state}"]
    widths = [max(len(entry[i]) for entry in entries) for i in range(3)]
    lines = ["deploy: the file each runtime loads"]
    for runtime, file, when in entries:
        state = f"  [{states[file] or 'hash verified'}]" if check else ""
        lines.append(f"  {runtime:<{widths[0]}}  {file:<{widths[1]}}  {when:<{widths[2] if check else 0}}{state}".rstrip())
    return lines


def copy_deploy_files(artifact: Artifact, runtimes: Iterable[str], folder: Path) -> None:
    """Copy the files ``runtimes`` load (and the records of derived ones) from ``artifact``
    to ``folder`` where they exist and are not there yet; a backend's prepare_bundle then
    reuses them (or makes what is missing, and refuses one changed since it was written)."""
    from .files import record_path

    wanted = set(runtimes)
    for runtime, name, _ in _entries(artifact.manifest):
        source, target = artifact.file(name), Path(folder) / name
        if runtime not in wanted or target.exists() or not source.is_file():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        if record_path(source).is_file():
            shutil.copyfile(record_path(source), record_path(target))
