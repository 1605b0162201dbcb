"""`edgekit bundle`: one folder with everything a device needs to run and judge an artifact.

    DIR/bundle.json          every file with its SHA-256, the evaluation views in order, backends
    DIR/artifact/            manifest.json and model.onnx (+ the INT8 CPU forms, as export made them)
    DIR/preprocessing.json   the preprocessing contract, from the manifest
    DIR/images/              the evaluation photos (and their licences)
    DIR/reference/           the PyTorch FP32 logits for exactly those views, computed here
    DIR/edgekit/             the torch-free part of edgekit, copied from this installation
    DIR/README.txt           the command to run

The device runs ``cd DIR && python3 -m edgekit.device_runner bench`` with numpy, Pillow
and the backend's runtime only. The code it runs is copied, not rewritten: the modules
the runner imports (found by following edgekit's own imports) go in as they are.
"""

from __future__ import annotations

import ast
import dataclasses
import datetime as _dt
import json
import os
import shutil
import warnings
from importlib import metadata
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .backends import BACKENDS, get_backend
from .backends.base import BASELINE_BACKEND, deployable_backends
from .core import MANIFEST_NAME, Artifact, DataError, EdgekitError, UsageError, sha256_file, stable_hash
from .data import SAMPLES_DIR, ImageSet, skipped_summary
from .device_runner import BUNDLE_FILE, BUNDLE_FORMAT, RUN_COMMAND
from .evaluation import LogitsFile
from .files import atomic_write_text, make_staging_dir, move_aside, release_staging_dir, work_folder
from .progress import Progress

PACKAGE_DIR = Path(__file__).resolve().parent
ARTIFACT_DIR = "artifact"
REFERENCE_FILE = "reference/pytorch_fp32_logits.npy"
# Where the runner starts; everything these import, at any depth, is copied with them.
RUNNER_DATA = ("samples/imagenet_classes.tsv",)  # class names for --data folders named by synset
NOT_ON_DEVICE = {"torch", "torchvision", "timm", "onnx", "click", "rich", "matplotlib", "torch_pruning"}


# --------------------------------------------------------------------------- the runner's code


def _module_path(name: str) -> Optional[Path]:
    """'backends.base' -> edgekit/backends/base.py (or a package's __init__.py); '' is edgekit."""
    base = PACKAGE_DIR.joinpath(*name.split(".")) if name else PACKAGE_DIR
    for candidate in (base.with_suffix(".py") if name else None, base / "__init__.py"):
        if candidate is not None and candidate.is_file():
            return candidate
    return None


