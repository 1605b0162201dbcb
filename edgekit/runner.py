"""`edgekit run`: every cell of a recipe (model x variant x backends x batch sizes) into one
results document. Artifacts are content-addressed, so what was built before is reused."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Optional

from .backends import BackendOptions
from .backends.tensorrt import parse_workspace
from .bench import TimingOptions
from .core import Artifact, BenchResult, UsageError
from .export import ExportOptions
from .pipeline import HELD_OUT_EVALUATION, BenchRequest, ImageRequest, ModelRequest, build_artifact, default_calibration, run_bench
from .recipe import Recipe
from .telemetry import check_power_source
from .transforms.quantize import Budget, QuantizeOptions
from .variants import fp16_artifact, quantize_artifact

# (cell label, stage, done, total) -> None
Progress = Callable[[str, str, Optional[int], Optional[int]], None]


def quantize_options(int8: dict[str, Any]) -> QuantizeOptions:
    if all(int8.get(k) is None for k in ("max_drop", "min_agreement", "max_kl")):
        budget = Budget()
    else:
        budget = Budget(max_top1_drop=int8.get("max_drop"), min_agreement=int8.get("min_agreement"), max_kl=int8.get("max_kl"))
    max_fallback = int8.get("max_fallback", 8)
    return QuantizeOptions(
        method=int8.get("calib_method", "percentile"),
        percentile=float(int8.get("percentile", 99.999)),
        bias_correction=int8.get("bias_correction", True),
        fallback=max_fallback > 0,
        max_fallback_nodes=max_fallback,
        budget=budget,
    )


def _evaluation_images(recipe: Recipe) -> ImageRequest:
    """One image set for every cell of a model, so its variants are compared on the same
    images; by default the bundled photos' even views, which INT8 calibration never sees."""
    bench = recipe.bench
    if bench.get("data") is None:
        return HELD_OUT_EVALUATION
    return ImageRequest(recipe.resolve(bench["data"]), recipe.resolve(bench.get("labels")), bench.get("views", 1), bench.get("limit"))


def _pruned(recipe: Recipe, fp32: Artifact, out: Path, progress: Progress, label: str) -> tuple[Artifact, bool]:
    from .structural import PruneTarget, pruned_artifact
    from .transforms.distill import DistillOptions
    from .transforms.prune import PruneOptions

    p = recipe.prune
    target = PruneTarget(p["target"], p["ratio"]) if p.get("target") else None
    options = PruneOptions(ratio=p["ratio"] if target is None else 0.05, criterion=p.get("criterion", "l2"), scope=p.get("scope", "uniform"), round_to=p.get("round_to", 8))
    images = default_calibration(recipe.resolve(p.get("distill_data") or recipe.int8.get("calib")), None, recipe.int8.get("calib_limit", 200), recipe.int8.get("seed", 0)).resolve()
    steps = p.get("distill_steps", 200)
    distill = DistillOptions(steps=steps) if steps > 0 else None
    return pruned_artifact(fp32, options, images, distill, p.get("sparsity"), target, out, lambda stage, done, total: progress(label, stage, done, total))


def _dw_separable(recipe: Recipe, fp32: Artifact, out: Path, progress: Progress, label: str) -> tuple[Artifact, bool]:
    from .structural import dwsep_artifact
    from .transforms.distill import DistillOptions

    d, p = recipe.dw_separable, recipe.prune
    images = default_calibration(recipe.resolve(p.get("distill_data") or recipe.int8.get("calib")), None, recipe.int8.get("calib_limit", 200), recipe.int8.get("seed", 0)).resolve()
    steps = p.get("distill_steps", 200)
    distill = DistillOptions(steps=steps) if steps > 0 else None
    layers = tuple(d["layers"]) if d.get("layers") else None
    return dwsep_artifact(fp32, d.get("rank", 1), images, layers, d.get("budget"), distill, out, lambda stage, done, total: progress(label, stage, done, total))


