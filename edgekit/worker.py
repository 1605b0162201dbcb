"""Runs one backend in a process of its own: ``python -m edgekit.worker JOB.json``.

A separate process per backend keeps peak-memory figures honest (only that runtime is
loaded) and keeps one runtime's threads from disturbing another's timings. Progress goes
to stdout as JSON lines; the result and the logits go to the files the job names.
"""

from __future__ import annotations

import json
import sys
import traceback
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .backends import BackendOptions, get_backend
from .bench import TimingOptions, machine_info, make_batch, peak_rss_mb, time_session
from .core import Artifact, EdgekitError
from .data import ImageSet, ImageView, LabelledImage, load_all


def emit(**message: object) -> None:
    print(json.dumps(message), flush=True)


def image_set_from_job(job: dict) -> ImageSet:
    views = tuple(
        ImageView(LabelledImage(Path(v["path"]), tuple(v["labels"]) if v["labels"] is not None else None), v["view"])
        for v in job["views"]
    )
    return ImageSet(views=views, description=job["description"])


def image_set_to_job(image_set: ImageSet) -> dict:
    return {
        "description": image_set.description,
        "views": [
            {"path": str(v.image.path), "labels": list(v.image.labels) if v.image.labels else None, "view": v.view}
            for v in image_set.views
        ],
    }


def run_job(job: dict) -> dict:
    backend = get_backend(job["backend"])
    backend.check_available()
    options = BackendOptions(**job["options"])
    artifact = Artifact.load(Path(job["artifact"]))
    emit(stage="compiling")
    compiled = backend.compile(artifact, options)
    emit(stage="loading")
    session = backend.load(compiled, options)
    image_set = image_set_from_job(job["images"])
    images, _ = load_all(image_set, artifact.preprocessing)

    emit(stage="accuracy", done=0, total=len(images))
    eval_batch = job.get("eval_batch_size", 16)
    if not _accepts_batches(compiled):
        eval_batch = 1
    logits = []
    for start in range(0, len(images), eval_batch):
        logits.append(session.run(images[start : start + eval_batch]))
        emit(stage="accuracy", done=min(start + eval_batch, len(images)), total=len(images))
    np.save(job["logits_out"], np.concatenate(logits))

    latency = []
    if job.get("timing"):
        timing = TimingOptions(**{**job["timing"], "batch_sizes": tuple(job["timing"]["batch_sizes"])})
        for batch_size in timing.batch_sizes:
            label = f"timing batch {batch_size}"
            stats = time_session(
                session.run,
                images,
                batch_size,
                timing,
                on_step=lambda done, total, label=label: emit(stage=label, done=done, total=total),
            )
            latency.append(asdict(stats))
    throughput = []
    if job.get("throughput") and hasattr(session, "throughput"):
        for batch_size in job["throughput"]["batch_sizes"]:
            label = f"throughput batch {batch_size}"
            throughput.append(
                session.throughput(
                    make_batch(images, batch_size),
                    job["throughput"]["seconds"],
                    on_step=lambda done, total, label=label: emit(stage=label, done=done, total=total),
                )
            )
    return {
        "precision": session.precision,
        "providers": list(session.providers),
        "threads": session.threads,
        "latency": latency,
        "throughput": throughput,
        "peak_rss_mb": peak_rss_mb(),
        "size_mb": backend.size_mb(compiled),
        "environment": {**machine_info(), "runtime": _runtime_version(job["backend"])},
    }


def _accepts_batches(artifact: Artifact) -> bool:
    shape = artifact.manifest.get("input", {}).get("shape", ["batch"])
    return not isinstance(shape[0], int) or shape[0] != 1


def _runtime_version(backend: str) -> str:
    from importlib import metadata

    dist = {"pytorch": "torch", "onnxruntime": "onnxruntime"}.get(backend, backend)
    for candidate in (dist, f"{dist}-gpu"):
        try:
            return f"{candidate} {metadata.version(candidate)}"
        except metadata.PackageNotFoundError:
            continue
    return "unknown"


def main(argv: list[str]) -> int:
    job = json.loads(Path(argv[1]).read_text())
    try:
        result = run_job(job)
    except EdgekitError as e:
        emit(error=str(e), kind=type(e).__name__)
        return 1
    except Exception as e:  # report, then let the parent print one line
        emit(error=f"{job['backend']} failed: {type(e).__name__}: {e}".splitlines()[0], trace=traceback.format_exc())
        return 1
    Path(job["result_out"]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