def _relative_imports(path: Path, module: str) -> set[str]:
    """edgekit modules that ``module`` imports, anywhere in the file (inside functions too)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.ImportFrom) or node.level == 0:
            continue
        parts = package.split(".") if package else []
        parts = parts[: len(parts) - (node.level - 1)] if node.level > 1 else parts
        base = ".".join(parts + (node.module.split(".") if node.module else []))
        found.add(base)
        for alias in node.names:  # `from . import x` may name a module
            sub = f"{base}.{alias.name}" if base else alias.name
            if _module_path(sub) is not None:
                found.add(sub)
    return found


def _top_level_imports(path: Path) -> set[str]:
    """Top-level packages imported when the module loads (not inside functions)."""
    names: set[str] = set()

    def visit(statements) -> None:
        for node in statements:
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
            elif isinstance(node, (ast.If, ast.Try, ast.With)):
                for field in ("body", "orelse", "finalbody", "handlers"):
                    visit(getattr(node, field, []))
            elif isinstance(node, ast.ExceptHandler):
                visit(node.body)

    visit(ast.parse(path.read_text(), str(path)).body)
    return names


def runner_roots() -> tuple[str, ...]:
    """Where the runner starts: itself, the worker, and every backend a bundle can carry
    (from the backend registry)."""
    backends = tuple(BACKENDS.get(name).split(":")[0].removeprefix("edgekit.") for name in deployable_backends())
    return ("device_runner", "worker", *backends)


def runner_modules() -> list[str]:
    """Every edgekit module the device runner can reach, with the packages above them."""
    seen: set[str] = set()
    todo = list(runner_roots())
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = _module_path(name)
        if path is None:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(len(parts))]  # edgekit/__init__, backends/__init__...
        todo += sorted(_relative_imports(path, name))
    for name in sorted(seen):
        heavy = _top_level_imports(_module_path(name)) & NOT_ON_DEVICE
        if heavy:  # an edgekit bug, not a user error: the runner must load without these
            raise RuntimeError(f"edgekit.{name} imports {', '.join(sorted(heavy))} at import time; the device runner cannot carry it")
    return sorted(seen)


def _copy_runner(staging: Path) -> None:
    for name in runner_modules():
        source = _module_path(name)
        target = staging / "edgekit" / source.relative_to(PACKAGE_DIR)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    for name in RUNNER_DATA:
        target = staging / "edgekit" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(PACKAGE_DIR / name, target)


# --------------------------------------------------------------------------- the bundle


def check_backends(backends: Sequence[str]) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(backends))
    if not names:
        *others, last = deployable_backends()
        raise UsageError(f"name a backend: --backend {', '.join(others)} or {last}")
    for name in names:
        BACKENDS.get(name)  # unknown names: one line with the close ones
        if name not in deployable_backends():
            raise UsageError(f"{name} is the baseline and runs here: its FP32 logits travel in the bundle; bundle a deployment runtime ({', '.join(deployable_backends())})")
    return names


def _readable(images: ImageSet, artifact: Artifact) -> ImageSet:
    """Drop views of files that cannot be read (with a warning): every bundled view must
    have its row of reference logits."""
    from .data import UnreadableImage, preprocess

    bad = {}
    for view in {v.image.path: v for v in images.views}.values():
        try:
            preprocess(view, artifact.preprocessing)
        except UnreadableImage as e:
            bad[view.image.path] = e.reason
    if bad:
        warnings.warn(skipped_summary([(0, str(path), reason) for path, reason in bad.items()]) + "; not bundled", stacklevel=2)
    kept = tuple(v for v in images.views if v.image.path not in bad)
    if not kept:
        raise DataError(f"none of the images in {images.description} could be read")
    return dataclasses.replace(images, views=kept) if bad else images


def _copy_images(images: ImageSet, staging: Path) -> list[dict]:
    """images/<path relative to the images' common folder>; returns the views in order."""
    files = list(dict.fromkeys(v.image.path.resolve() for v in images.views))
    root = Path(os.path.commonpath([p.parent for p in files]))
    names = {}
    for path in files:
        name = (Path("images") / path.relative_to(root)).as_posix()
        (staging / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, staging / name)
        names[path] = name
    if root == SAMPLES_DIR.resolve():
        shutil.copyfile(SAMPLES_DIR / "LICENCES.md", staging / "images" / "LICENCES.md")
    return [
        {"file": names[v.image.path.resolve()], "labels": list(v.image.labels) if v.image.labels is not None else None, "view": v.view}
        for v in images.views
    ]


def _copy_artifact(artifact: Artifact, backends: Sequence[str], staging: Path) -> Artifact:
    """manifest.json and the ONNX graph; for INT8, the CPU forms the CPU backends run: the
    very files `edgekit export` made (see edgekit.deploy), else made here, because making
    them needs the onnx package the device may lack."""
    from .deploy import copy_deploy_files

    artifact.verified()
    folder = staging / ARTIFACT_DIR
    folder.mkdir()
    shutil.copyfile(artifact.path / MANIFEST_NAME, folder / MANIFEST_NAME)
    shutil.copyfile(artifact.onnx_path, folder / artifact.onnx_path.name)
    copy_deploy_files(artifact, backends, folder)
    copied = Artifact.load(folder)
    for backend in backends:  # what each backend needs made here, where the tools are
        get_backend(backend).prepare_bundle(copied)
    return copied


def _readme(meta: dict) -> str:
    runtimes = sorted({package for b in meta["backends"] for _, package in get_backend(b).runtime_packages})
    return (
        f"edgekit bundle {meta['id']}: {meta['model']} [{meta['artifact_key']}, {meta['variant']}] for {', '.join(meta['backends'])}\n\n"
        f"Needs Python 3.10+ with: pip install numpy pillow {' '.join(runtimes)}\n"
        + "".join(f"({note})\n" for note in dict.fromkeys(get_backend(b).device_note for b in meta["backends"]) if note)
        + "\n"
        + f"    cd <this folder> && {RUN_COMMAND}\n"
        f"    {RUN_COMMAND} --help       # --iterations, --batch, --threads, --device, --data DIR, --json FILE\n\n"
        "It checks every file against bundle.json, prints a table and writes results.json,\n"
        "which `edgekit report` and `edgekit check` read like any `edgekit bench` result.\n"
    )


