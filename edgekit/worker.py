"""Runs one backend in a process of its own: ``python -m edgekit.worker JOB.json``.

A separate process per backend keeps peak-memory figures honest (only that runtime is
loaded) and keeps one runtime's threads from disturbing another's timings. Progress goes
to stdout as JSON lines; the result and the logits go to the files the job names.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import traceback
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .backends import BackendOptions, get_backend
from .bench import TimingOptions, machine_info, make_batch, peak_rss_mb, time_session
from .core import AccuracyStats, Artifact, BenchResult, EdgekitError
from .data import ImageSet, ImageView, LabelledImage, load_all
from .telemetry import open_power_monitor


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


def make_job(
    backend: str,
    artifact: Artifact,
    options: BackendOptions,
    images: ImageSet,
    folder: Path,
    timing: Optional[TimingOptions] = None,
    throughput_seconds: Optional[float] = None,
    power: str = "off",
) -> dict:
    """What one worker runs; without ``timing`` only the logits are computed."""
    return {
        "backend": backend,
        "artifact": str(artifact.path.resolve()),
        "options": asdict(options),
        "images": image_set_to_job(images),
        "timing": asdict(timing) if timing else None,
        "throughput": {"batch_sizes": list(timing.batch_sizes), "seconds": throughput_seconds} if timing and throughput_seconds else None,
        "power": power if timing else "off",
        "logits_out": str(folder / f"{backend}.npy"),
        "result_out": str(folder / f"{backend}.json"),
    }


def bench_result(raw: dict, artifact: Artifact, backend: str, accuracy: Optional[AccuracyStats], **environment: object) -> BenchResult:
    """A worker's result as a BenchResult, with the accuracy judged by the parent."""
    return BenchResult.from_dict({
        **raw,
        "model": artifact.model_name,
        "backend": backend,
        "variant": artifact.manifest.get("variant", "fp32"),
        "artifact_key": artifact.key,
        "accuracy": asdict(accuracy) if accuracy else None,
        "environment": {**raw["environment"], **environment},
    })


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

    on_gpu = _runs_on_nvidia_gpu(job["backend"], options)
    latency = []
    power = []
    if job.get("timing"):
        timing = TimingOptions(**{**job["timing"], "batch_sizes": tuple(job["timing"]["batch_sizes"])})
        for batch_size in timing.batch_sizes:
            label = f"timing batch {batch_size}"
            with open_power_monitor(job.get("power", "auto"), gpu=on_gpu) as monitor:
                stats = time_session(
                    session.run,
                    images,
                    batch_size,
                    timing,
                    on_step=lambda done, total, label=label: emit(stage=label, done=done, total=total),
                    compute_ms=lambda: getattr(session, "last_compute_ms", None),
                    power=monitor,
                )
            latency.append(asdict(stats))
            summary = monitor.summary(inferences=stats.iterations * batch_size)
            if summary is not None:
                power.append(asdict(replace(summary, batch_size=batch_size)))
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
        "power": power,
        "peak_rss_mb": peak_rss_mb(),
        "gpu_memory_mb": _gpu_memory_mb() if on_gpu else None,
        "size_mb": backend.size_mb(compiled),
        "environment": {**machine_info(), "runtime": _runtime_version(job["backend"])},
    }


def _gpu_memory_mb():
    """This process's GPU memory (engine, buffers, CUDA context), as NVML sees it."""
    from .telemetry import gpu_memory_mb

    return gpu_memory_mb(pid=os.getpid())


def _runs_on_nvidia_gpu(backend: str, options: BackendOptions) -> bool:
    """Whether NVML's GPU figures describe this run ("auto" skips them for CPU runs)."""
    return backend == "tensorrt" or str(options.device).lower().startswith(("cuda", "tensorrt"))


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


def spawn(
    job: dict,
    folder: Path,
    on_progress: Callable[[str, Optional[int], Optional[int]], None] = lambda stage, done, total: None,
) -> tuple[dict, np.ndarray]:
    """Run ``job`` in a fresh ``python -m edgekit.worker`` process; returns (result, logits).

    The parent side of the protocol above, shared by ``edgekit bench`` and the on-device
    runner: progress lines go to ``on_progress``, a failure becomes one EdgekitError line.
    """
    backend = job["backend"]
    job_path = folder / f"{backend}.job.json"
    job_path.write_text(json.dumps(job))
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    stderr_path = folder / f"{backend}.stderr"
    error = None
    with open(stderr_path, "w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "edgekit.worker", str(job_path)],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=env,
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            try:
                message = json.loads(line)
            except json.JSONDecodeError:
                continue  # a runtime printing to stdout
            if "error" in message:
                error = message["error"]
            elif "stage" in message:
                on_progress(message["stage"], message.get("done"), message.get("total"))
        proc.wait()
    if proc.returncode != 0:
        if error is None:
            tail = stderr_path.read_text().strip().splitlines()
            error = f"{backend} worker exited with code {proc.returncode}" + (f": {tail[-1]}" if tail else "")
        raise EdgekitError(error)
    return json.loads(Path(job["result_out"]).read_text()), np.load(job["logits_out"])


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
