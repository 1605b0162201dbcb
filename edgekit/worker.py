"""Runs one backend in a process of its own: ``python -m edgekit.worker JOB.json``.

A separate process per backend keeps peak-memory figures honest (only that runtime is
loaded) and keeps one runtime's threads from disturbing another's timings. The worker
streams the run's views file through the model in bounded batches, writing each row of
logits with the index of its view (edgekit.evaluation joins on it), and then times a
small fixed set of the first readable views. Progress goes to stdout as JSON lines; the
result, the logits and the views it could not read go to the files the job names.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .backends import BackendOptions, get_backend
from .timing import TimingOptions, machine_info, make_batch, peak_rss_mb, time_session
from .core import AccuracyStats, Artifact, BenchResult, DataError, EdgekitError, UsageError
from .data import DECODE_THREADS, ImageSet, read_views_file, stream_batches
from .evaluation import LogitsFile, LogitsWriter
from .telemetry import open_power_monitor

EVAL_BATCH = 8  # memory grows with the batch (activations); CPU throughput barely does past 8
TIMING_VIEWS = 16  # latency is timed on the first readable views, whatever the set's size
PROGRESS_INTERVAL_S = 0.2


def emit(**message: object) -> None:
    print(json.dumps(message), flush=True)


def make_job(
    backend: str,
    artifact: Artifact,
    options: BackendOptions,
    views_file: Path,
    folder: Path,
    timing: Optional[TimingOptions] = None,
    power: str = "off",
    decode_threads: int = DECODE_THREADS,
) -> dict:
    """What one worker runs; without ``timing`` only the logits are computed."""
    return {
        "backend": backend,
        "artifact": str(artifact.path.resolve()),
        "options": {**asdict(options), "own": dict(options.own)},
        "views": str(Path(views_file).resolve()),
        "decode_threads": decode_threads,
        "timing": asdict(timing) if timing else None,
        "power": power if timing else "off",
        "logits_out": str(folder / f"{backend}.logits.f32"),
        "rows_out": str(folder / f"{backend}.rows.npy"),
        "result_out": str(folder / f"{backend}.json"),
    }


def write_views(image_set: ImageSet, folder: Path) -> Path:
    return image_set.write_views_file(Path(folder) / "views.jsonl")


@dataclass(frozen=True)
class WorkerOutput:
    result: dict  # timing, memory, environment: what bench_result turns into a BenchResult
    logits: LogitsFile  # one row per view read, with its view index
    skipped: tuple[tuple[int, str, str], ...]  # (view index, file, reason) of views it could not read


def bench_result(raw: dict, artifact: Artifact, backend: str, accuracy: Optional[AccuracyStats], **environment: object) -> BenchResult:
    """A worker's result as a BenchResult, with the accuracy judged by the parent."""
    fields = {k: v for k, v in raw.items() if k not in ("logits", "skipped", "views_read")}
    return BenchResult.from_dict({
        **fields,
        "model": artifact.model_name,
        "backend": backend,
        "variant": artifact.manifest.get("variant", "fp32"),
        "artifact_key": artifact.key,
        "accuracy": asdict(accuracy) if accuracy else None,
        "environment": {**raw["environment"], **environment},
    })


class _Throttle:
    """Progress at most every PROGRESS_INTERVAL_S, and always the last step."""

    def __init__(self) -> None:
        self.last = 0.0

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = time.monotonic()
        if done >= total or now - self.last >= PROGRESS_INTERVAL_S:
            self.last = now
            emit(stage=stage, done=done, total=total)


def _evaluate(session, job: dict, prep, batch_size: int) -> tuple[dict, list, np.ndarray]:
    """Every view of the views file through the model; returns (logits info, skipped
    views, the first TIMING_VIEWS readable views for timing)."""
    header, views = read_views_file(Path(job["views"]))
    total = int(header["count"])
    writer = LogitsWriter(Path(job["logits_out"]), Path(job["rows_out"]))
    timing: list[np.ndarray] = []
    skipped: list = []
    done = 0
    report = _Throttle()
    report("accuracy", 0, total)
    started = time.perf_counter()
    for batch in stream_batches(views, prep, batch_size, threads=int(job.get("decode_threads") or DECODE_THREADS)):
        skipped += batch.skipped
        if batch.array is not None:
            writer.append(batch.indices, np.asarray(session.run(batch.array)))
            timing += [row.copy() for row in batch.array[: max(0, TIMING_VIEWS - len(timing))]]
        done += len(batch.indices) + len(batch.skipped)
        report("accuracy", done, total)
    info = writer.close()
    info["seconds"] = time.perf_counter() - started
    if not info["count"]:
        from .data import skipped_summary

        raise DataError(f"none of the {total} images could be read ({skipped_summary(skipped)})")
    return info, skipped, np.stack(timing)


