"""Thin click commands: declared options (edgekit.options) -> Settings -> plan -> tables.

Heavy imports (torch, onnx, runtimes) happen inside the commands, so ``edgekit --help``
is instant and works without them.
"""

from __future__ import annotations

import functools
import io
import sys
import warnings
from pathlib import Path
from typing import Optional

import click

from .core import EdgekitError, UsageError
from .options import Finite, Settings, click_options, grouped_command

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


PIPED_WIDTH = 1000  # not a terminal: lines are never wrapped, tables never squeezed


def _console(stderr: bool = True):
    """Results (tables, JSON, the paths a script wants) go to stdout (``stderr=False``);
    progress, notes and warnings to stderr. When the stream is not a terminal: plain
    tables (no box characters; the title on a line of its own, then the header, columns
    apart by two spaces or more) and lines that are never wrapped, for grep, awk and column."""
    from rich.console import Console

    # markup off: model keys, weight names and paths in brackets are text, not style tags
    console = Console(stderr=stderr, markup=False)
    return console if console.is_terminal else _plain_console_type()(stderr=stderr, width=PIPED_WIDTH, soft_wrap=True, markup=False)


@functools.lru_cache(maxsize=1)
def _plain_console_type():
    """A rich Console that prints every Table plain (rich is imported only when used)."""
    from rich.console import Console
    from rich.table import Table

    class PlainConsole(Console):
        def print(self, *objects, **kwargs):
            for item in objects:
                if isinstance(item, Table):
                    title, table = plain_table(item)
                    with self.capture() as captured:
                        super().print(table, **kwargs)
                    lines = ([title] if title else []) + [line.rstrip() for line in captured.get().splitlines()]
                    super().print("\n".join(lines), highlight=False)
                else:
                    super().print(item, **kwargs)

    return PlainConsole


def plain_table(table):
    """(title, a copy of ``table`` without box characters or title, that never wraps a cell)."""
    import copy

    plain = copy.copy(table)
    plain.box, plain.show_edge, plain.pad_edge, plain.expand = None, False, False, False
    plain.padding = (0, 1, 0, 1)  # two spaces at least between columns
    plain.title, plain.caption = None, None
    plain.columns = [copy.copy(column) for column in table.columns]
    for column in plain.columns:
        column.no_wrap = True
    title = table.title
    return (str(title) if title is not None else None), plain


class _Bars:
    """Progress on a terminal: one transient bar per label, with its rate and time left; a
    new stage restarts both (images/s while evaluating, runs/s while timing)."""

    def __init__(self, console):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        rate = TextColumn("{task.fields[rate]}", markup=False)
        self._progress = Progress(
            TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(), rate, TimeRemainingColumn(),
            console=console, transient=True,
        )
        self._tasks: dict[str, object] = {}
        self._stages: dict[str, str] = {}

    def __enter__(self):
        self._progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self._progress.__exit__(*exc)

    def __call__(self, label: str, stage: str, done: Optional[int], total: Optional[int]) -> None:
        progress, description = self._progress, f"{label}: {stage}"
        if label not in self._tasks:
            self._tasks[label] = progress.add_task(description, total=total, rate="")
        elif self._stages.get(label) != stage:
            progress.reset(self._tasks[label], total=total, completed=done or 0, description=description, rate="")
        self._stages[label] = stage
        task = self._tasks[label]
        progress.update(task, description=description, total=total, completed=done or 0)
        speed = next((t.speed for t in progress.tasks if t.id == task), None)
        progress.update(task, rate=f"{speed:.1f} {'images/s' if stage == 'accuracy' else '/s'}" if speed else "")


