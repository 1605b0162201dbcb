"""The command line, a shell: click commands generated from the declared options
(edgekit.options), each of which calls the Python API (edgekit.api) and prints what it
returns with edgekit.console; one exit code per error class (docs/cli.md).

Heavy imports (torch, onnx, runtimes) happen inside the API's functions, so ``edgekit
--help`` is instant and works without them.
"""

from __future__ import annotations

import io
import sys
import warnings
from pathlib import Path
from typing import Optional

import click

from . import api
from . import console as ui
from .api import artifact_facts
from .core import EdgekitError, UsageError
from .options import Finite, click_options, grouped_command

DEFAULT_MODEL = "efficientnet_lite0"


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> str:
    return f"warning: {message}\n"


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line on stderr, whoever had taken warnings over (a test runner)."""
    click.echo(_one_line_warning(message, category, filename, lineno).rstrip("\n"), err=True)


INTERRUPTED = "interrupted; nothing half-written was kept"


class EdgekitGroup(click.Group):
    """One exit-code table for every command (edgekit.core.EXIT_CODES, docs/cli.md): an
    EdgekitError exits with its class's code, click's usage errors with 2, Ctrl-C with 130,
    each as one line on stderr and never a traceback; anything else is a bug: its
    traceback, then exit 70."""

    def main(self, *args, **kwargs):
        from .core import EXIT_INTERRUPTED, EXIT_OK, EXIT_REFUSED

        kwargs["standalone_mode"] = False
        try:
            code = super().main(*args, **kwargs)
        except click.exceptions.NoArgsIsHelpError as e:
            click.echo(e.ctx.get_help())  # no command given: refused (2), with the help that says what there is
            sys.exit(EXIT_REFUSED)
        except click.UsageError as e:
            where = e.ctx.command_path if e.ctx is not None else "edgekit"
            click.echo(f"error: {e.format_message()} (see {where} --help)", err=True)
            sys.exit(EXIT_REFUSED)
        except click.ClickException as e:  # e.g. click.FileError: an input it cannot open
            click.echo(f"error: {e.format_message()}", err=True)
            sys.exit(EXIT_REFUSED)
        except EdgekitError as e:  # raised while the arguments were read (an option's check)
            click.echo(f"error: {e}", err=True)
            sys.exit(e.exit_code)
        except (click.Abort, KeyboardInterrupt):
            click.echo(INTERRUPTED, err=True)
            sys.exit(EXIT_INTERRUPTED)
        sys.exit(code if isinstance(code, int) else EXIT_OK)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta["edgekit.argv"] = list(args)  # what this invocation was given, in a process or not
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context):
        import signal

        warnings.formatwarning = _one_line_warning
        warnings.showwarning = _show_warning
        signal.signal(signal.SIGTERM, signal.default_int_handler)  # a kill cleans up like Ctrl-C
        from .core import EXIT_BROKEN_PIPE, EXIT_INTERNAL, EXIT_INTERRUPTED

        try:
            return super().invoke(ctx)
        except EdgekitError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo(INTERRUPTED, err=True)
            sys.exit(EXIT_INTERRUPTED)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise  # click's own: main() gives them their codes
        except BrokenPipeError:  # `edgekit ... | head`: the reader has what it wanted
            _silence_stdout()
            sys.exit(EXIT_BROKEN_PIPE)
        except Exception as e:  # a bug: its traceback, and a code no result ever has
            import traceback

            click.echo("".join(traceback.format_exception(e)).rstrip("\n"), err=True)
            click.echo(f"error: internal error ({type(e).__name__}); this is a bug in edgekit, please report it with the traceback above", err=True)
            sys.exit(EXIT_INTERNAL)


def _silence_stdout() -> None:
    """After a broken pipe: stdout to /dev/null, so that the interpreter's last flush stays quiet."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        pass


def _command_line() -> str:
    """The command as the user typed it, for the results document."""
    import shlex

    argv = click.get_current_context().meta.get("edgekit.argv", sys.argv[1:])
    return shlex.join(["edgekit", *argv])


@click.group(cls=EdgekitGroup)
@click.version_option(package_name="edgekit")
def main() -> None:
    """Take pretrained image classifiers to edge hardware, and measure what that cost."""


# --------------------------------------------------------------------------- models


