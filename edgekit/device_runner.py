"""The runner inside a bundle: ``cd BUNDLE && python3 -m edgekit.device_runner bench``.

``edgekit bundle`` writes a folder with the artifact, evaluation images, the PyTorch FP32
logits for exactly those images, and a copy of the torch-free part of edgekit (this
module among it). Here the bundle is checked against the SHA-256 of every file in
bundle.json, each backend runs in its own worker process (the same worker, preprocessing
and timing as ``edgekit bench``), its logits are compared with the bundled PyTorch ones,
and the same results document ``edgekit bench`` writes goes to results.json, so
``edgekit report`` and ``edgekit check`` read both alike.

Needs numpy, Pillow and the backend's runtime; no torch, click or rich. Nothing here
imports numpy at module level, so a missing numpy is one error line too.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import platform
import shlex
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Optional

from .core import Artifact, BackendUnavailableError, DataError, EdgekitError, UsageError, sha256_file
from .progress import BenchProgress

BUNDLE_FILE = "bundle.json"
BUNDLE_FORMAT = "edgekit-bundle/1"
RUN_COMMAND = "python3 -m edgekit.device_runner bench"
PARTIAL_EXIT = 3  # results.json was written, but some backends failed (their rows say why)
BASE_PACKAGES = (("numpy", "numpy"), ("PIL", "pillow"))



def _python() -> str:
    return f"this Python ({sys.executable})"


def _importable(module: str) -> bool:
    """(backends.base has the same check, but importing it imports numpy, which may be the
    very package that is missing.)"""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require_packages(needed: tuple[tuple[str, str], ...], what: str) -> None:
    missing = [package for module, package in needed if not _importable(module)]
    if missing:
        raise BackendUnavailableError(f"{what} needs {', '.join(missing)}, which {_python()} cannot import; install with: pip install {' '.join(missing)}")


def check_runtime(backend: str) -> None:
    """Fail before any work when a backend's runtime is missing, naming the pip packages
    (a device has no edgekit install, so no extras)."""
    from .backends import get_backend

    missing = get_backend(backend).missing_on_device()
    if missing:
        raise BackendUnavailableError(f"backend {backend} needs {', '.join(missing)}, which {_python()} cannot import; install with: pip install {' '.join(missing)}")


# --------------------------------------------------------------------------- the bundle


@dataclass(frozen=True)
class Bundle:
    path: Path
    meta: dict[str, Any]

    @classmethod
    def load(cls, path: Path) -> Bundle:
        path = Path(path)
        meta_path = path / BUNDLE_FILE
        try:
            meta = json.loads(meta_path.read_text())
        except (FileNotFoundError, NotADirectoryError):
            raise DataError(f"{path} has no {BUNDLE_FILE}: not an edgekit bundle (make one with `edgekit bundle`, or pass --bundle DIR)") from None
        except json.JSONDecodeError as e:
            raise DataError(f"{meta_path}: not valid JSON ({e.msg}); copy the bundle again") from None
        if not isinstance(meta, dict) or meta.get("format") != BUNDLE_FORMAT:
            found = meta.get("format") if isinstance(meta, dict) else None
            raise DataError(f"{meta_path}: format {found!r}, this runner reads {BUNDLE_FORMAT!r}")
        from .backends.base import deployable_backends

        for backend in meta.get("backends", []):
            if backend not in deployable_backends():
                raise UsageError(f"{meta_path}: unknown backend {backend!r}; bundles run {', '.join(deployable_backends())}")
        return cls(path=path, meta=meta)

    @property
    def backends(self) -> tuple[str, ...]:
        return tuple(self.meta["backends"])

    def inside(self, relative: Any, what: str) -> Path:
        """A path named in bundle.json, confined to the bundle: relative, without '..', and
        not leading out through a symlink. Anything else is refused, never read."""
        text = relative if isinstance(relative, str) else ""
        parts = PurePosixPath(text).parts
        if not text or text.startswith(("/", "\\")) or "\\" in text or ".." in parts or (len(text) > 1 and text[1] == ":"):
            raise DataError(f"bundle {self.path}: {what} {relative!r} is not a path inside the bundle; refusing to read it")
        full = self.path / text
        root = self.path.resolve()
        resolved = full.resolve()
        if resolved != root and root not in resolved.parents:
            raise DataError(f"bundle {self.path}: {what} {text} leads outside the bundle (to {resolved}) through a symlink; refusing to read it")
        return full

    @property
    def artifact(self) -> Artifact:
        return Artifact.load(self.inside(self.meta.get("artifact"), "artifact"))

    def verify(self) -> int:
        """Every file bundle.json lists, with its SHA-256; returns how many were checked."""
        files = self.meta.get("files")
        if not isinstance(files, dict) or not files:
            raise DataError(f"bundle {self.path}: {BUNDLE_FILE} lists no files; make the bundle again")
        paths = {name: self.inside(name, "file") for name in files}
        missing = [name for name, path in paths.items() if not path.is_file()]
        if missing:
            raise DataError(f"bundle {self.path}: {_names(missing)} missing; copy the whole folder again")
        changed = [name for name, digest in files.items() if sha256_file(paths[name]) != digest]
        if changed:
            raise DataError(f"bundle {self.path}: {_names(changed)} {'does' if len(changed) == 1 else 'do'} not match the sha256 in {BUNDLE_FILE}; the bundle was changed or damaged in transit, copy it again")
        for name in ("artifact",):
            self.inside(self.meta.get(name), name)
        return len(files)

    def image_set(self):
        from .core import ClassSet
        from .data import ImageView, LabelledImage, make_image_set

        images = self.meta.get("images")
        _check_images(images, self.path)
        views = tuple(
            ImageView(LabelledImage(self.inside(v["file"], "image"), tuple(v["labels"]) if v["labels"] is not None else None), int(v["view"]))
            for v in images["views"]
        )
        space = ClassSet.from_dict(images["classes"]) if images.get("classes") else None
        return dataclasses.replace(make_image_set([], 1, images["description"], label_space=space), views=views)

    def reference(self):
        """The PyTorch FP32 logits for image_set(), row i for view i (None for an imported ONNX)."""
        from .evaluation import LogitsFile

        reference = self.meta.get("reference")
        return None if not reference else LogitsFile.from_npy(self.inside(reference.get("file"), "reference"))


def _check_images(images: Any, path: Path) -> None:
    """bundle.json's images section, field by field: bundle.json is not among the hashed
    files, so an edited one is untrusted input (one error line, never a traceback)."""
    from .data import VIEW_GRID

    def refuse(what: str, value: Any) -> None:
        shown = json.dumps(value, default=str)
        raise DataError(f"bundle {path}: {BUNDLE_FILE} {what}, got {shown[:60] + '...' if len(shown) > 60 else shown}; make the bundle again")

    if not isinstance(images, dict):
        refuse("images must be an object", images)
    if not isinstance(images.get("description"), str):
        refuse("images.description must be a string", images.get("description"))
    if images.get("classes") is not None and not (isinstance(images["classes"], dict) and isinstance(images["classes"].get("count"), int)
                                                  and not isinstance(images["classes"]["count"], bool) and images["classes"]["count"] >= 1):
        refuse("images.classes must be an object with a count", images["classes"])
    views = images.get("views")
    if not isinstance(views, list) or not views:
        refuse("images.views must be a non-empty list", views)
    for i, v in enumerate(views):
        where = f"images.views[{i}]"
        if not isinstance(v, dict) or not {"file", "labels", "view"} <= set(v):
            refuse(f"{where} must be an object with file, labels and view", v)
        if not isinstance(v["file"], str):
            refuse(f"{where}.file must be a path", v["file"])
        labels = v["labels"]
        if labels is not None and not (isinstance(labels, list) and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in labels)):
            refuse(f"{where}.labels must be null or a list of class indices", labels)
        view = v["view"]
        if not (isinstance(view, int) and not isinstance(view, bool) and 0 <= view < len(VIEW_GRID)):
            refuse(f"{where}.view must be a view number from 0 to {len(VIEW_GRID) - 1}", view)


def _names(names: list[str], shown: int = 3) -> str:
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def default_bundle_dir() -> Path:
    """The folder holding this copy of edgekit: the bundle, when run from one."""
    return Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- running


def run_bundle(bundle: Bundle, settings, progress: BenchProgress = lambda backend, stage, done, total: None, command: Optional[str] = None):
    """Verify, run every backend in its own worker, compare with the bundled logits.
    ``settings`` (edgekit.options.Settings) leave backends, batch sizes and device to the
    bundle's unless given. Returns (results document, bench run)."""
    from .data import ImageSettings
    from .results.document import results_document
    from .session import BenchSettings, bench_request, evaluation_set, run_session
    from .telemetry import check_power_source

    bundle.verify()
    bench = settings.bind(BenchSettings)
    backends = bench.backends if settings.given("backends") else bundle.backends
    for backend in backends:
        if backend not in bundle.backends:
            raise UsageError(f"this bundle was made for {', '.join(bundle.backends)}, not {backend}; make one with: edgekit bundle ... --backend {backend}")
    for backend in backends:
        check_runtime(backend)
    check_power_source(bench.power)
    defaults = bundle.meta.get("defaults", {})
    settings = settings.replace(
        batch=bench.batch_sizes if settings.given("batch") else tuple(defaults.get("batch_sizes", (1,))),
        device=bench.device if settings.given("device") else _bundle_device(defaults),
    )
    request = bench_request(settings, backends)
    from .backends.base import check_devices

    check_devices(request.options.device, backends, named_must_run=False)  # what this machine has, before any timing
    artifact = bundle.artifact
    shape = artifact.manifest["input"]["shape"]
    if isinstance(shape[0], int) and any(b != shape[0] for b in request.timing.batch_sizes):
        raise UsageError(f"this model has a static batch of {shape[0]}; bundle one exported without --static to time other batch sizes")
    chosen = settings.bind(ImageSettings)
    if chosen.data is not None:
        images = evaluation_set(artifact, chosen.evaluation())
        reference = None
    else:
        images, reference = bundle.image_set(), bundle.reference()
        if reference is not None and len(reference.rows) != len(images):
            raise DataError(f"bundle {bundle.path}: {len(reference.rows)} reference rows for {len(images)} images; make the bundle again")
    run = run_session(artifact, images, request, reference, progress, run_original=False, host=platform.node(), bundle=bundle.meta["id"])
    document = results_document(
        run.results,
        parity=[dataclasses.asdict(p) for p in run.parity],
        artifact={"path": str(artifact.path), "key": artifact.key, "model": artifact.model_name, "parity": artifact.manifest.get("parity")},
        images=run.image_summary,
        command=command,
        extra={"bundle": {
            "id": bundle.meta["id"],
            "created": bundle.meta.get("created"),
            "reference": None if reference is None else {k: v for k, v in bundle.meta["reference"].items() if k != "file"},
        }},
    )
    return document, run


