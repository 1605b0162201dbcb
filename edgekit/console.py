"""What the command line shows: consoles (rich on a terminal, plain when piped), progress
(bars or lines), tables, and the printers of each command's results.

Results (tables, JSON, the paths a script wants) go to stdout (``stdout()``); progress,
notes and warnings to stderr (``stderr()``). When the stream is not a terminal: plain
tables (no box characters; the title on a line of its own, then the header, columns apart
by two spaces or more) and lines that are never wrapped, for grep, awk and column
(docs/cli.md). rich is imported only here, and only when something is printed.
"""

from __future__ import annotations

import functools
from typing import Any, Optional, Sequence

from .steps import SummaryTable, describe, duration

PIPED_WIDTH = 1000  # not a terminal: lines are never wrapped, tables never squeezed


def stderr():
    """Progress, notes and warnings."""
    return _console(stderr=True)


def stdout():
    """Results: tables and the lines under them."""
    return _console(stderr=False)


def _console(stderr: bool):
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


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], left: Sequence[str] = ()):
    """A rich Table, titled on the left; the columns in ``left`` justified left, the others right."""
    from rich.table import Table

    drawn = Table(title=title, title_justify="left")
    for column in columns:
        drawn.add_column(column, justify="left" if column in left else "right")
    for row in rows:
        drawn.add_row(*row)
    return drawn


# --------------------------------------------------------------------------- progress


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
        line += f", done in {elapsed:.0f} s" if finished else f", ETA {duration((total - done) / rate) if rate > 0 else '?'}"
        self._console.print(line)


def progress(console):
    """A progress reporter (label, stage, done, total): bars on a terminal, plain lines in a log."""
    return _Bars(console) if console.is_terminal else _Lines(console)


class measuring:
    """A transient bar on a terminal while models are built (the reporter takes (done,
    total)); nothing otherwise."""

    def __init__(self, console, enabled: bool):
        self._console, self._progress, self._task = console, None, None
        self._enabled = enabled and console.is_terminal

    def __enter__(self):
        return self

    def __call__(self, done: int, total: int) -> None:
        if not self._enabled:
            return
        if self._progress is None:
            from rich.progress import Progress

            self._progress = Progress(console=self._console, transient=True)
            self._progress.__enter__()
            self._task = self._progress.add_task("building models on the meta device", total=total)
        self._progress.update(self._task, completed=done)

    def __exit__(self, *exc):
        return self._progress.__exit__(*exc) if self._progress is not None else False


# --------------------------------------------------------------------------- artifacts and what their steps did


def print_summary(items, console) -> None:
    """A step's summary (edgekit.steps: lines and tables)."""
    for item in items:
        if isinstance(item, SummaryTable):
            console.print(table(item.title, item.columns, item.rows, tuple(item.left)))
        else:
            console.print(item)


def describe_artifact(artifact, reused: Optional[bool], console) -> None:
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


def announcer(console):
    """What a build shows of each artifact of a chain as it exists: where it is, and what a
    structural step (pruning, dw-separable) did to it. The numeric step's report (INT8) comes
    with the results (``print_numeric``)."""
    def announce(artifact, reused: bool) -> None:
        describe_artifact(artifact, reused, console)
        print_summary(describe(artifact, ("structural",)), console)

    return announce


def print_numeric(artifact, console) -> None:
    """The numeric step's report of ``artifact`` (INT8: ranges, budget, sensitivity)."""
    print_summary(describe(artifact, ("numeric",)), console)


def print_training(artifact, console) -> None:
    """The training step's report (fine-tuning: a line per epoch, the best one, the checkpoint)."""
    print_summary(describe(artifact, ("training",)), console)


def print_deploy(artifact, console, check: bool = False) -> None:
    from .deploy import deploy_lines

    for line in deploy_lines(artifact, check):
        console.print(line, highlight=False)