class _Lines:
    """Progress into a log (output is not a terminal): a line when a stage starts, then one
    every LOG_INTERVAL_S with the count, the rate and the time left, and one when it ends."""

    LOG_INTERVAL_S = 10.0

    def __init__(self, console):
        self._console = console
        self._state: dict[str, tuple[str, float, float]] = {}  # label -> (stage, started, last line)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def __call__(self, label: str, stage: str, done: Optional[int], total: Optional[int]) -> None:
        import time

        now = time.monotonic()
        current = self._state.get(label)
        if current is None or current[0] != stage:
            self._state[label] = (stage, now, now)
            self._console.print(f"{label}: {stage}" + (f" 0/{total}" if total else ""))
            return
        _, started, last = current
        finished = total is not None and done is not None and done >= total
        if not total or done is None or (now - last < self.LOG_INTERVAL_S and not finished):
            return
        self._state[label] = (stage, started, now)
        elapsed = max(now - started, 1e-9)
        rate = done / elapsed
        line = f"{label}: {stage} {done}/{total}, {rate:.1f}/s"
        line += f", done in {elapsed:.0f} s" if finished else f", ETA {_duration((total - done) / rate) if rate > 0 else '?'}"
        self._console.print(line)


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def _progress(console):
    """A progress reporter (label, stage, done, total): bars on a terminal, plain lines in a log."""
    return _Bars(console) if console.is_terminal else _Lines(console)


def _print_results(results, parity, title: str, count: int) -> None:
    """The result tables on stdout: latency and accuracy, then what applies of throughput
    mode, device time and cross-backend parity."""
    from .results.tables import device_time_table, has_device_time, parity_table, rich_table, screen_notes, throughput_table

    out = _console(stderr=False)
    out.print(title)
    out.print(rich_table(results))
    for note in screen_notes(results):
        out.print(note)
    if any(r.throughput for r in results):
        out.print(throughput_table(results))
    if has_device_time(results):
        out.print(device_time_table(results))
    if len(parity) > 1:
        out.print(parity_table(parity, f"cross-backend parity on the same {count} images"))


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

    from . import models

    if measure and no_measure:
        raise UsageError("--measure and --no-measure exclude each other")
    names = model_names_matching(pattern)
    rows = []
    console = _console()
    with _measuring(console, len(names) if measure else 0) as advance:
        for name in names:
            spec = models.get_spec(name)
            if offline_only and not spec.offline_weights:
                advance()
                continue
            rows.append(model_record(name, spec, _measured(name) if measure else None))
            advance()
    if not rows:
        console.print(f"note: no model matching {pattern!r} has its weights on this machine" if pattern else "note: no model has its weights on this machine")
    if as_json:
        click.echo(json.dumps({"models": rows}, indent=2))
        return
    _console(stderr=False).print(models_table(rows, measure))


def model_names_matching(pattern: Optional[str]) -> list[str]:
    """Registered names containing ``pattern`` (any case); a pattern that matches none is
    refused in one line, with the closest names."""
    from . import models

    names = models.list_model_names()
    if not pattern:
        return names
    found = [n for n in names if pattern.lower() in n.lower()]
    if found:
        return found
    close = models.model_registry().close_matches(pattern)
    hint = f"; did you mean {', '.join(close)}?" if close else "; `edgekit models` lists them all"
    timm = "" if pattern.startswith(models.TIMM_PREFIX) else " (timm models are not listed: use timm/<name>)"
    from .classes import shown  # a 20 MB pattern is quoted in part

    raise UsageError(f"no registered model name contains {shown(pattern)}{hint}{timm}")


def model_record(name: str, spec, measured: Optional[dict]) -> dict:
    """One model for `edgekit models --json`: the same keys for every model (docs/cli.md)."""
    ref = spec.reference
    return {
        "name": name,
        "family": spec.family,
        "source": spec.source,
        "input_size": spec.preprocessing.input_size,
        "params_m": ref.params_m,
        "gmacs": ref.gflops,
        "top1": ref.top1,
        "reference": ref.source,
        "offline_weights": bool(spec.offline_weights),
        "measured": measured,
    }


def _measured(name: str) -> dict:
    """Params and GMACs counted from the built model (``error``: why not)."""
    from . import models

    try:
        params, gmacs = models.complexity_of(name)
        return {"params_m": round(params, 4), "gmacs": round(gmacs, 4), "error": None}
    except Exception as e:  # a model that cannot run on meta still keeps its row
        return {"params_m": None, "gmacs": None, "error": type(e).__name__}


class _measuring:
    """A transient bar on a terminal while models are built; nothing otherwise."""

    def __init__(self, console, total: int):
        self._progress = None
        if total and console.is_terminal:
            from rich.progress import Progress

            self._progress = Progress(console=console, transient=True)
            self._task = self._progress.add_task("building models on the meta device", total=total)

    def __enter__(self):
        if self._progress is not None:
            self._progress.__enter__()
            return lambda: self._progress.advance(self._task)
        return lambda: None

    def __exit__(self, *exc):
        return self._progress.__exit__(*exc) if self._progress is not None else False