def _bundle_device(defaults: dict) -> Optional[str]:
    """The --device a bundle was made with. 'cpu' is also what every bundle made before
    per-backend devices recorded when none was given (TensorRT ignored it then): each
    backend's own device, as now."""
    device = defaults.get("device")
    return None if device in (None, "", "cpu") else device


# --------------------------------------------------------------------------- command line


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, as edgekit's own errors
        self.exit(2, f"error: {message} (see --help)\n")


class _StageLines:
    """Progress on stderr: a rewritten line on a terminal, one line per stage otherwise
    (over ssh, into a log)."""

    def __init__(self, stream=sys.stderr):
        self.stream = stream
        self.tty = stream.isatty()
        self.last: Optional[str] = None

    def __call__(self, backend: str, stage: str, done: Optional[int], total: Optional[int]) -> None:
        label = f"{backend}: {stage}"
        if self.tty:
            self.stream.write("\r\033[K" + label + (f" {done}/{total}" if total else ""))
            self.stream.flush()
        elif label != self.last:
            print(label, file=self.stream, flush=True)
        self.last = label

    def close(self) -> None:
        if self.tty and self.last is not None:
            self.stream.write("\r\033[K")
            self.stream.flush()


def _parser() -> argparse.ArgumentParser:
    from .options import device_options

    parser = _Parser(prog="python3 -m edgekit.device_runner", description="Run an edgekit bundle on this machine.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{bench,verify}")
    bench = commands.add_parser("bench", help="time the bundled model, compare it with the bundled PyTorch logits, write results.json")
    verify = commands.add_parser("verify", help="check every file against bundle.json")
    for p in (bench, verify):
        p.add_argument("--bundle", type=Path, help="the bundle folder (default: the one this runner sits in)")
    for option in device_options():  # declared once in edgekit.options, as for `edgekit bench`
        option.add_argument(bench)
    bench.add_argument("--json", dest="json_path", type=Path, help="results file (default: results.json in the bundle)")
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {' '.join(str(message).split())}", file=sys.stderr)