def print_inspect(artifact, facts: dict, out) -> None:
    """`edgekit inspect`: the artifact, its integrity, its steps, its INT8 report, its deploy files."""
    describe_artifact(artifact, None, out)
    sealed = facts["integrity"]["sealed_files"]
    problems = facts["integrity"]["problems"]
    out.print(f"integrity: {'intact, ' + str(sealed) + ' files sealed in the manifest' if not problems else 'NOT intact: ' + '; '.join(problems)}")
    for step in artifact.manifest.get("steps", []):
        out.print(f"step {step['step']}: " + ", ".join(f"{k}={v}" for k, v in step.items() if k not in ("step", "settings", "calibration", "fidelity_on_calibration")))
    print_numeric(artifact, out)
    print_deploy(artifact, out, check=True)


def models_table(rows: list[dict], measure: bool):
    def number(value, spec: str) -> str:
        return "-" if value is None else f"{value:{spec}}"

    title = "edgekit models: published params, GMACs (multiply-adds x 1e9, torchvision's 'GFLOPS') and ImageNet top-1"
    columns = ("name", "family", "input", "params M", "GMACs", "top-1", *(("counted params M", "counted GMACs") if measure else ()), "weights offline")
    lines = []
    for r in rows:
        counted = ()
        if measure:
            m = r["measured"]
            counted = (f"n/a ({m['error']})", "-") if m["error"] else (number(m["params_m"], ".2f"), number(m["gmacs"], ".3f"))
        lines.append((
            r["name"], r["family"], str(r["input_size"]), number(r["params_m"], ".2f"), number(r["gmacs"], ".3f"), number(r["top1"], ".2f"),
            *counted, "yes" if r["offline_weights"] else "no (--random-init)",
        ))
    return table(title + ("; counted: from the built model" if measure else "; --measure counts them"), columns, lines, ("name", "family", "weights offline"))


# --------------------------------------------------------------------------- results


def print_results(results, parity, title: str, count: int) -> None:
    """The result tables on stdout: latency and accuracy, then what applies of throughput
    mode, device time and cross-backend parity."""
    from .results.tables import device_time_table, has_device_time, parity_table, rich_table, screen_notes, throughput_table

    out = stdout()
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


def print_bench(report, console) -> None:
    """`edgekit bench`: the INT8 report, the tables of an edgekit.BenchReport, the images."""
    from .results.document import describe_images

    artifact = report.artifact
    print_numeric(artifact, console)
    if report.baseline_note:
        console.print(f"note: {report.baseline_note}")
    where = f" on {report.remote}" if report.remote else ""
    title = (f"{artifact.model_name} [{artifact.key}]{where} on {describe_images(report.images)}; "
             f"accuracy vs {'PyTorch on the same images' if report.compared else 'labels only'}")
    print_results(report.rows, report.parity, title, report.evaluated)
    if report.images.get("calibration"):
        print(f"images: {report.images['calibration']}; evaluated on {report.images['description']}")


def print_bundle(info, console) -> None:
    """What a bundle holds (edgekit.api.BundleInfo), on one line."""
    meta = info.meta
    reference = "with PyTorch FP32 logits" if meta["reference"] else "no PyTorch reference (imported ONNX): labels only"
    console.print(
        f"bundle {meta['id']}: {meta['model']} [{meta['artifact_key']}, {meta['variant']}] for {', '.join(meta['backends'])}; "
        f"{meta['images']['count']} images ({meta['images']['description']}) {reference}; {len(meta['files'])} files, {info.size_mb:.1f} MB"
    )


def print_run(outcome, console) -> None:
    """What a whole run shows, whichever launcher ran it: a table per finished cell (titled by
    its artifact and images here and over ssh, by its node on a cluster), the notes, the
    count of cells by state, where the results went."""
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
        if ledger.local:
            title = f"{unit.model} {unit.variant}{key}" + (f" on {describe_images(images)}" if images else "")
        else:
            title = f"{unit.label}: {entry.get('node') or '-'}"
        parity = [BackendParity(p["first"], p["second"], p["agreement"], p["max_abs_diff"]) for p in ledger.parity.get(unit.id, [])
                  if all(k in p for k in ("first", "second", "agreement", "max_abs_diff"))]
        count = int(images.get("images_evaluated", images.get("count", 0)) or 0)
        print_results(rows, parity, title + (" (from the previous run)" if entry.get("resumed") else ""), count)
    for note in outcome.notes:
        console.print(f"note: {note}")
    counts = ledger.counts()
    console.print(f"{len(ledger.units)} cells in {outcome.seconds:.0f} s: " + ", ".join(f"{n} {state}" for state, n in sorted(counts.items())))
    console.print(f"results: {ledger.path}")