def _variant_artifact(recipe: Recipe, fp32: Artifact, variant: str, out: Path, progress: Progress, label: str) -> tuple[Artifact, bool]:
    """'fp32', 'fp16', 'int8', 'pruned', 'pruned+int8'...: each step applied to the last."""
    artifact, reused = fp32, True
    for step in variant.split("+"):
        if step == "pruned":
            artifact, reused = _pruned(recipe, artifact, out, progress, label)
        elif step == "dw-separable":
            artifact, reused = _dw_separable(recipe, artifact, out, progress, label)
        elif step == "fp16":
            artifact, reused = fp16_artifact(artifact, out)
        elif step == "int8":
            calibration = default_calibration(
                recipe.resolve(recipe.int8.get("calib")), recipe.resolve(recipe.int8.get("calib_labels")),
                recipe.int8.get("calib_limit", 200), recipe.int8.get("seed", 0),
            ).resolve()
            artifact, reused = quantize_artifact(
                artifact, calibration, quantize_options(recipe.int8), out, lambda stage, done, total: progress(label, stage, done, total)
            )
    return artifact, reused


def _remote(bench: dict[str, Any]):
    """[bench] remote = "user@host[:port]": checked (reachable, has its Python) before any work."""
    if not bench.get("remote"):
        return None
    from .remote import RemoteRequest, check_connection, recipe_safe_ssh_option

    for option in bench.get("ssh_options", ()):  # load_recipe refuses these too; a Recipe built in code is checked here
        reason = recipe_safe_ssh_option(option)
        if reason:
            raise UsageError(f"[bench] ssh_options: {option!r} is refused: {reason}")
    remote = RemoteRequest.parse(bench["remote"], bench.get("ssh_options", ()), bench.get("remote_python"), bench.get("remote_dir"))
    check_connection(remote.host, remote.settings, remote.python)
    return remote


def run_recipe(recipe: Recipe, progress: Progress = lambda label, stage, done, total: None) -> tuple[list[BenchResult], list[dict], list[str]]:
    """Build and benchmark every cell; returns (results, parity rows, notes)."""
    bench = recipe.bench
    options = BackendOptions(
        threads=bench.get("threads"), device=bench.get("device", "cpu"),
        precision=bench.get("precision"), compress_fp16=bench.get("ov_fp16_weights", False),
        workspace_bytes=parse_workspace(bench["trt_workspace"]) if bench.get("trt_workspace") else None,
        cuda_graph=bench.get("cuda_graph", False),
    )
    timing = TimingOptions(
        batch_sizes=recipe.batch, warmup=bench.get("warmup", 10), iterations=bench.get("iterations", 100),
        max_seconds=float(bench.get("max_seconds", 15.0)), repeats=bench.get("repeats", 1),
    )
    images = _evaluation_images(recipe)
    check_power_source(bench.get("power", "auto"))  # before any export work
    remote = _remote(bench)
    results: list[BenchResult] = []
    parity: list[dict] = []
    notes: list[str] = []
    for model in recipe.models:
        settings = recipe.model_settings(model)
        out = recipe.resolve(settings.get("out", "exported"))
        request = ModelRequest(model, recipe.resolve(settings.get("weights")), settings.get("random_init", False), settings.get("input_size"))
        export_options = ExportOptions(opset=settings.get("opset", 17), dynamic_batch=not settings.get("static", False), slim=not settings.get("no_slim", False))
        fp32, _ = build_artifact(request, export_options, out, lambda _b, stage, done, total, m=model: progress(m, stage, done, total))
        for variant in recipe.variants:
            label = f"{model} {variant}"
            artifact, _ = _variant_artifact(recipe, fp32, variant, out, progress, label)
            quantization = artifact.manifest.get("quantization")
            if quantization and not quantization["budget_met"]:
                notes.append(f"{label}: INT8 budget not met on the calibration images")
            # PyTorch runs the FP32 original: timing it once, with the fp32 cell, is enough
            backends = tuple(b for b in recipe.backends if b != "pytorch" or variant == "fp32")
            if remote is not None:  # every timed cell on the device; PyTorch only as the bundled reference
                from .remote import bench_remote

                document = bench_remote(
                    artifact, backends, images.resolve(), remote, options, timing, bench.get("throughput"), bench.get("power", "auto"),
                    progress=lambda stage, done, total, label=label: progress(f"{label} {remote.host}", stage, done, total),
                )
                results += [BenchResult.from_dict(r) for r in document["results"]]
                parity += [{"model": model, "variant": variant, **p} for p in document["parity"]]
                continue
            run = run_bench(
                artifact,
                BenchRequest(backends=backends, options=options, timing=timing, images=images, throughput_seconds=bench.get("throughput"), power=bench.get("power", "auto")),
                lambda backend, stage, done, total, label=label: progress(f"{label} {backend}", stage, done, total),
            )
            results += run.results
            parity += [{"model": model, "variant": variant, **dataclasses.asdict(p)} for p in run.parity]
    return results, parity, notes