def models_table(rows: list[dict], measure: bool):
    from rich.table import Table

    def number(value, spec: str) -> str:
        return "-" if value is None else f"{value:{spec}}"

    title = "edgekit models: published params, GMACs (multiply-adds x 1e9, torchvision's 'GFLOPS') and ImageNet top-1"
    table = Table(title=title + ("; counted: from the built model" if measure else "; --measure counts them"), title_justify="left")
    columns = ("name", "family", "input", "params M", "GMACs", "top-1", *(("counted params M", "counted GMACs") if measure else ()), "weights offline")
    for col in columns:
        table.add_column(col, justify="left" if col in ("name", "family", "weights offline") else "right")
    for r in rows:
        counted = ()
        if measure:
            m = r["measured"]
            counted = (f"n/a ({m['error']})", "-") if m["error"] else (number(m["params_m"], ".2f"), number(m["gmacs"], ".3f"))
        table.add_row(
            r["name"], r["family"], str(r["input_size"]), number(r["params_m"], ".2f"), number(r["gmacs"], ".3f"), number(r["top1"], ".2f"),
            *counted, "yes" if r["offline_weights"] else "no (--random-init)",
        )
    return table


# --------------------------------------------------------------------------- building artifacts


def _settings(values: dict) -> Settings:
    return Settings(values)


def _announce(artifact, reused: bool, console) -> None:
    """One artifact of a chain: where it is and what its step did."""
    _describe_artifact(artifact, reused, console)
    _print_pruning(artifact, console)
    _print_dw_separable(artifact, console)


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


SENSITIVITY_ROWS = 10  # the same rows in export, bench and inspect


def _print_quantization(artifact, console) -> None:
    q = artifact.manifest.get("quantization")
    if not q:
        return
    from rich.table import Table

    from .transforms.quantize import Budget

    options = q["options"]
    stages = q.get("stages") or []
    story = " -> ".join(f"{st['name']} KL {st['after']['mean_kl']:.4f}" for st in stages) or f"KL {q['final']['mean_kl']:.4f}"
    console.print(
        f"INT8 ({options['method']} ranges, {options.get('rounding', 'nearest')} rounding, {q['calibration_images']} calibration images"
        + (f", {q['seconds']:.0f} s" if q.get("seconds") else "") + f"): on the calibration images vs FP32, {story}; "
        f"final agreement {q['final']['agreement']:.1f}%; budget ({Budget(**options['budget']).describe()}) "
        + ("not searched (random-init weights)" if q.get("random_weights") else ("met" if q["budget_met"] else "NOT met"))
    )
    kept = q.get("kept_in_float")
    if kept is None:  # artifacts quantized before the list existed
        console.print(f"{q['quantized_nodes']} layers INT8; in float: {q['float_nodes'] or 'none'}")
    else:
        console.print(f"{q['quantized_nodes']} layers INT8, {len(kept)} nodes in float" + (":" if kept else ""))
        reasons: dict[str, list[str]] = {}
        for node in kept:
            reasons.setdefault(node["reason"] if not node["reason"].startswith("fell back") else "fell back to float (budget)", []).append(
                node["module"] or node["node"])
        for reason, names in reasons.items():
            shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
            console.print(f"  {len(names)} x {reason}: {shown}")
    rows = q["sensitivity"][:SENSITIVITY_ROWS]
    measured = any(r["kl_if_float"] is not None for r in rows)
    if rows:
        n = q.get("sensitivity_images") or "?"
        title = (
            f"layers ranked by KL vs FP32 when read in float alone ({n} images; all INT8 on them: {q['sensitivity_all_int8_kl']:.4f})"
            if measured and q.get("sensitivity_all_int8_kl") is not None
            else f"layers with the largest output error vs FP32 ({n} images; no fallback search was needed)"
        )
        table = Table(title=f"{title}, top {len(rows)} of {len(q['sensitivity'])}", title_justify="left")
        for col in ("module (ONNX node)", "op", "output rel. error", *(("KL if float",) if measured else ()), "in float"):
            table.add_column(col, justify="left" if col in ("module (ONNX node)", "op", "in float") else "right")
        fell_back = {f["node"]: f for f in q["fallback"]}
        for r in rows:
            step = fell_back.get(r["node"])
            cells = [r.get("module") or r["node"], r["op_type"], f"{r['output_rel_error']:.3f}"]
            if measured:
                cells.append(f"{r['kl_if_float']:.4f}" if r["kl_if_float"] is not None else "-")
            cells.append(_fallback_cell(step) if step else "")
            table.add_row(*cells)
        console.print(table)
    for note in q.get("notes", []):
        console.print(f"note: {note}")


