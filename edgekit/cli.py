"""Thin click commands: options -> dataclasses -> pipeline -> report.

Heavy imports (torch, onnx, runtimes) happen inside the commands, so ``edgekit --help``
is instant and works without them.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import warnings
from pathlib import Path
from typing import Optional

import click

from .core import EdgekitError, UsageError

DEFAULT_MODEL = "efficientnet_lite0"


class Finite(click.FloatRange):
    """A float range that also refuses nan and inf (click's FloatRange lets nan through)."""

    name = "finite number"

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> str:
    return f"warning: {message}\n"


class EdgekitGroup(click.Group):
    """Turns EdgekitError, and click's own usage errors, into one line on stderr and a
    non-zero exit, never a traceback."""

    def main(self, *args, **kwargs):
        kwargs["standalone_mode"] = False
        try:
            code = super().main(*args, **kwargs)
        except click.exceptions.NoArgsIsHelpError as e:
            click.echo(e.ctx.get_help())
            sys.exit(e.exit_code)
        except click.UsageError as e:
            where = e.ctx.command_path if e.ctx is not None else "edgekit"
            click.echo(f"error: {e.format_message()} (see {where} --help)", err=True)
            sys.exit(e.exit_code)
        except click.ClickException as e:
            click.echo(f"error: {e.format_message()}", err=True)
            sys.exit(e.exit_code)
        except click.Abort:
            click.echo("interrupted; nothing half-written was kept", err=True)
            sys.exit(130)
        sys.exit(code if isinstance(code, int) else 0)

    def invoke(self, ctx: click.Context):
        import signal

        warnings.formatwarning = _one_line_warning
        signal.signal(signal.SIGTERM, signal.default_int_handler)  # a kill cleans up like Ctrl-C
        try:
            return super().invoke(ctx)
        except EdgekitError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted; nothing half-written was kept", err=True)
            sys.exit(130)


@click.group(cls=EdgekitGroup)
@click.version_option(package_name="edgekit")
def main() -> None:
    """Take pretrained image classifiers to edge hardware, and measure what that cost."""


def _console(stderr: bool = True):
    """Messages go to stderr, tables to stdout; when piped, still wide enough for every column."""
    from rich.console import Console

    # markup off: model keys, weight names and paths in brackets are text, not style tags
    console = Console(stderr=stderr, markup=False)
    return console if console.is_terminal else Console(stderr=stderr, width=200, markup=False)


def _progress_bar(console):
    """A transient progress display with rate and time left (markup off: stage texts hold
    model keys in brackets)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    rate = TextColumn("{task.fields[rate]}", markup=False)
    return Progress(
        TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(), rate, TimeRemainingColumn(),
        console=console, transient=True,
    )


def _print_results(results, parity, title: str, count: int) -> None:
    """The result tables on stdout: latency and accuracy, then what applies of throughput
    mode, device time and cross-backend parity."""
    from .report import device_time_table, has_device_time, parity_table, rich_table, throughput_table

    out = _console(stderr=False)
    out.print(rich_table(results, title))
    if any(r.throughput for r in results):
        out.print(throughput_table(results))
    if has_device_time(results):
        out.print(device_time_table(results))
    if len(parity) > 1:
        out.print(parity_table(parity, f"cross-backend parity on the same {count} images"))


def _progress_reporter(progress, tasks: dict):
    """(backend, stage, done, total) -> one line per backend; a new stage restarts its
    rate (images/s while evaluating, runs/s while timing) and time left."""
    stages: dict[str, str] = {}

    def report(backend: str, stage: str, done: Optional[int], total: Optional[int]) -> None:
        description = f"{backend}: {stage}"
        if backend not in tasks:
            tasks[backend] = progress.add_task(description, total=total, rate="")
        elif stages.get(backend) != stage:
            progress.reset(tasks[backend], total=total, completed=done or 0, description=description, rate="")
        stages[backend] = stage
        progress.update(tasks[backend], description=description, total=total, completed=done or 0)
        speed = next((t.speed for t in progress.tasks if t.id == tasks[backend]), None)
        unit = "images/s" if stage == "accuracy" else "/s"
        progress.update(tasks[backend], rate=f"{speed:.1f} {unit}" if speed else "")

    return report


# --------------------------------------------------------------------------- models


@main.command("models")
@click.argument("pattern", required=False)
@click.option("--offline-only", is_flag=True, help="Only models whose pretrained weights load without a network.")
@click.option("--no-measure", is_flag=True, help="Skip counting params/GMACs from the built model (faster).")
def models_command(pattern: Optional[str], offline_only: bool, no_measure: bool) -> None:
    """List registered models with params and GMACs counted from the built model.

    PATTERN filters by substring. timm models are not listed (there are ~1,200);
    any of them works as timm/<name>.
    """
    from rich.progress import Progress
    from rich.table import Table

    from . import models

    names = [n for n in models.list_model_names() if not pattern or pattern.lower() in n.lower()]
    table = Table(title="edgekit models (GMACs: multiply-adds x 1e9, torchvision's 'GFLOPS')", title_justify="left")
    for col in ("name", "family", "input", "params M", "GMACs", "ref params M", "ref GMACs", "ref top-1", "weights offline"):
        table.add_column(col, justify="left" if col in ("name", "family", "weights offline") else "right")
    with Progress(console=_console(), transient=True) as progress:
        task = progress.add_task("building models on the meta device", total=len(names))
        for name in names:
            spec = models.get_spec(name)
            progress.advance(task)
            if offline_only and not spec.offline_weights:
                continue
            measured = ("-", "-")
            if not no_measure:
                try:
                    params, gmacs = models.complexity_of(name)
                    measured = (f"{params:.2f}", f"{gmacs:.3f}")
                except Exception as e:  # a model that cannot run on meta still keeps its row
                    measured = (f"n/a ({type(e).__name__})", "-")
            ref = spec.reference
            table.add_row(
                name,
                spec.family,
                str(spec.preprocessing.input_size),
                *measured,
                "-" if ref.params_m is None else f"{ref.params_m:.2f}",
                "-" if ref.gflops is None else f"{ref.gflops:.3f}",
                "-" if ref.top1 is None else f"{ref.top1:.2f}",
                "yes" if spec.offline_weights else "no (--random-init)",
            )
    _console(stderr=False).print(table)


# --------------------------------------------------------------------------- shared options


def _model_options(f):
    f = click.option("--weights", "weights_file", type=click.Path(path_type=Path), help="Local checkpoint (state_dict), loaded with weights_only=True.")(f)
    f = click.option("--random-init", is_flag=True, help="Seeded random weights, for architecture-only work.")(f)
    f = click.option("--input-size", type=click.IntRange(16, 2048), help="Export at this resolution instead of the model's own.")(f)
    f = click.option("--opset", default=17, show_default=True, type=click.IntRange(11, 23))(f)
    f = click.option("--static", is_flag=True, help="Fixed batch of 1 instead of a dynamic batch axis.")(f)
    f = click.option("--no-slim", is_flag=True, help="Keep the exporter's graph as is (no onnxslim folding).")(f)
    f = click.option("--out", "out_dir", default="exported", show_default=True, type=click.Path(path_type=Path), help="Artifact root.")(f)
    return f


def _variant_options(f):
    """INT8 / FP16 options shared by export and bench."""
    options = [
        click.option("--int8", is_flag=True, help="INT8 QDQ artifact (TensorRT/OpenVINO/ONNX Runtime), calibrated on real images."),
        click.option("--fp16", is_flag=True, help="FP16 artifact (inputs and outputs stay FP32)."),
        click.option("--calib", "calib_dir", type=click.Path(path_type=Path), help="Calibration images (default: the bundled photos' odd views)."),
        click.option("--calib-labels", type=click.Path(path_type=Path), help="Labels for a flat calibration folder (enables --max-drop)."),
        click.option("--calib-limit", default=200, show_default=True, type=click.IntRange(8), help="At most this many calibration files (seeded sample)."),
        click.option("--calib-method", default="percentile", show_default=True, type=click.Choice(["minmax", "percentile", "entropy"]), help="entropy is TensorRT's KL threshold search; it clips the saturated spike of ReLU6 outputs (EfficientNet-Lite0, MobileNetV2) far too hard, see benchmarks/results/int8_onnxruntime.md"),
        click.option("--percentile", default=99.999, show_default=True, type=Finite(50.0, 100.0, min_open=True), help="For --calib-method percentile (above 50, at most 100)."),
        click.option("--seed", default=0, show_default=True, type=int, help="Seed for sampling calibration files."),
        click.option("--max-drop", type=Finite(0.0, 100.0), help="Budget: top-1 drop in points vs FP32 (needs labelled calibration images)."),
        click.option("--min-agreement", type=Finite(0.0, 100.0), help="Budget: top-1 agreement with FP32, percent (default 98 when no budget is given)."),
        click.option("--max-kl", type=Finite(0.0), help="Budget: mean KL(FP32 || INT8) (default 0.004 when no budget is given)."),
        click.option("--max-fallback", default=8, show_default=True, type=click.IntRange(0), help="At most this many nodes go back to float."),
        click.option("--no-bias-correction", is_flag=True),
        click.option("--strict", is_flag=True, help="Exit 1 when the budget is not met (the best artifact is still kept)."),
        click.option("--prune", "prune_ratio", type=float, help="Structured pruning: remove this fraction of channels (0-1), then distil from the original."),
        click.option("--prune-criterion", default="l2", show_default=True, type=click.Choice(["l1", "l2", "taylor"])),
        click.option("--prune-scope", default="uniform", show_default=True, type=click.Choice(["uniform", "global"]), help="Same ratio per layer, or one ranking over all layers."),
        click.option("--prune-round-to", default=8, show_default=True, type=click.IntRange(min=1), help="Keep a multiple of this many channels in every pruned layer (kernels work in blocks of 8/16; 1 = no rounding)."),
        click.option("--prune-target", type=click.Choice(["flops", "params", "latency"]), help="Prune in small steps until this measured quantity falls by the --prune fraction."),
        click.option("--sparsity", help="Also zero weights: a fraction (0.5, unstructured magnitude) or 2:4 (semi-structured)."),
        click.option("--dw-separable", is_flag=True, help="Turn KxK convolutions into depthwise KxK + pointwise 1x1 (SVD-initialised), then distil."),
        click.option("--dw-rank", default=1, show_default=True, type=click.IntRange(1), help="Depthwise filters per input channel (K*K reproduces the conv exactly)."),
        click.option("--dw-budget", type=Finite(0), help="Convert layers (best MACs saved per error first) while the mean KL vs the original stays below this."),
        click.option("--dw-layers", help="Comma-separated layer names to convert (instead of the budget)."),
        click.option("--distill-steps", default=200, show_default=True, type=click.IntRange(0), help="Distillation steps after pruning (0: no recovery)."),
        click.option("--distill-data", "distill_dir", type=click.Path(path_type=Path), help="Unlabelled images for distillation (default: the calibration views)."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _remote_options(f):
    options = [
        click.option("--remote", help="Run on another machine over ssh: user@host[:port]. A bundle (see `edgekit bundle`) is copied there and run by its Python; PyTorch runs here, once, for the reference logits."),
        click.option("--remote-python", default="python3", show_default=True, help="The Python on the remote machine (needs numpy, Pillow and the backend's runtime)."),
        click.option("--remote-dir", default="edgekit-bundles", show_default=True, help="Where bundles go on the remote machine (relative: under its home)."),
        click.option("--ssh-option", "ssh_options", multiple=True, help="Passed to ssh as -o, e.g. IdentityFile=~/.ssh/jetson; repeat for several. EDGEKIT_SSH_OPTS adds raw ssh arguments."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _quantize_options(v: dict):
    from .transforms.quantize import Budget, QuantizeOptions

    if v["max_drop"] is None and v["min_agreement"] is None and v["max_kl"] is None:
        budget = Budget()  # agreement >= 98% and KL <= 0.004 vs FP32
    else:
        budget = Budget(max_top1_drop=v["max_drop"], min_agreement=v["min_agreement"], max_kl=v["max_kl"])
    return QuantizeOptions(
        method=v["calib_method"],
        percentile=v["percentile"],
        bias_correction=not v["no_bias_correction"],
        fallback=v["max_fallback"] > 0,
        max_fallback_nodes=v["max_fallback"],
        budget=budget,
    )


def _build(model: str, weights_file, random_init, input_size, opset, static, no_slim, out_dir, console, variant: Optional[dict] = None):
    from .export import ExportOptions
    from .pipeline import ModelRequest, build_artifact, default_calibration
    from .variants import fp16_artifact, quantize_artifact

    variant = variant or {}
    if weights_file is not None and random_init:
        raise click.UsageError("--weights and --random-init exclude each other")
    if variant.get("int8") and variant.get("fp16"):
        raise click.UsageError("--int8 and --fp16 exclude each other")
    if variant.get("prune_ratio") is not None and variant.get("dw_separable"):
        raise UsageError("--prune and --dw-separable exclude each other (one structural change per artifact)")
    ratio = variant.get("prune_ratio")
    if ratio is not None and not 0.0 < ratio < 1.0:
        raise UsageError(f"--prune must be a fraction in (0, 1), got {ratio}")
    options = ExportOptions(opset=opset, dynamic_batch=not static, slim=not no_slim)
    calibration = None
    if variant.get("int8"):
        quantize_options = _quantize_options(variant)
        calibration = default_calibration(variant["calib_dir"], variant["calib_labels"], variant["calib_limit"], variant["seed"]).resolve()
    with _progress_bar(console) as progress:
        report = _progress_reporter(progress, {})
        artifact, reused = build_artifact(ModelRequest(model, weights_file, random_init, input_size), options, out_dir, report)
        if variant.get("prune_ratio") is not None:
            _describe_artifact(artifact, reused, console)
            artifact, reused = _pruned(artifact, variant, out_dir, lambda stage, done, total: report("prune", stage, done, total))
            _print_pruning(artifact, console)
        if variant.get("dw_separable"):
            _describe_artifact(artifact, reused, console)
            artifact, reused = _dw_separable(artifact, variant, out_dir, lambda stage, done, total: report("dw-separable", stage, done, total))
            _print_dw_separable(artifact, console)
        if calibration is not None:
            _describe_artifact(artifact, reused, console)
            artifact, reused = quantize_artifact(
                artifact, calibration, quantize_options, out_dir, lambda stage, done, total: report("int8", stage, done, total)
            )
        elif variant.get("fp16"):
            _describe_artifact(artifact, reused, console)
            artifact, reused = fp16_artifact(artifact, out_dir)
    return artifact, reused


def _pruned(artifact, variant: dict, out_dir: Path, progress):
    from .pipeline import default_calibration
    from .structural import PruneTarget, pruned_artifact
    from .transforms.distill import DistillOptions
    from .transforms.prune import PruneOptions

    ratio = variant["prune_ratio"]
    target = PruneTarget(variant["prune_target"], ratio) if variant.get("prune_target") else None
    options = PruneOptions(ratio=ratio if target is None else 0.05, criterion=variant["prune_criterion"], scope=variant["prune_scope"], round_to=variant["prune_round_to"])
    images = default_calibration(variant.get("distill_dir") or variant.get("calib_dir"), None, variant["calib_limit"], variant["seed"]).resolve()
    distill = DistillOptions(steps=variant["distill_steps"]) if variant["distill_steps"] > 0 else None
    return pruned_artifact(artifact, options, images, distill, variant.get("sparsity"), target, out_dir, progress)


def _dw_separable(artifact, variant: dict, out_dir: Path, progress):
    from .pipeline import default_calibration
    from .structural import dwsep_artifact
    from .transforms.distill import DistillOptions

    images = default_calibration(variant.get("distill_dir") or variant.get("calib_dir"), None, variant["calib_limit"], variant["seed"]).resolve()
    layers = tuple(n.strip() for n in variant["dw_layers"].split(",") if n.strip()) if variant.get("dw_layers") else None
    distill = DistillOptions(steps=variant["distill_steps"]) if variant["distill_steps"] > 0 else None
    return dwsep_artifact(artifact, variant["dw_rank"], images, layers, variant.get("dw_budget"), distill, out_dir, progress)


def _print_dw_separable(artifact, console) -> None:
    d = artifact.manifest.get("dw_separable")
    if not d:
        return
    from rich.table import Table

    table = Table(title=f"depthwise-separable conversion, rank {d['rank']} (ordered by MACs saved per unit of kernel error)", title_justify="left")
    for column in ("layer", "kernel", "in->out", "kernel error", "MMACs before", "MMACs after", "converted"):
        table.add_column(column, justify="left" if column in ("layer", "converted") else "right")
    for c in sorted(d["layers"], key=lambda c: -c["saved"] / max(c["kernel_error"], 1e-6)):
        table.add_row(
            c["name"], "x".join(map(str, c["kernel"])), f"{c['in_channels']}->{c['out_channels']}", f"{c['kernel_error']:.3f}",
            f"{c['macs_before'] / 1e6:.1f}", f"{c['macs_after'] / 1e6:.1f}", "yes" if c["converted"] else "",
        )
    console.print(table)
    line = f"GMACs {d['gmacs']['before']:.3f} -> {d['gmacs']['after']:.3f}, params {d['params_m']['before']:.2f}M -> {d['params_m']['after']:.2f}M; mean KL vs original before distillation {d['kl_before_distillation']:.4f}"
    if d.get("distillation"):
        line += f"; distilled {d['distillation']['steps']} steps"
    console.print(line)


def _print_pruning(artifact, console) -> None:
    p = artifact.manifest.get("pruning")
    if not p:
        return
    params, gmacs = p["params_m"], p["gmacs"]
    line = (
        f"pruned: params {params['before']:.2f}M -> {params['after']:.2f}M, GMACs {gmacs['before']:.3f} -> {gmacs['after']:.3f}"
    )
    if p.get("distillation"):
        d = p["distillation"]
        line += f"; distilled {d['steps']} steps (loss {d['first_loss']:.4f} -> {d['last_loss']:.4f})"
    if p.get("sparsity"):
        line += f"; sparsity {p['sparsity'].get('overall', p['sparsity'])}"
    console.print(line)


def _print_quantization(artifact, console, top: int = 8) -> None:
    q = artifact.manifest.get("quantization")
    if not q:
        return
    from rich.table import Table

    from .transforms.quantize import Budget

    initial, final = q["initial"], q["final"]
    console.print(
        f"INT8 ({q['options']['method']}, {q['calibration_images']} calibration images): {q['quantized_nodes']} nodes INT8, "
        f"in float: {q['float_nodes'] or 'none'}; on the calibration images vs FP32: all-INT8 agreement "
        f"{initial['agreement']:.1f}% KL {initial['mean_kl']:.4f} -> kept {final['agreement']:.1f}% KL {final['mean_kl']:.4f}; "
        f"bias correction {'applied' if q['bias_correction_applied'] else 'not applied'}; "
        f"budget ({Budget(**q['options']['budget']).describe()}) {'met' if q['budget_met'] else 'NOT met'}"
    )
    table = Table(title=f"most sensitive nodes (KL vs FP32 when the node alone reads float; all-INT8: {initial['mean_kl']:.4f})", title_justify="left")
    for col in ("node", "op", "output rel. error", "KL if float", "fell back"):
        table.add_column(col, justify="left" if col in ("node", "op", "fell back") else "right")
    fell_back = {f["node"]: f for f in q["fallback"]}
    for s in q["sensitivity"][:top]:
        step = fell_back.get(s["node"])
        table.add_row(
            s["node"], s["op_type"], f"{s['output_rel_error']:.3f}", f"{s['kl_if_float']:.4f}" if s["kl_if_float"] is not None else "-",
            f"yes (after: KL {step['after']['mean_kl']:.4f})" if step else "",
        )
    console.print(table)
    for note in q.get("notes", []):
        console.print(f"note: {note}")


def _open_target(target: str, weights_file, random_init, input_size, opset, static, no_slim, out_dir, console, variant=None):
    """A model name, an artifact folder or an ONNX file -> (artifact, reused)."""
    from .core import Artifact
    from .export import import_onnx_file

    path = Path(target)
    if path.is_dir():
        return Artifact.load(path).verified(), True
    if path.suffix.lower() == ".onnx" or path.is_file():
        return import_onnx_file(path, out_dir)
    return _build(target, weights_file, random_init, input_size, opset, static, no_slim, out_dir, console, variant)


def _describe_artifact(artifact, reused: bool, console) -> None:
    parity = artifact.manifest.get("parity")
    if parity is None:
        console.print(f"{'reused' if reused else 'imported'} {artifact.model_name} -> {artifact.path}")
        return
    console.print(
        f"{'reused' if reused else 'exported'} {artifact.model_name} -> {artifact.path}  "
        f"[{artifact.manifest['model']['weights']}]  parity vs PyTorch on {parity.get('images')} real images: "
        f"max |diff| {parity.get('max_abs_diff', float('nan')):.2e}, top-1 agreement {parity.get('top1_agreement', float('nan')):.1f}%"
    )


# --------------------------------------------------------------------------- export


@main.command("export")
@click.argument("model")
@_model_options
@_variant_options
def export_command(model, weights_file, random_init, input_size, opset, static, no_slim, out_dir, **variant) -> None:
    """Export MODEL to an ONNX artifact under exported/ (reused when identical)."""
    console = _console()
    artifact, reused = _build(model, weights_file, random_init, input_size, opset, static, no_slim, out_dir, console, variant)
    _describe_artifact(artifact, reused, console)
    _print_quantization(artifact, console)
    click.echo(str(artifact.path))
    _exit_if_budget_missed(artifact, variant)


def _exit_if_budget_missed(artifact, variant: dict) -> None:
    q = artifact.manifest.get("quantization")
    if q and not q["budget_met"] and variant.get("strict"):
        raise EdgekitError(f"INT8 budget not met (kept the best artifact: {artifact.path})")


@main.command("inspect")
@click.argument("artifact_dir", type=click.Path(path_type=Path, exists=True, file_okay=False))
def inspect_command(artifact_dir: Path) -> None:
    """Show an artifact's lineage and, for INT8, its sensitivity report."""
    from .core import Artifact

    console = _console()
    artifact = Artifact.load(artifact_dir)
    problems = artifact.problems()
    listed = artifact.manifest.get("sha256") or {}
    console.print(f"integrity: {'intact, ' + str(len(listed)) + ' files sealed in the manifest' if not problems else 'NOT intact: ' + '; '.join(problems)}")
    for step in artifact.manifest.get("steps", []):
        console.print(f"step {step['step']}: " + ", ".join(f"{k}={v}" for k, v in step.items() if k not in ("step", "settings", "calibration", "fidelity_on_calibration")))
    _print_quantization(artifact, console, top=50)


# --------------------------------------------------------------------------- bench


@main.command("bench")
@click.argument("target", default=DEFAULT_MODEL)
@_model_options
@_variant_options
@click.option("--backend", "backends", multiple=True, default=("pytorch", "onnxruntime"), show_default=True, help="Repeat or comma-separate: pytorch, onnxruntime, openvino.")
@click.option("--batch", "batch_sizes", multiple=True, type=click.IntRange(1), default=(1,), show_default=True, help="Batch size(s) to time; repeat for several.")
@click.option("--iterations", default=100, show_default=True, type=click.IntRange(1))
@click.option("--warmup", default=10, show_default=True, type=click.IntRange(0))
@click.option("--max-seconds", default=15.0, show_default=True, type=Finite(0.1), help="Time budget per batch size (at least 10 iterations run).")
@click.option("--threads", type=click.IntRange(1), help="Intra-op threads for every backend (default: the runtime's choice).")
@click.option("--device", default="cpu", show_default=True, help="cpu; cuda or tensorrt (ONNX Runtime's CUDA / TensorRT execution providers, onnxruntime-gpu); OpenVINO device names such as gpu or npu.")
@click.option("--precision", type=click.Choice(["f32", "bf16", "f16"]), help="OpenVINO inference precision (default f32: the CPU plugin would otherwise pick bf16 where it can); f16 also builds FP16 TensorRT engines from an FP32 artifact.")
@click.option("--ov-fp16-weights", is_flag=True, help="OpenVINO: compress the IR's weights to FP16.")
@click.option("--trt-workspace", help="TensorRT builder workspace limit, e.g. 4GiB.")
@click.option("--cuda-graph", is_flag=True, help="TensorRT: replay inference from a captured CUDA graph.")
@click.option("--throughput", "throughput_seconds", type=Finite(0.5), help="Also measure throughput mode (asynchronous requests, OpenVINO) for this many seconds per batch size.")
@click.option("--power", "power_source", default="auto", show_default=True, type=click.Choice(["auto", "tegrastats", "nvml", "rapl", "off"]), help="Power and energy per image while timing: tegrastats (Jetson), nvml (NVIDIA GPUs; pip install nvidia-ml-py), rapl (x86 CPU package); auto uses what this machine has.")
@click.option("--data", "data_dir", type=click.Path(path_type=Path), help="Image folder: ImageNet-style class folders (synset names) or a flat folder.")
@click.option("--labels", "labels_file", type=click.Path(path_type=Path), help="Labels for a flat folder: '<file name> <class index or synset>' per line.")
@click.option("--views", default=16, show_default=True, type=click.IntRange(1), help="Deterministic crops/flips per image (1 = standard centre crop).")
@click.option("--limit", type=click.IntRange(1), help="Use at most this many image files.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Where to write results (default: next to the artifact).")
@_remote_options
def bench_command(target, weights_file, random_init, input_size, opset, static, no_slim, out_dir, backends, batch_sizes, iterations, warmup, max_seconds, threads, device, precision, ov_fp16_weights, trt_workspace, cuda_graph, throughput_seconds, power_source, data_dir, labels_file, views, limit, json_path, **variant) -> None:
    """Benchmark TARGET (a model name or an artifact folder) against the PyTorch original.

    Reports latency p50/p90/p99, throughput, peak memory, size, top-1/top-5 on the images,
    top-1 drop, agreement and mean KL vs PyTorch on the same images.
    """
    from .backends import BACKENDS, BackendOptions
    from .backends.tensorrt import parse_workspace
    from .bench import TimingOptions
    from .pipeline import HELD_OUT_EVALUATION, BenchRequest, ImageRequest, run_bench
    from .report import describe_images, results_document, write_results

    console = _console()
    backend_names = tuple(dict.fromkeys(b.strip() for spec in backends for b in spec.split(",") if b.strip()))
    for name in backend_names:
        BACKENDS.get(name)
    if ov_fp16_weights and "openvino" not in backend_names:
        raise UsageError("--ov-fp16-weights applies to the openvino backend; add --backend openvino")
    if precision and not ({"openvino", "tensorrt"} & set(backend_names)) and device != "tensorrt":
        raise UsageError("--precision applies to the openvino and tensorrt backends (or onnxruntime with --device tensorrt)")
    images = ImageRequest(data_dir, labels_file, views, limit)
    images.resolve()  # a bad image folder fails before any export work
    from .telemetry import check_power_source

    check_power_source(power_source)
    remote = _remote_request(variant)  # a malformed user@host fails before any export work

    artifact, reused = _open_target(target, weights_file, random_init, input_size, opset, static, no_slim, out_dir, console, variant)
    _describe_artifact(artifact, reused, console)
    _print_quantization(artifact, console, top=5)
    if data_dir is None and _calibrated_on_bundled_photos(artifact):
        images = HELD_OUT_EVALUATION
        console.print("note: calibrated on the bundled photos' odd views; evaluating on their even views (held out)")
    if artifact.manifest["model"].get("weights_source") is None and "pytorch" in backend_names:
        console.print(f"note: {target} has no PyTorch original; accuracy is judged on labels only")
        backend_names = tuple(b for b in backend_names if b != "pytorch")
        if not backend_names:
            raise EdgekitError("nothing to run: only the pytorch backend was asked for an imported ONNX file")
    request = BenchRequest(
        backends=backend_names,
        options=BackendOptions(
            threads=threads, device=device, precision=precision, compress_fp16=ov_fp16_weights,
            workspace_bytes=parse_workspace(trt_workspace) if trt_workspace else None, cuda_graph=cuda_graph,
        ),
        timing=TimingOptions(batch_sizes=tuple(batch_sizes), warmup=warmup, iterations=iterations, max_seconds=max_seconds),
        images=images,
        throughput_seconds=throughput_seconds,
        power=power_source,
    )
    if remote is not None:
        _bench_remote(artifact, request, remote, json_path, console)
        return
    with _progress_bar(console) as progress:
        run = run_bench(artifact, request, _progress_reporter(progress, {}))

    compared = any(r.accuracy is not None and r.accuracy.agreement is not None for r in run.results)
    baseline = "PyTorch on the same images" if compared else "labels only"
    title = f"{artifact.model_name} [{artifact.key}] on {describe_images(run.image_summary)}; accuracy vs {baseline}"
    _print_results(run.results, run.parity, title, run.evaluated)
    document = results_document(
        run.results,
        parity=[dataclasses.asdict(p) for p in run.parity],
        artifact={"path": str(artifact.path), "key": artifact.key, "model": artifact.model_name, "parity": artifact.manifest.get("parity")},
        images=run.image_summary,
        command=" ".join(["edgekit"] + sys.argv[1:]),
    )
    path = write_results(document, json_path or artifact.path / "results.json")
    console.print(f"results: {path}")
    _exit_if_failed(run.failed, path)
    _exit_if_budget_missed(artifact, variant)


def _exit_if_failed(failed, path) -> None:
    if failed:
        names = ", ".join(r.backend for r in failed)
        raise EdgekitError(f"{names} failed: {failed[0].error} (the other rows were saved to {path})")


# --------------------------------------------------------------------------- bundles and remote devices


def _remote_request(variant: dict):
    """Pops the --remote options out of ``variant``: a RemoteRequest, or None."""
    from .remote import RemoteRequest

    remote, python, remote_dir, ssh_options = (variant.pop(k) for k in ("remote", "remote_python", "remote_dir", "ssh_options"))
    if remote is None:
        if ssh_options:
            raise UsageError("--ssh-option applies to --remote runs")
        return None
    return RemoteRequest.parse(remote, ssh_options, python, remote_dir)


def _bundle_images(data_dir, labels_file, views, limit):
    """A folder: ``views`` consecutive views per file (default 1). The bundled photos: the
    held-out (even) views bench and recipes evaluate on, ``views`` of them (default all 11)."""
    from .data import EVEN_VIEWS
    from .pipeline import HELD_OUT_EVALUATION, ImageRequest

    if data_dir is not None:
        return ImageRequest(data_dir, labels_file, views or 1, limit)
    if labels_file is not None:
        raise UsageError("--labels goes with --data")
    if views is None and limit is None:
        return HELD_OUT_EVALUATION
    return ImageRequest(views_per_image=views or HELD_OUT_EVALUATION.views_per_image, limit=limit, view_offset=EVEN_VIEWS[0], view_stride=EVEN_VIEWS[1])


def _make_bundle(artifact, backends, image_set, out: Path, device: str, batch_sizes, console) -> Path:
    from .bundle import make_bundle

    with _progress_bar(console) as progress:
        report = _progress_reporter(progress, {})
        return make_bundle(
            artifact, backends, image_set, out, device=device, batch_sizes=tuple(batch_sizes),
            progress=lambda stage, done, total: report("bundle", stage, done, total),
        )


def _describe_bundle(folder: Path, console) -> dict:
    import json

    meta = json.loads((folder / "bundle.json").read_text())
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6
    reference = "with PyTorch FP32 logits" if meta["reference"] else "no PyTorch reference (imported ONNX): labels only"
    console.print(
        f"bundle {meta['id']}: {meta['model']} [{meta['artifact_key']}, {meta['variant']}] for {', '.join(meta['backends'])}; "
        f"{meta['images']['count']} images ({meta['images']['description']}) {reference}; {len(meta['files'])} files, {size:.1f} MB"
    )
    return meta


@main.command("bundle")
@click.argument("target")
@_model_options
@_variant_options
@click.option("--backend", "backends", multiple=True, required=True, help="onnxruntime, openvino or tensorrt; repeat or comma-separate for several.")
@click.option("-o", "--output", "bundle_dir", required=True, type=click.Path(path_type=Path), help="The bundle folder to write (an old bundle there is replaced).")
@click.option("--device", default="cpu", show_default=True, help="The device's default --device: cpu; cuda or tensorrt (onnxruntime-gpu); gpu, npu (OpenVINO).")
@click.option("--batch", "batch_sizes", multiple=True, type=click.IntRange(1), default=(1,), show_default=True, help="The device's default batch size(s).")
@click.option("--data", "data_dir", type=click.Path(path_type=Path), help="Evaluation images to carry instead of the bundled photos' held-out views.")
@click.option("--labels", "labels_file", type=click.Path(path_type=Path), help="Labels for a flat --data folder.")
@click.option("--views", type=click.IntRange(1), help="Views per image (default: 1 for --data, the 11 held-out views of the bundled photos).")
@click.option("--limit", type=click.IntRange(1), help="Carry at most this many image files.")
def bundle_command(target, weights_file, random_init, input_size, opset, static, no_slim, out_dir, backends, bundle_dir, device, batch_sizes, data_dir, labels_file, views, limit, **variant) -> None:
    """Write a self-contained folder that runs TARGET (a model, artifact folder or ONNX file)
    on a device with numpy, Pillow and the backend's runtime only: the ONNX, manifest,
    evaluation images, PyTorch FP32 logits for them, and a torch-free runner. Copy it over
    and run `python3 -m edgekit.device_runner bench` inside it.
    """
    from .bundle import check_backends
    from .device_runner import RUN_COMMAND

    console = _console()
    names = check_backends([b.strip() for spec in backends for b in spec.split(",") if b.strip()])
    request = _bundle_images(data_dir, labels_file, views, limit)
    image_set = request.resolve()  # a bad image folder fails before any export work
    artifact, reused = _open_target(target, weights_file, random_init, input_size, opset, static, no_slim, out_dir, console, variant)
    _describe_artifact(artifact, reused, console)
    folder = _make_bundle(artifact, names, image_set, bundle_dir, device, batch_sizes, console)
    _describe_bundle(folder, console)
    click.echo(str(folder))
    console.print(f"on the device:  cd {folder.name} && {RUN_COMMAND}")


def _bench_remote(artifact, request, remote, json_path, console) -> None:
    """Bundle, copy, run over ssh, fetch: the device's rows, shown and saved like local ones."""
    from .core import BenchResult
    from .evaluation import BackendParity
    from .remote import bench_remote, check_connection
    from .report import describe_images, write_results
    from .results_io import validate_results_document

    host = remote.host
    if not [b for b in request.backends if b != "pytorch"]:
        raise UsageError("--remote runs deployment backends (onnxruntime, openvino, tensorrt); add one with --backend")
    with console.status(f"connecting to {host}"):
        version = check_connection(host, remote.settings, remote.python)
    console.print(f"{host}: reachable, Python {version}")
    if "pytorch" in request.backends:
        console.print(f"note: PyTorch runs here once, for the reference logits; everything timed runs on {host}")
    with _progress_bar(console) as progress:
        report = _progress_reporter(progress, {})
        document = bench_remote(
            artifact, request.backends, request.images.resolve(), remote, request.options, request.timing,
            request.throughput_seconds, request.power, progress=lambda stage, done, total: report("remote", stage, done, total),
        )
    document["command"] = " ".join(["edgekit"] + sys.argv[1:])
    validate_results_document(document, f"{host}: results")
    results = [BenchResult.from_dict(r) for r in document["results"]]
    images = document["images"]
    title = f"{artifact.model_name} [{artifact.key}] on {host} ({results[0].environment.get('cpu', '?')}), {describe_images(images)}; accuracy vs PyTorch on the same images"
    _print_results(results, [BackendParity(**p) for p in document.get("parity", [])], title, images.get("images_evaluated", images["count"]))
    path = write_results(document, json_path or artifact.path / f"results-{host.host}.json")
    console.print(f"results: {path}")
    _exit_if_failed([r for r in results if r.error], path)


def _calibrated_on_bundled_photos(artifact) -> bool:
    calibration = next((s.get("calibration") for s in artifact.manifest.get("steps", []) if s.get("step") == "quantize"), None)
    return bool(calibration) and calibration["description"].startswith("bundled photos")


# --------------------------------------------------------------------------- run / report / check


@main.command("run")
@click.argument("recipe_path", metavar="RECIPE", type=click.Path(path_type=Path))
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Where to write results (default: the recipe's 'output', else <recipe>.results.json).")
def run_command(recipe_path: Path, json_path: Optional[Path]) -> None:
    """Build and benchmark every cell of RECIPE (a TOML file) into one results file."""
    from .recipe import load_recipe
    from .report import results_document, rich_table, write_results
    from .runner import run_recipe

    recipe = load_recipe(recipe_path)
    console = _console()
    console.print(
        f"recipe {recipe.name}: {len(recipe.models)} models x {len(recipe.variants)} variants x backends "
        f"{', '.join(recipe.backends)} x batch {', '.join(map(str, recipe.batch))}"
    )
    with _progress_bar(console) as progress:
        results, parity, notes = run_recipe(recipe, _progress_reporter(progress, {}))
    _console(stderr=False).print(rich_table(results, f"recipe {recipe.name}"))
    for note in notes:
        console.print(f"note: {note}")
    document = results_document(
        results, parity=parity, command=" ".join(["edgekit"] + sys.argv[1:]),
        extra={"recipe": str(recipe_path), "reference": recipe.reference},
    )
    path = write_results(document, json_path or recipe.output or recipe_path.with_suffix(".results.json"))
    console.print(f"results: {path}")
    _exit_if_failed([r for r in results if r.error], path)
    if notes and recipe.int8.get("strict"):
        raise EdgekitError("INT8 budget not met for " + "; ".join(n.split(":")[0] for n in notes) + " (strict)")


def _load_results(paths) -> list[dict]:
    from .results_io import load_results_documents

    return load_results_documents(paths)


@main.command("report")
@click.argument("results", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--out", "out_dir", default="report", show_default=True, type=click.Path(path_type=Path))
@click.option("--title", default="edgekit report", show_default=True)
def report_command(results, out_dir: Path, title: str) -> None:
    """Markdown, CSV and HTML tables and PNG plots from one or more results files."""
    from .reporting import write_report

    written = write_report(_load_results(results), out_dir, title)
    for path in written:
        click.echo(str(path))


@main.command("check")
@click.argument("new", type=click.Path(path_type=Path))
@click.option("--baseline", required=True, type=click.Path(path_type=Path), help="Results file to compare against.")
@click.option("--max-top1-drop", default=0.5, show_default=True, type=Finite(0), help="Points of top-1 (or agreement) a cell may lose.")
@click.option("--max-latency-regression", default="10%", show_default=True, help="How much slower a cell may get, e.g. 10%.")
@click.option("--reference", help="Model whose latency normalises the others (default: the recipe's 'reference').")
@click.option("--junit", "junit_path", type=click.Path(path_type=Path), help="Also write JUnit XML here.")
def check_command(new: Path, baseline: Path, max_top1_drop: float, max_latency_regression: str, reference, junit_path) -> None:
    """Exit 1 when NEW regresses against --baseline in accuracy or latency (for CI)."""
    from rich.table import Table
    from rich.text import Text

    from .gate import check_threshold, compare, parse_percent, status_style, summary_rows, write_junit

    max_top1_drop = check_threshold(max_top1_drop, "--max-top1-drop")
    try:
        allowed = parse_percent(max_latency_regression)
    except ValueError:
        raise UsageError(f"--max-latency-regression: expected a percentage such as 10%, got {max_latency_regression!r}") from None
    old_doc, new_doc = _load_results([baseline, new])
    report = compare(old_doc, new_doc, max_top1_drop, allowed, reference)
    console = _console()
    for warning in report.warnings:
        console.print(f"warning: {warning}")
    table = Table(title=f"{new} vs {baseline}", title_justify="left")
    for column in ("status", "cell", "check", "detail"):
        table.add_column(column)
    for status, label, check, message in summary_rows(report):
        table.add_row(Text(status, style=status_style(status)), label, check, message)
    _console(stderr=False).print(table)
    if junit_path:
        console.print(f"JUnit XML: {write_junit(report, junit_path)}")
    failed = [f for f in report.findings if f.status in ("fail", "missing")]
    if failed:
        raise EdgekitError(f"{len(failed)} regression(s): " + "; ".join(f"{f.label} {f.check}" for f in failed[:5]) + (" ..." if len(failed) > 5 else ""))
    console.print("check passed")


if __name__ == "__main__":
    main()