def run_job(job: dict) -> dict:
    backend = get_backend(job["backend"])
    backend.check_available()
    options = BackendOptions(**{**job["options"], "batch_sizes": tuple(job["options"].get("batch_sizes", ()))})
    device = backend.device_for(options)
    problem = backend.device_problem(device)
    if problem:  # on a device too: before anything is compiled or timed
        raise UsageError(f"--device {options.device}: {problem}")
    artifact = Artifact.load(Path(job["artifact"]))
    emit(stage="compiling")
    compiled = backend.compile(artifact, options)
    emit(stage="loading")
    session = backend.load(compiled, options)
    eval_batch = EVAL_BATCH if _accepts_batches(compiled) else 1
    logits, skipped, images = _evaluate(session, job, artifact.preprocessing, eval_batch)

    on_gpu = backend.uses_nvidia_gpu(options)
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
                    compute_ms=lambda: session.last_compute_ms,
                    power=monitor,
                )
            latency.append(asdict(stats))
            summary = monitor.summary(inferences=stats.iterations * batch_size)
            if summary is not None:
                power.append(asdict(replace(summary, batch_size=batch_size)))
    throughput = []
    if job.get("timing") and session.throughput_seconds:  # a throughput mode asked for and offered (Session)
        for batch_size in job["timing"]["batch_sizes"]:
            label = f"throughput batch {batch_size}"
            throughput.append(
                session.throughput(
                    make_batch(images, batch_size),
                    session.throughput_seconds,
                    on_step=lambda done, total, label=label: emit(stage=label, done=done, total=total),
                )
            )
    return {
        "precision": session.precision,
        "providers": list(session.providers),
        "layers": session.layer_summary,
        "threads": session.threads,
        "latency": latency,
        "throughput": throughput,
        "power": power,
        "peak_rss_mb": peak_rss_mb(),
        "gpu_memory_mb": _gpu_memory_mb() if on_gpu else None,
        "size_mb": backend.size_mb(compiled),
        # the device the session runs on (it refuses any other than asked), in the backend's spelling
        "environment": {**machine_info(), "runtime": backend.runtime_version(), "device": session.device},
        "evaluation_ips": (logits["count"] + len(skipped)) / logits["seconds"] if logits["seconds"] > 0 else None,
        "logits": logits,
        "skipped": [list(s) for s in skipped],
    }


def _gpu_memory_mb():
    """This process's GPU memory (engine, buffers, CUDA context), as NVML sees it."""
    from .telemetry import gpu_memory_mb

    return gpu_memory_mb(pid=os.getpid())


def _accepts_batches(artifact: Artifact) -> bool:
    shape = artifact.manifest.get("input", {}).get("shape", ["batch"])
    return not isinstance(shape[0], int) or shape[0] != 1


def spawn(
    job: dict,
    folder: Path,
    on_progress: Callable[[str, Optional[int], Optional[int]], None] = lambda stage, done, total: None,
) -> WorkerOutput:
    """Run ``job`` in a fresh ``python -m edgekit.worker`` process.

    The parent side of the protocol above, shared by ``edgekit bench`` and the on-device
    runner: progress lines go to ``on_progress``, a failure becomes one EdgekitError line,
    and an interrupted parent stops its worker before it goes.
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
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                try:
                    message = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a runtime printing to stdout
                if not isinstance(message, dict):
                    continue
                if "error" in message:
                    error = message["error"]
                elif "stage" in message:
                    on_progress(message["stage"], message.get("done"), message.get("total"))
            proc.wait()
        except BaseException:
            _stop(proc)
            raise
    if proc.returncode != 0:
        if error is None:
            tail = stderr_path.read_text(errors="replace").strip().splitlines()
            error = f"{backend} worker exited with code {proc.returncode}" + (f": {tail[-1]}" if tail else "")
        raise EdgekitError(error)
    result = json.loads(Path(job["result_out"]).read_text())
    return WorkerOutput(result, LogitsFile.from_worker(result["logits"]), tuple(tuple(s) for s in result.get("skipped", ())))


def _stop(proc: subprocess.Popen, grace_s: float = 5.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGTERM, signal.getsignal(signal.SIGINT))  # stop like Ctrl-C: files closed, no traceback
    job = json.loads(Path(argv[1]).read_text())
    try:
        result = run_job(job)
    except EdgekitError as e:
        emit(error=str(e), kind=type(e).__name__)
        return 1
    except KeyboardInterrupt:
        emit(error=f"{job['backend']} worker interrupted")
        return 130
    except Exception as e:  # report, then let the parent print one line
        emit(error=f"{job['backend']} failed: {type(e).__name__}: {e}".splitlines()[0], trace=traceback.format_exc())
        return 1
    Path(job["result_out"]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