def _fallback_cell(step: dict) -> str:
    """'yes (KL after: 0.0022; costs onnxruntime +0.082 ms, openvino +0.022 ms)'."""
    price = ", ".join(f"{backend} {ms:+.3f} ms" for backend, ms in (step.get("price_ms") or {}).items())
    return f"yes (KL after: {step['after']['mean_kl']:.4f}" + (f"; costs {price}" if price else "") + ")"


def _describe_artifact(artifact, reused: Optional[bool], console) -> None:
    """One line: the artifact, its weights and its parity with PyTorch. ``reused`` None: as
    found on disk (inspect), whichever command built it."""
    parity = artifact.manifest.get("parity")
    if reused is None:
        verb = f"artifact {artifact.manifest.get('variant', 'fp32')} [{artifact.key}]:"
    else:
        verb = "reused" if reused else "imported" if parity is None else "exported"
    if parity is None:
        console.print(f"{verb} {artifact.model_name} -> {artifact.path}")
        return
    console.print(
        f"{verb} {artifact.model_name} -> {artifact.path}  "
        f"[{artifact.manifest['model']['weights']}]  parity vs PyTorch on {parity.get('images')} real images: "
        f"max |diff| {parity.get('max_abs_diff', float('nan')):.2e}, top-1 agreement {parity.get('top1_agreement', float('nan')):.1f}%"
    )


# --------------------------------------------------------------------------- export


@main.command("export", cls=grouped_command())
@click.argument("model")
@click_options("export")
def export_command(model, **values) -> None:
    """Export MODEL (a model name or an ONNX file) to an ONNX artifact under exported/
    (reused when identical), with the variant its flags ask for (--int8, --fp16, --prune,
    --dw-separable, --finetune); a step's options without its flag are an error."""
    from . import api

    console = _console()
    with _progress(console) as report:
        artifact = api.export(model, progress=lambda stage, done, total: report("build", stage, done, total),
                              announce=lambda built, reused: _announce(built, reused, console), **values)
    _print_quantization(artifact, console)
    click.echo(str(artifact.path))
    _print_deploy(artifact, console)
    _exit_if_budget_missed(artifact, _settings(values))


def _print_deploy(artifact, console, check: bool = False) -> None:
    from .deploy import deploy_lines

    for line in deploy_lines(artifact, check):
        console.print(line, highlight=False)


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
    from . import api

    console = _console()
    with _progress(console) as report:
        artifact = api.export(model, variant="finetuned", progress=lambda stage, done, total: report("build", stage, done, total),
                              announce=lambda built, reused: _announce(built, reused, console), **values)
    _print_finetune(artifact, _console(stderr=False))
    click.echo(str(artifact.path))


def _print_finetune(artifact, console) -> None:
    report = artifact.manifest.get("finetune")
    if not report:
        return
    for epoch in report["history"]:
        console.print(
            f"epoch {epoch['epoch']:>3} {epoch['phase']:<5} loss {epoch['train_loss']:.3f}  train top-1 {epoch['train_top1']:5.1f}%  "
            f"val top-1 {epoch['val_top1']:6.2f}%  {epoch['seconds']:.0f} s"
        )
    classes = artifact.classes
    console.print(
        f"best: epoch {report['best_epoch']}, val top-1 {report['best_val_top1']:.2f}% on {report['val_images']} images "
        f"({classes.count} classes, {report['train_images']} training images, {_duration(report['seconds'])}"
        + (", stopped early" if report["stopped_early"] else "") + ")"
    )
    console.print(f"checkpoint: {artifact.path / artifact.manifest['files']['torch_state']}")


def _exit_if_budget_missed(artifact, settings) -> None:
    q = artifact.manifest.get("quantization")
    if q and not q["budget_met"] and settings["strict"]:
        raise EdgekitError(f"INT8 budget not met (kept the best artifact: {artifact.path})")