def print_check(report, title: str) -> None:
    """`edgekit check`: the findings table on stdout."""
    from rich.text import Text

    from .results.gate import status_style, summary_rows

    rows = [(Text(status, style=status_style(status)), label, check, message) for status, label, check, message in summary_rows(report)]
    stdout().print(table(title, ("status", "cell", "check", "detail"), rows, ("status", "cell", "check", "detail")))


# --------------------------------------------------------------------------- doctor


def _fact(value: Any) -> str:
    """A fact's value as text: yes/no, '-' for nothing, lists and mappings inline."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None or value == "" or value == [] or value == {}:
        return "-"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_fact(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        shown = ", ".join(_fact(v) for v in value[:LISTED_FACTS])
        return shown if len(value) <= LISTED_FACTS else f"{len(value)}: {shown}, ... (all in --json)"
    return str(value)


LISTED_FACTS = 4  # items of a listed fact printed before the count


def _flat(facts: dict, prefix: str = "") -> list:
    """(dotted key, text) per fact, nested mappings spelled out key by key."""
    rows = []
    for key, value in facts.items():
        if isinstance(value, dict) and value:
            rows += _flat(value, f"{prefix}{key}.")
        else:
            rows.append((f"{prefix}{key}", _fact(value)))
    return rows


def _counts(counts: dict) -> str:
    return ", ".join(f"{word} {n}" for word, n in sorted(counts.items(), key=lambda item: -item[1])) or "-"


def print_doctor(report, out, layers: bool = False) -> None:
    """`edgekit doctor`: the machine, each backend's facts, then the artifact's check."""
    data = report.to_dict()
    m = data["machine"]
    out.print(f"edgekit {data['edgekit']}, Python {m['python']}, {m['os']} ({m['machine']})", highlight=False)
    memory = f"{m['memory_total_gb']} GiB" + (f" ({m['memory_available_gb']} GiB available)" if m["memory_available_gb"] is not None else "")
    out.print(f"CPU: {m['cpu']}, {m['logical_cores']} logical cores ({m['usable_cores']} usable), memory {memory}", highlight=False)
    missing = [flag for flag in m["cpu_flags_checked"] if flag not in m["cpu_flags"]]
    out.print(f"CPU flags: {' '.join(m['cpu_flags']) or 'none of ' + ' '.join(m['cpu_flags_checked'])}" + (f"; not: {' '.join(missing)}" if missing else ""), highlight=False)
    for gpu in data["gpus"]:
        out.print(f"GPU: {gpu['name']}, {gpu['memory_gb']} GiB, compute {_fact(gpu['compute_capability'])}, driver {_fact(gpu['driver'])}, CUDA {_fact(gpu['cuda'])} ({gpu['source']})", highlight=False)
    if not data["gpus"]:
        out.print(f"GPU: none found ({data['gpu_problem']})", highlight=False)
    board = m["jetson"]
    if board is not None:
        out.print(f"Jetson: {_fact(board['model'])}, L4T {_fact(board['l4t'])}, JetPack {_fact(board['jetpack'])}", highlight=False)
    elif m["board"]:
        out.print(f"board: {m['board']} (not a Jetson)", highlight=False)
    power = data["power"]
    out.print("power: " + "; ".join(f"{source} {'yes' if state['available'] else 'no (' + state['problem'] + ')'}" for source, state in power.items()), highlight=False)
    _print_backend_facts(data["backends"], out)
    if data["artifact"] is not None:
        _print_artifact_check(data["artifact"], out, layers)
        mismatches = data["mismatches"]
        reported = [c["backend"] for c in data["artifact"]["backends"] if c["precision"] is not None and not c["precision"]["problem"]]
        if mismatches:
            out.print(f"{len(mismatches)} precision mismatch(es)", highlight=False)
        elif reported:
            out.print(f"no precision mismatches: every compute node {', '.join(reported)} reported ran as the graph asks", highlight=False)
        else:
            out.print("no backend here reports per-layer precision: nothing was judged", highlight=False)


def _print_backend_facts(backends: dict, out) -> None:
    rows, extra = [], []
    for name, facts in backends.items():
        installed = facts.get("installed")
        rows.append((name, _fact(installed) if installed is not None else "?", _fact(facts.get("version")), _fact(facts.get("devices")), _fact(facts.get("problem"))))
        extra += [(name, key, value) for key, value in _flat({k: v for k, v in facts.items() if k not in ("installed", "version", "devices", "problem")})]
    out.print(table("backends", ("backend", "installed", "version", "devices", "problem"), rows, ("backend", "installed", "version", "devices", "problem")))
    if extra:
        out.print(table("what each backend says of this machine", ("backend", "fact", "value"), extra, ("backend", "fact", "value")))


def _print_artifact_check(artifact: dict, out, layers: bool) -> None:
    kept = artifact["kept_fp32"]
    out.print(f"artifact {artifact['model']} {artifact['variant']} [{artifact['key']}] -> {artifact['path']}", highlight=False)
    out.print(f"its graph asks: {_counts(artifact['asked'])} (compute nodes); numeric format {artifact['numeric_format']}"
              + ("" if kept is None else f"; kept FP32: {', '.join(kept) or 'none'}"), highlight=False)
    rows = []
    for check in artifact["backends"]:
        precision, session = check["precision"], check["session"] or {}
        ran = "-" if precision is None else ("report failed" if precision["problem"] else _counts(precision["ran"]))
        judged = "not reported" if precision is None or precision["problem"] else str(len(precision["mismatches"]))
        rows.append((check["backend"], check["device"], check["status"], _fact(check["file"]), _fact(check["variant_detail"] or session.get("precision")), ran, judged))
    out.print(table("what runs where", ("backend", "device", "status", "file", "runs", "layers ran", "mismatches"), rows,
                    ("backend", "device", "status", "file", "runs", "layers ran")))
    for check in artifact["backends"]:
        _print_check_lines(check, artifact["numeric_format"], out, layers)


def _print_check_lines(check: dict, asked_format: str, out, layers: bool) -> None:
    from .layer_precision import precision_word

    name, precision = check["backend"], check["precision"]
    if check["reason"]:
        out.print(f"{name}: {check['status']}: {check['reason']}", highlight=False)
    if check["session"] is not None:
        session = check["session"]
        threads = "the runtime's choice" if session["threads"] is None else session["threads"]
        out.print(f"{name}: loaded on {_fact(session['device'])} via {_fact(session['providers'])}, threads {threads}", highlight=False)
        runs = precision_word(str(session["precision"] or ""))
        if runs and runs != asked_format:
            out.print(f"{name}: note: the session runs {runs}, not the artifact's {asked_format}", highlight=False)
    if check["status"] == "ok" and precision is None:
        out.print(f"{name}: its runtime does not report per-layer precision here", highlight=False)
    if precision is None:
        return
    if precision["problem"]:
        out.print(f"{name}: {precision['problem']}", highlight=False)
    if precision["facts"]:
        out.print(f"{name}: " + "; ".join(f"{key} {value}" for key, value in _flat(precision["facts"])), highlight=False)
    for line in precision["substitutions"]:
        out.print(f"{name}: note: {line}", highlight=False)
    for line in precision["mismatches"]:
        out.print(f"{name}: MISMATCH: {line}", highlight=False)
    if layers and check["layers"]:
        rows = [(layer["layer"], layer["op_type"], layer["ran"] or "?", layer["where"] or "-", ", ".join(layer["covers"]), layer.get("note", "")) for layer in check["layers"]]
        out.print(table(f"{name}: every layer", ("layer", "op", "ran", "where", "ONNX nodes", "note"), rows, ("layer", "op", "ran", "where", "ONNX nodes", "note")))