@main.command("models")
@click.argument("pattern", required=False)
@click.option("--offline-only", is_flag=True, help="Only models whose pretrained weights load without a network.")
@click.option("--measure", is_flag=True, help="Also count params and GMACs from each built model (on the meta device: about a minute for all of them).")
@click.option("--no-measure", is_flag=True, hidden=True, help="The default now; kept so that old scripts still run.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout instead of the table (keys: docs/cli.md).")
def models_command(pattern: Optional[str], offline_only: bool, measure: bool, no_measure: bool, as_json: bool) -> None:
    """List registered models with their published params, GMACs and top-1 (torchvision's
    weight metadata, the EfficientNet-Lite README); --measure counts params and GMACs
    from each built model beside them.

    PATTERN filters by substring. timm models are not listed (there are ~1,200);
    any of them works as timm/<name>.
    """
    import json

    if measure and no_measure:
        raise UsageError("--measure and --no-measure exclude each other")
    console = ui.stderr()
    with ui.measuring(console, measure) as report:
        rows = api.models(pattern, offline_only=offline_only, measure=measure, progress=report)
    if not rows:
        console.print(f"note: no model matching {pattern!r} has its weights on this machine" if pattern else "note: no model has its weights on this machine")
    if as_json:
        click.echo(json.dumps({"models": rows}, indent=2))
        return
    ui.stdout().print(ui.models_table(rows, measure))


# --------------------------------------------------------------------------- building artifacts


def _build(console, function, target, label: str = "build", **kwargs):
    """``function`` (api.export, api.profile) with progress on stderr and each artifact of the chain announced."""
    with ui.progress(console) as report:
        return function(target, progress=lambda stage, done, total: report(label, stage, done, total), announce=ui.announcer(console), **kwargs)


@main.command("export", cls=grouped_command())
@click.argument("model")
@click_options("export")
def export_command(model, **values) -> None:
    """Export MODEL (a model name or an ONNX file) to an ONNX artifact under exported/
    (reused when identical), with the variant its flags ask for (--int8, --fp16, --prune,
    --dw-separable, --finetune); a step's options without its flag are an error."""
    console = ui.stderr()
    artifact = _build(console, api.export, model, **values)
    ui.print_numeric(artifact, console)
    click.echo(str(artifact.path))
    ui.print_deploy(artifact, console)
    api.raise_if_budget_missed(artifact, bool(values.get("strict")))


@main.command("finetune", cls=grouped_command())
@click.argument("model")
@click_options("finetune")
def finetune_command(model, **values) -> None:
    """Transfer learning: give MODEL (pretrained, or --weights / --random-init) a new head
    for the classes of --data and train it there: a linear probe, then full fine-tuning
    (cosine schedule, label smoothing, augmentation), keeping the epoch with the best
    validation top-1. Writes an artifact (variant 'finetuned') whose finetuned.pt
    checkpoint loads with weights_only=True; `edgekit bench MODEL --finetune --int8
    --data DIR` and recipes ('finetuned+int8') continue from it. An interrupted run
    resumes where it stopped when run again."""
    artifact = _build(ui.stderr(), api.export, model, variant="finetuned", **values)
    ui.print_training(artifact, ui.stdout())
    click.echo(str(artifact.path))