def main(argv: Optional[list[str]] = None) -> int:
    import signal

    signal.signal(signal.SIGTERM, signal.getsignal(signal.SIGINT))  # a kill cleans up like Ctrl-C
    warnings.showwarning = _show_warning  # a skipped image and the like: one 'warning:' line, as edgekit's CLI prints it
    argv = sys.argv[1:] if argv is None else argv
    # a device's storage is its owner's: decoded images are cached there only when asked (EDGEKIT_IMAGE_CACHE=4GiB)
    os.environ.setdefault("EDGEKIT_IMAGE_CACHE", "off")
    progress = _StageLines()
    try:
        require_packages(BASE_PACKAGES, "the edgekit runner")  # before the parser: the backends' modules declare options and import numpy
        args = _parser().parse_args(argv)
        bundle = Bundle.load(args.bundle or default_bundle_dir())
        if args.command == "verify":
            print(f"bundle {bundle.path}: {bundle.verify()} files match {BUNDLE_FILE}")
            return 0
        from .options import Settings, device_options

        settings = Settings({o.key: getattr(args, o.key) for o in device_options()})
        command = "python3 -m edgekit.device_runner " + shlex.join(argv)
        try:
            document, run = run_bundle(bundle, settings, progress, command)
        finally:
            progress.close()
        from .results.document import describe_images, write_results
        from .results.tables import text_table

        reference = "PyTorch FP32 (bundled logits)" if document["bundle"]["reference"] else "labels only (no PyTorch reference for these images)"
        first = run.results[0]
        title = f"{first.model} [{first.artifact_key}] on {platform.node()}, {describe_images(run.image_summary)}; accuracy vs {reference}"
        print(text_table(run.results, title), end="")
        path = write_results(document, args.json_path or bundle.path / "results.json")
        print(f"results: {path}", file=sys.stderr)
        failed = run.failed
        if failed:
            measured = len(run.results) - len(failed)
            saved = f"the other {measured} row{'s are' if measured != 1 else ' is'} in {path}" if measured else f"no row was measured; {path} records why"
            print(f"error: {', '.join(r.backend for r in failed)} failed ({failed[0].error}); {saved}", file=sys.stderr)
            return PARTIAL_EXIT
        return 0
    except EdgekitError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted; nothing half-written was kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