def _previous_bundle(out: Path) -> Optional[set[str]]:
    """What the bundle already at ``out`` lists as its own (with bundle.json itself); None
    where there is nothing there or an empty folder. A file, a folder with files and no
    bundle.json, or an unreadable bundle.json: a one-line error, nothing touched."""
    if not out.exists():
        return None
    try:
        if not out.is_dir():
            raise UsageError(f"{out} exists and is not a folder; choose another -o")
        if not any(out.iterdir()):
            return None
        if not (out / BUNDLE_FILE).is_file():
            raise UsageError(f"{out} has files in it and no {BUNDLE_FILE}: it is not an edgekit bundle; choose another -o "
                             "(a previous bundle there is replaced, keeping the files it did not list)")
        files = json.loads((out / BUNDLE_FILE).read_text(encoding="utf-8")).get("files")
    except OSError as e:
        raise EdgekitError(f"cannot read {out}: {e.strerror or e}") from None
    except (ValueError, AttributeError):
        files = None
    if not isinstance(files, dict) or not all(isinstance(name, str) for name in files):
        raise UsageError(f"{out / BUNDLE_FILE} is not a readable bundle list, so edgekit cannot tell its files from yours; "
                         "move the folder away or choose another -o")
    return set(files) | {BUNDLE_FILE}


def _foreign(folder: Path, listed: set[str], prefix: str = "") -> list[str]:
    """What in ``folder`` the previous bundle did not list (the device's results.json,
    your notes): relative paths, a folder wholly not the bundle's as one entry. Python's
    caches of the bundled code (edgekit/**/__pycache__) count as the bundle's."""
    found = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        rel = f"{prefix}{entry.name}"
        if rel in listed:
            continue
        if entry.is_dir(follow_symlinks=False):
            if entry.name == "__pycache__" and rel.startswith("edgekit/"):
                continue
            if any(name.startswith(rel + "/") for name in listed):
                found += _foreign(Path(entry.path), listed, rel + "/")
                continue
        found.append(rel)
    return found


def _clash(staging: Path, rel: str) -> Optional[str]:
    """The new bundle's path that a kept file at ``rel`` would collide with, if any: the
    same path, or a file of the bundle where the kept one needs a folder."""
    target = staging / rel
    if os.path.lexists(target):
        return rel
    for parent in target.parents:
        if parent == staging:
            return None
        if os.path.lexists(parent) and not parent.is_dir():
            return parent.relative_to(staging).as_posix()
    return None


def _replace_folder(staging: Path, out: Path, previous: Optional[set[str]]) -> None:
    """Rename the finished bundle into place. A previous bundle there is replaced, but
    only what it listed: everything else (the device's results.json, your notes) moves
    into the new bundle. A file of yours where the new bundle puts one of its own is a
    one-line error before anything changes. Meanwhile the old folder waits beside as
    ``<out>.previous-bundle-<time>`` (not a staging folder, so never cleaned up by
    itself: a kill in between loses nothing), removed once only the old bundle's own
    files are left in it."""
    if previous is None:
        release_staging_dir(staging)
        os.replace(staging, out)  # nothing there, or an empty folder
        return
    foreign = _foreign(out, previous)
    for rel in foreign:
        clash = _clash(staging, rel)
        if clash is not None:
            raise UsageError(f"{out / rel} is not from the previous bundle, and the new bundle writes {clash}; "
                             "move it out of the folder and bundle again")
    release_staging_dir(staging)
    aside = move_aside(out, "previous-bundle")
    os.replace(staging, out)
    try:
        for rel in foreign:
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(aside / rel, out / rel)
    except OSError as e:
        raise EdgekitError(f"the new bundle is in {out}, but moving your files over from the previous one failed ({e.strerror or e}); "
                           f"what is left of them is in {aside}") from None
    left = _foreign(aside, previous)
    if left:
        warnings.warn(f"kept the previous bundle in {aside}: it still holds {', '.join(left[:3])}" + (" ..." if len(left) > 3 else ""), stacklevel=3)
    else:
        shutil.rmtree(aside, ignore_errors=True)