@main.command("inspect")
@click.argument("artifact_dir", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout instead of the text (keys: docs/cli.md).")
def inspect_command(artifact_dir: Path, as_json: bool) -> None:
    """Show an artifact's integrity, lineage, INT8 sensitivity report and the file each
    runtime loads, on stdout. Exits 2 when the artifact is not intact (after saying what is wrong)."""
    import json

    from .core import Artifact, InvalidModelFileError

    artifact = Artifact.load(artifact_dir)
    facts = artifact_facts(artifact)
    if as_json:
        click.echo(json.dumps(facts, indent=2, default=str))
    else:
        out = _console(stderr=False)
        _describe_artifact(artifact, None, out)
        sealed = facts["integrity"]["sealed_files"]
        problems = facts["integrity"]["problems"]
        out.print(f"integrity: {'intact, ' + str(sealed) + ' files sealed in the manifest' if not problems else 'NOT intact: ' + '; '.join(problems)}")
        for step in artifact.manifest.get("steps", []):
            out.print(f"step {step['step']}: " + ", ".join(f"{k}={v}" for k, v in step.items() if k not in ("step", "settings", "calibration", "fidelity_on_calibration")))
        _print_quantization(artifact, out)
        _print_deploy(artifact, out, check=True)
    if facts["integrity"]["problems"]:
        raise InvalidModelFileError(f"{artifact.path} is not intact: {facts['integrity']['problems'][0]}; export it again")


def artifact_facts(artifact) -> dict:
    """What `edgekit inspect --json` prints: the same keys for every artifact (docs/cli.md);
    the manifest's own sections (steps, parity, quantization) as they are."""
    from .deploy import SECTION, file_state

    manifest = artifact.manifest
    problems = artifact.problems()
    section = manifest.get(SECTION)
    deploy = None
    if isinstance(section, dict):
        deploy = {
            runtime: [{"file": str(e.get("file")), "when": str(e.get("when") or ""), "state": file_state(artifact, str(e.get("file"))) or "ok"} for e in entries]
            for runtime, entries in section.items()
        }
    model = manifest.get("model") or {}
    return {
        "path": str(artifact.path),
        "key": artifact.key,
        "model": artifact.model_name,
        "variant": manifest.get("variant", "fp32"),
        "weights": model.get("weights"),
        "integrity": {"intact": not problems, "problems": problems, "sealed_files": len(manifest.get("sha256") or {})},
        "steps": manifest.get("steps", []),
        "parity": manifest.get("parity"),
        "quantization": manifest.get("quantization"),
        "deploy": deploy,
    }


# --------------------------------------------------------------------------- bench


@main.command("bench", cls=grouped_command())
@click.argument("target", default=DEFAULT_MODEL)
@click_options("bench")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Where to write results (default: results.json beside the artifact).")
def bench_command(target, json_path, **values) -> None:
    """Benchmark TARGET (a model name, an artifact folder or an ONNX file; default:
    efficientnet_lite0) against the PyTorch original: latency, memory, size, top-1/top-5
    with 95% intervals, top-1 drop, agreement and KL on the same images.
    """
    from . import api
    from .results.document import describe_images

    console = _console()
    settings = _settings(values)
    with _progress(console) as report:
        run = api.bench(target, progress=report, announce=lambda built, reused: _announce(built, reused, console), **values)
    artifact = run.artifact
    _print_quantization(artifact, console)
    if run.note and "no PyTorch original" in run.note:
        console.print(f"note: {run.note}")
    compared = any(r.accuracy is not None and r.accuracy.agreement is not None for r in run.rows)
    where = f" on {run.remote}" if run.remote else ""
    title = f"{artifact.model_name} [{artifact.key}]{where} on {describe_images(run.images)}; accuracy vs {'PyTorch on the same images' if compared else 'labels only'}"
    _print_results(run.rows, run.parity, title, run.evaluated)
    if run.images.get("calibration"):
        click.echo(f"images: {run.images['calibration']}; evaluated on {run.images['description']}")
    path = run.write(json_path, command=_command_line())  # the document the API writes (results.json beside the artifact)
    console.print(f"results: {path}")
    _exit_if_failed(run.failed, path)
    _exit_if_budget_missed(artifact, settings)


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
    from . import api
    from .results.document import results_document, write_results
    from .results.profile_view import screen_tables
    from .timing import machine_info

    console = _console()
    with _progress(console) as report:
        found = api.profile(target, accuracy=not no_accuracy, progress=lambda stage, done, total: report("profile", stage, done, total),
                            announce=lambda built, reused: _announce(built, reused, console), **values)
    section = found.to_dict()
    out = _console(stderr=False)
    for item in screen_tables(section, top):
        out.print(item)
    if not found.profiles:
        raise EdgekitError("no backend could be profiled: " + "; ".join(f"{k}: {v}" for k, v in found.unavailable.items()))
    document = results_document([], command=_command_line(), machine=machine_info(), extra={"profile": section})
    path = write_results(document, json_path or (found.path / "profile.json"))
    console.print(f"profile: {path}")


def _exit_if_failed(failed, path) -> None:
    """One line for failed rows, saying how many measured rows the results file at ``path``
    holds (it is read back: never a claim that rows were saved when none were)."""
    if failed:
        import json

        names = ", ".join(r.backend for r in failed)
        try:
            rows = json.loads(Path(path).read_text())["results"]
            measured: Optional[int] = sum(1 for r in rows if not r.get("error"))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            measured = None
        if measured is None:
            saved = f"see {path}"
        elif measured:
            saved = f"the other rows were saved to {path}: {measured} measured"
        else:
            saved = f"no row was measured; {path} records the failure{'s' if len(failed) != 1 else ''}"
        raise EdgekitError(f"{names} failed: {failed[0].error} ({saved})")


# --------------------------------------------------------------------------- bundles


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
    from .bundle import check_backends, make_bundle
    from .device_runner import RUN_COMMAND
    from .session import bench_request

    console = _console()
    settings = _settings(values)
    names = check_backends(settings["backends"])
    request = bench_request(settings)
    request.images.resolve()  # a bad image folder fails before any export work
    from . import api
    from .session import evaluation_set

    with _progress(console) as report:
        artifact = api.export(target, progress=lambda stage, done, total: report("build", stage, done, total),
                              announce=lambda built, reused: _announce(built, reused, console), **values)
    image_set = evaluation_set(artifact, request.images)
    with _progress(console) as report:
        folder = make_bundle(
            artifact, names, image_set, bundle_dir, device=settings["device"], batch_sizes=settings["batch"],
            progress=lambda stage, done, total: report("bundle", stage, done, total),
        )
    _describe_bundle(folder, console)
    click.echo(str(folder))
    console.print(f"on the device:  cd {folder.name} && {RUN_COMMAND}")


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
    from .plan import launcher_for, recipe_cells, run_here
    from .recipe import load_recipe

    recipe = load_recipe(recipe_path)  # names, paths and the output checked: nothing runs for a recipe that cannot
    cells = recipe_cells(recipe)
    console = _console()
    console.print(
        f"recipe {recipe.name}: {len(recipe.models)} models x {len(recipe.variants)} variants x backends "
        f"{', '.join(recipe.backends)} x batch {', '.join(map(str, recipe.batch))}"
    )
    output = json_path or recipe.output or recipe_path.with_suffix(".results.json")
    extra = {"recipe": str(recipe_path), "reference": recipe.reference}
    if ray_address is not None:
        return _run_on_ray(recipe, cells, ray_address, resume, output, console)
    if any(c.settings["device_kinds"] for c in cells):
        console.print("note: [ray] kinds apply to --ray runs; every cell runs here")
    launcher = launcher_for(cells[0].settings)
    launcher.check(recipe.backends)
    _check_images(cells)
    try:
        with _progress(console) as report:
            outcome = run_here(cells, launcher, output, resume=resume, command=_command_line(), extra=extra, progress=report)
    except KeyboardInterrupt:
        _interrupted(output, "", console)
    _report_run(outcome, cells, console, ray=False)


def _interrupted(output: Path, how: str, console) -> None:
    console.print(f"interrupted: the results file {output} holds every cell finished so far (edgekit run ...{how} --resume goes on)")
    sys.exit(130)


def _report_run(outcome, cells, console, ray: bool) -> None:
    """What a whole run prints and how it exits, on Ray or here: a table per finished cell,
    the notes, the count of cells by state, where the results went; exit 1 when a row failed."""
    from .evaluation import BackendParity
    from .results.document import describe_images

    ledger = outcome.ledger
    results = ledger.results()
    for unit in ledger.units:
        rows = [r for r in results if r.environment.get("unit") == unit.id]
        entry = ledger.entries[unit.id]
        if not rows or entry["state"] != "done":
            continue
        images = entry.get("images") or {}
        key = f" [{entry['artifact_key']}]" if entry.get("artifact_key") else ""
        if ray:
            title = f"{unit.label}: {entry.get('node') or '-'}"
        else:
            title = f"{unit.model} {unit.variant}{key}" + (f" on {describe_images(images)}" if images else "")
        parity = [BackendParity(p["first"], p["second"], p["agreement"], p["max_abs_diff"]) for p in ledger.parity.get(unit.id, [])
                  if all(k in p for k in ("first", "second", "agreement", "max_abs_diff"))]
        count = int(images.get("images_evaluated", images.get("count", 0)) or 0)
        _print_results(rows, parity, title + (" (from the previous run)" if entry.get("resumed") else ""), count)
    for note in outcome.notes:
        console.print(f"note: {note}")
    counts = ledger.counts()
    console.print(f"{len(ledger.units)} cells in {outcome.seconds:.0f} s: " + ", ".join(f"{n} {state}" for state, n in sorted(counts.items())))
    console.print(f"results: {ledger.path}")
    _exit_if_failed([r for r in results if r.error], ledger.path)
    _exit_if_strict_budget_missed(outcome.notes, cells[0].settings)


def _check_images(cells) -> None:
    """Every cell's images, before any work."""
    from .session import bench_request

    for cell in cells:
        bench_request(cell.settings).images.resolve()


def _exit_if_strict_budget_missed(notes, settings) -> None:
    budget = [n for n in notes if "budget not met" in n]
    if budget and settings["strict"]:
        raise EdgekitError("INT8 budget not met for " + "; ".join(n.split(":")[0] for n in budget) + " (strict)")


def _run_on_ray(recipe, cells, address: str, resume: bool, output: Path, console) -> None:
    from .cluster.launcher import run_on_ray

    if any(c.settings["remote"] for c in cells):
        raise UsageError("--ray and [bench] remote are two ways to reach devices; with --ray, a device is a node of the cluster")
    _check_images(cells)
    extra = {"recipe": str(recipe.path), "reference": recipe.reference}
    try:
        with _progress(console) as report:
            outcome = run_on_ray(cells, address=address, output=output, resume=resume, command=_command_line(), extra=extra, progress=report)
    except KeyboardInterrupt:
        _interrupted(output, " --ray", console)
    _report_run(outcome, cells, console, ray=True)


def _load_results(paths) -> list[dict]:
    from .results.document import load_results_documents

    return load_results_documents(paths)


@main.command("report")
@click.argument("results", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--out", "out_dir", default="report", show_default=True, type=click.Path(path_type=Path), help="The folder to write the report into.")
@click.option("--title", default="edgekit report", show_default=True, help="The report's title.")
def report_command(results, out_dir: Path, title: str) -> None:
    """Markdown, CSV and HTML tables and PNG plots from one or more results files."""
    from .results.site import write_report

    written = write_report(_load_results(results), out_dir, title, sources=[str(p) for p in results])
    for path in written:
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
    from rich.table import Table
    from rich.text import Text

    from .results.gate import check_threshold, compare, parse_percent, status_style, summary_rows, write_junit

    max_top1_drop = check_threshold(max_top1_drop, "--max-top1-drop")
    percentages = {}
    for flag, text in (("--max-latency-regression", max_latency_regression), ("--latency-noise-floor", latency_noise_floor)):
        try:
            percentages[flag] = parse_percent(text)
        except ValueError:
            raise UsageError(f"{flag}: expected a percentage such as 10%, got {text!r}") from None
    old_doc, new_doc = _load_results([baseline, new])
    report = compare(old_doc, new_doc, max_top1_drop, percentages["--max-latency-regression"], reference,
                     allow_different_images=allow_different_images, latency_noise_floor=percentages["--latency-noise-floor"],
                     trust_raw_latency=trust_raw_latency)
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
    unresolved = len(report.inconclusive)
    console.print("check passed" + (
        f" ({unresolved} finding(s) inconclusive: no regression shown, but the images or the timing cannot resolve the allowance)"
        if unresolved else ""))


if __name__ == "__main__":
    main()