@main.command("inspect")
@click.argument("artifact_dir", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout instead of the text (keys: docs/cli.md).")
def inspect_command(artifact_dir: Path, as_json: bool) -> None:
    """Show an artifact's integrity, lineage, INT8 sensitivity report and the file each
    runtime loads, on stdout. Exits 2 when the artifact is not intact (after saying what is wrong)."""
    import json

    from .core import Artifact

    artifact = Artifact.load(artifact_dir)
    facts = artifact_facts(artifact)
    if as_json:
        click.echo(json.dumps(facts, indent=2, default=str))
    else:
        ui.print_inspect(artifact, facts, ui.stdout())
    api.raise_if_not_intact(artifact, facts)


# --------------------------------------------------------------------------- bench, profile


@main.command("bench", cls=grouped_command())
@click.argument("target", default=DEFAULT_MODEL)
@click_options("bench")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Where to write results (default: results.json beside the artifact).")
def bench_command(target, json_path, **values) -> None:
    """Benchmark TARGET (a model name, an artifact folder or an ONNX file; default:
    efficientnet_lite0) against the PyTorch original: latency, memory, size, top-1/top-5
    with 95% intervals, top-1 drop, agreement and KL on the same images.
    """
    console = ui.stderr()
    with ui.progress(console) as report:
        run = api.bench(target, progress=report, announce=ui.announcer(console), **values)
    ui.print_bench(run, console)
    path = run.write(json_path, command=_command_line())  # the document the API writes (results.json beside the artifact)
    console.print(f"results: {path}")
    run.raise_for_failures(path)


@main.command("profile", cls=grouped_command())
@click.argument("target", default=DEFAULT_MODEL)
@click_options("profile")
@click.option("--top", default=15, show_default=True, type=click.IntRange(1), help="Modules shown per backend (the JSON has all).")
@click.option("--no-accuracy", is_flag=True, help="INT8: skip each module's KL when it alone is INT8.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Where to write the profile (default: profile.json beside the artifact).")
def profile_command(target, top, no_accuracy, json_path, **values) -> None:
    """Where the milliseconds go in TARGET (a model name, an artifact folder or an ONNX
    file; default: efficientnet_lite0): each backend's own profiler, per PyTorch module,
    beside the end-to-end p50. For an INT8 artifact, each module's time in the FP32 parent
    and its accuracy cost (KL vs FP32 when it alone is INT8, on the calibration images;
    pass the --calib options it was made with): a price list of every layer.
    """
    from .results.profile_view import screen_tables

    console = ui.stderr()
    found = _build(console, api.profile, target, label="profile", accuracy=not no_accuracy, **values)
    out = ui.stdout()
    for item in screen_tables(found.to_dict(), top):
        out.print(item)
    console.print(f"profile: {api.write_profile(found, json_path, command=_command_line())}")


@main.command("doctor", cls=grouped_command())
@click.argument("target", metavar="[ARTIFACT]", required=False)
@click_options("doctor")
@click.option("--layers", is_flag=True, help="With ARTIFACT: print every layer each backend reported (the JSON always has them).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout instead of the text (format edgekit-doctor/1, keys: see above).")
def doctor_command(target, layers, as_json, **values) -> None:
    """What runs where, at what precision, on this machine: edgekit, Python, OS, the CPU and
    its inference instruction sets, cores, memory, GPUs, a Jetson board, the power sources
    a bench can read, and each backend's own facts (version, devices, what it picks here).

    With ARTIFACT (an artifact folder, an ONNX file, or a model name, built as bench builds
    it): each backend (--backend, else every one that can run here) compiles and loads it,
    and where its runtime reports layers, where each compute node ran and at what
    precision, against what the graph asks. Exit 1 when one ran otherwise (a declared
    substitution is printed, not counted) or a named backend could not load it.

    --json keys: format, edgekit, machine, gpus, gpu_problem, power, backends (each
    backend's facts), artifact (null, or its request and a list of backends: backend,
    device, status, reason, file, variant_detail, session, precision, layers), mismatches.
    Every key is always there (null where it does not apply); all of them: pydoc edgekit.doctor.
    """
    import json

    if layers and (as_json or target is None):
        raise UsageError("--layers prints an artifact's layers as text; " + ("the JSON has them all: drop --layers" if as_json else "name an ARTIFACT"))
    from click.core import ParameterSource

    context = click.get_current_context()  # what was typed, not click's defaults: a named --backend narrows the check
    values = {key: value for key, value in values.items() if context.get_parameter_source(key) is not ParameterSource.DEFAULT}
    console = ui.stderr()
    with ui.progress(console) as report:
        found = api.doctor(target, progress=lambda stage, done, total: report("doctor", stage, done, total), announce=ui.announcer(console), **values)
    if as_json:
        click.echo(json.dumps(found.to_dict(), indent=2, default=str))
    else:
        ui.print_doctor(found, ui.stdout(), layers)
    api.raise_if_unhealthy(found, bool(values.get("strict")))


for _param in doctor_command.params:  # doctor's default is every backend that can run here, not bench's default set
    if _param.name == "backends":
        _param.show_default = False


# --------------------------------------------------------------------------- bundles


@main.command("bundle", cls=grouped_command())
@click.argument("target")
@click_options("bundle")
@click.option("-o", "--out", "bundle_dir", required=True, type=click.Path(path_type=Path), help="The bundle folder to write (an old bundle there is replaced).")
def bundle_command(target, bundle_dir, **values) -> None:
    """Write a self-contained folder that runs TARGET (a model, artifact folder or ONNX file)
    on a device with numpy, Pillow and the backend's runtime only: the ONNX, manifest,
    evaluation images, PyTorch FP32 logits for them, and a torch-free runner. Copy it over
    and run `python3 -m edgekit.device_runner bench` inside it.
    """
    console = ui.stderr()
    with ui.progress(console) as report:
        bundle = api.bundle(target, bundle_dir, progress=report, announce=ui.announcer(console), **values)
    ui.print_bundle(bundle, console)
    click.echo(str(bundle.path))
    console.print(f"on the device:  cd {bundle.path.name} && {bundle.run_command}")


# --------------------------------------------------------------------------- recipes, reports, the gate


@main.command("run")
@click.argument("recipe_path", metavar="RECIPE", type=click.Path(path_type=Path))
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Where to write results (default: the recipe's 'output', else <recipe>.results.json).")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None, metavar="[auto|ADDRESS]",
              help="Run the cells as Ray tasks: on the cluster at ADDRESS (host:port, or auto for the one this machine joined), or, with no value, on a Ray instance started here. Device kinds: the recipe's [ray] kinds.")
@click.option("--resume", is_flag=True, help="Keep the cells the results file already holds as done (it records each cell as it finishes), run the rest.")
def run_command(recipe_path: Path, json_path: Optional[Path], ray_address: Optional[str], resume: bool) -> None:
    """Build and benchmark every cell of RECIPE (a TOML file) into one results file,
    written as each cell finishes: a failed cell is a row with its error, Ctrl-C or a kill
    keeps the finished ones, and --resume goes on from there."""
    plan = api.plan_run(recipe_path, json_path, ray_address)  # names, paths and the output checked: nothing runs for a recipe that cannot
    console = ui.stderr()
    console.print(plan.summary)
    for note in plan.notes:
        console.print(f"note: {note}")
    plan.check()
    try:
        with ui.progress(console) as report:
            outcome = plan.run(resume=resume, command=_command_line(), progress=report)
    except KeyboardInterrupt:
        console.print(f"interrupted: the results file {plan.output} holds every cell finished so far (edgekit run ...{plan.launcher.resume_hint} --resume goes on)")
        sys.exit(130)
    ui.print_run(outcome, console)
    plan.raise_for_failures(outcome)


@main.command("report")
@click.argument("results", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--out", "out_dir", default="report", show_default=True, type=click.Path(path_type=Path), help="The folder to write the report into.")
@click.option("--title", default="edgekit report", show_default=True, help="The report's title.")
def report_command(results, out_dir: Path, title: str) -> None:
    """Markdown, CSV and HTML tables and PNG plots from one or more results files."""
    for path in api.report(results, out_dir, title):
        click.echo(str(path))


@main.command("check")
@click.argument("new", type=click.Path(path_type=Path))
@click.option("--baseline", required=True, type=click.Path(path_type=Path), help="Results file to compare against.")
@click.option("--max-top1-drop", default=0.5, show_default=True, type=Finite(0),
              help="Points of top-1 (or agreement) a cell may lose; fails only when the drop's 95% interval lies beyond it.")
@click.option("--max-latency-regression", default="10%", show_default=True,
              help="How much slower a cell may get, e.g. 10%; fails only when the slowdown exceeds it beyond the runs' noise.")
@click.option("--latency-noise-floor", default="10%", show_default=True,
              help="Least run-to-run noise assumed for a p50, whatever the rounds (bench --repeats) show; all there is from one round.")
@click.option("--allow-different-images", is_flag=True, help="Judge runs evaluated on different image sets (refused otherwise).")
@click.option("--reference", help="Model whose latency normalises the others (default: the recipe's 'reference').")
@click.option("--trust-raw-latency", is_flag=True,
              help="Both runs come from one quiet, dedicated machine: a raw p50 (no --reference) may fail, not only be inconclusive.")
@click.option("--junit", "junit_path", type=click.Path(path_type=Path), help="Also write JUnit XML here.")
def check_command(new: Path, baseline: Path, max_top1_drop: float, max_latency_regression: str, latency_noise_floor: str,
                  allow_different_images: bool, reference, trust_raw_latency: bool, junit_path) -> None:
    """Compare NEW with --baseline for CI, on the evidence (docs/ci-gate.md).

    Exit 0: no regression shown (PASS, INCONCLUSIVE where the images or timing cannot
    tell, NEW); 1: a regression (FAIL, or a baseline cell MISSING); 2: refused (a bad
    option, a results file that cannot be read, runs on different image sets, nothing to
    compare)."""
    from .results.gate import check_threshold, parse_percent, write_junit

    max_top1_drop = check_threshold(max_top1_drop, "--max-top1-drop")
    percentages = {}
    for flag, text in (("--max-latency-regression", max_latency_regression), ("--latency-noise-floor", latency_noise_floor)):
        try:
            percentages[flag] = parse_percent(text)
        except ValueError:
            raise UsageError(f"{flag}: expected a percentage such as 10%, got {text!r}") from None
    report = api.check(new, baseline, max_top1_drop=max_top1_drop, max_latency_regression=percentages["--max-latency-regression"],
                       latency_noise_floor=percentages["--latency-noise-floor"], reference=reference,
                       allow_different_images=allow_different_images, trust_raw_latency=trust_raw_latency)
    console = ui.stderr()
    for warning in report.warnings:
        console.print(f"warning: {warning}")
    ui.print_check(report, f"{new} vs {baseline}")
    if junit_path:
        console.print(f"JUnit XML: {write_junit(report, junit_path)}")
    api.raise_if_regressed(report)
    unresolved = len(report.inconclusive)
    console.print("check passed" + (
        f" ({unresolved} finding(s) inconclusive: no regression shown, but the images or the timing cannot resolve the allowance)"
        if unresolved else ""))


if __name__ == "__main__":
    main()