def make_bundle(
    artifact: Artifact,
    backends: Sequence[str],
    images: ImageSet,
    out: Path,
    *,
    device: str = "cpu",
    batch_sizes: Sequence[int] = (1,),
    progress: Progress = lambda stage, done, total: None,
) -> Path:
    """Write the bundle for ``artifact`` to ``out`` (built aside, then renamed into place)."""
    from .session import reference_logits

    backends = check_backends(backends)
    out = Path(out)
    if out.is_symlink():  # a link to a folder: the bundle goes where it leads, the link stays
        out = Path(os.path.realpath(out))
    previous = _previous_bundle(out)
    images = _readable(images, artifact)
    has_original = artifact.manifest["model"].get("weights_source") is not None
    try:
        staging = make_staging_dir(out.parent, out.name, remove_orphans=False)  # out.parent is the user's folder
    except OSError as e:
        raise EdgekitError(f"cannot write the bundle under {out.parent}: {e.strerror or e}") from None
    try:
        progress("copying the artifact and images", None, None)
        bundled = _copy_artifact(artifact, backends, staging)
        views = _copy_images(images, staging)
        atomic_write_text(staging / "preprocessing.json", json.dumps(artifact.manifest["preprocessing"], indent=2) + "\n")
        _copy_runner(staging)
        reference = None
        if has_original:
            with work_folder("reference") as work:
                logits = reference_logits(artifact, images, Path(work), progress=lambda _backend, stage, done, total: progress(f"pytorch reference: {stage}", done, total)).logits
                if not np.array_equal(logits.rows, np.arange(len(images))):
                    raise DataError(f"PyTorch read {len(logits.rows)} of the {len(images)} bundled images; some could not be read")
                (staging / REFERENCE_FILE).parent.mkdir(parents=True, exist_ok=True)
                _save_npy(logits, staging / REFERENCE_FILE)
            reference = {"file": REFERENCE_FILE, "backend": BASELINE_BACKEND, "precision": "fp32", "shape": [len(logits.rows), logits.classes], "runtime": _version("torch")}
        release_staging_dir(staging)
        files = {
            p.relative_to(staging).as_posix(): sha256_file(p)
            for p in sorted(staging.rglob("*"))
            if p.is_file() and "__pycache__" not in p.parts
        }
        meta = {
            "format": BUNDLE_FORMAT,
            "id": stable_hash({"files": files, "backends": backends, "views": views, "defaults": [device, list(batch_sizes)]}),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "edgekit": _version("edgekit"),
            "model": bundled.model_name,
            "artifact_key": bundled.key,
            "variant": bundled.manifest.get("variant", "fp32"),
            "artifact": ARTIFACT_DIR,
            "backends": list(backends),
            "defaults": {"device": device, "batch_sizes": list(batch_sizes)},
            "preprocessing": artifact.manifest["preprocessing"],
            "input": artifact.manifest.get("input"),
            "images": {
                "description": images.description, "identity": images.identity, "labelled": images.labelled,
                "classes": images.label_space.to_dict() if images.label_space is not None else None,
                "count": len(images), "views": views,
            },
            "reference": reference,
            "runner": {"command": RUN_COMMAND, "requires": ["numpy", "pillow"] + sorted({p for b in backends for _, p in get_backend(b).runtime_packages})},
            "files": files,
        }
        atomic_write_text(staging / "README.txt", _readme(meta))
        meta["files"]["README.txt"] = sha256_file(staging / "README.txt")
        atomic_write_text(staging / BUNDLE_FILE, json.dumps(meta, indent=2) + "\n")
        _replace_folder(staging, out, previous)
    except OSError as e:
        shutil.rmtree(staging, ignore_errors=True)
        raise EdgekitError(f"cannot write the bundle {out}: {e.strerror or e}") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def _save_npy(logits: LogitsFile, path: Path) -> None:
    """The rows as a float32 .npy, written chunk by chunk (memory stays flat)."""
    from .evaluation import chunks

    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False, "shape": (len(logits.rows), logits.classes)})
        for chunk in chunks(np.arange(len(logits.rows))):
            f.write(logits.read(chunk).tobytes())


def _version(distribution: str) -> Optional[str]:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def bundle_name(artifact: Artifact, backends: Sequence[str]) -> str:
    from .artifacts import artifact_dir_name

    return f"{artifact_dir_name(artifact.model_name)}-{artifact.key}-{'+'.join(backends)}"
