"""`edgekit report` opens with the answer: a headline per model/artifact (speed-up over the
PyTorch FP32 reference with its noise, top-1 change, file size), the image set named, a
speed-up column, the reference marked, merged runs labelled, numbers kept on one line.

Built from two real bench runs of the tiny model (once per module): one timed in rounds
(--repeats 3), one in a single round (its spread is p50..p90)."""

from __future__ import annotations

import csv
import re

import pytest

from conftest import run_cli
from edgekit.core import AccuracyStats, BenchResult, LatencyStats
from edgekit.results.document import describe_images, load_results_document, results_document, write_json
from edgekit.results.site import _collect_entries, _pareto_points, _runs_of, _with_references, headline, write_report

REPEATS = (3, 1)  # run 1 in three rounds, run 2 in one
TITLE = "tiny model, two runs"


def _command(repeats: int) -> str:
    return f"edgekit bench mobilenet_v3_small --random-init --input-size 64 --iterations 10 --repeats {repeats}"


@pytest.fixture(scope="module")
def runs(tiny_artifact, tmp_path_factory):
    """Two real results files of one machine, and the report `edgekit report` makes of them."""
    from edgekit.backends import BackendOptions
    from edgekit.data import ImageRequest
    from edgekit.session import BenchRequest, run_bench
    from edgekit.timing import TimingOptions

    folder = tmp_path_factory.mktemp("headline")
    paths = []
    for n, repeats in enumerate(REPEATS, start=1):
        run = run_bench(tiny_artifact, BenchRequest(
            backends=("pytorch", "onnxruntime"), options=BackendOptions(threads=1),
            timing=TimingOptions(iterations=10, warmup=2, repeats=repeats), images=ImageRequest(views_per_image=1), power="off",
        ))
        assert not run.failed
        document = results_document(run.results, images=run.image_summary, command=_command(repeats), artifact={"key": tiny_artifact.key})
        paths.append(write_json(document, folder / f"run{n}.json"))
    out = folder / "report"
    proc = run_cli("report", *map(str, paths), "-o", str(out), "--title", TITLE, cwd=folder)
    assert proc.returncode == 0, proc.stderr
    documents = [load_results_document(p) for p in paths]
    return documents, paths, out


def _row(document: dict, backend: str) -> dict:
    [row] = [r for r in document["results"] if r["backend"] == backend]
    return row


def _expected_speedup(reference: dict, row: dict) -> tuple[float, float, float]:
    """From the document alone: reference p50 / row p50, and the range the spread allows
    (the rounds' p50 range where timed in rounds, else p50..p90)."""
    def band(stats: dict) -> tuple[float, float]:
        rounds = stats.get("p50_rounds") or []
        return (min(rounds), max(rounds)) if len(rounds) >= 2 else (stats["p50_ms"], stats["p90_ms"])

    ref, this = reference["latency"][0], row["latency"][0]
    value = ref["p50_ms"] / this["p50_ms"]
    (ref_low, ref_high), (low, high) = band(ref), band(this)
    return value, min(value, ref_low / high), max(value, ref_high / low)


def _summary_line(markdown: str, n: int) -> str:
    [line] = [line for line in markdown.splitlines() if line.startswith(f"- **mobilenet_v3_small fp32 [run {n}]**: ")]
    return line


def _markdown_rows(markdown: str, n: int) -> list[dict[str, str]]:
    """The results table under ``### mobilenet_v3_small fp32 [run n]``, as dicts by column."""
    section = markdown.split(f"### mobilenet_v3_small fp32 [run {n}]\n", 1)[1].split("\n###", 1)[0]
    table = [line for line in section.splitlines() if line.startswith("|")]
    header = [c.strip() for c in table[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in table[2:]]


def test_the_report_opens_with_a_headline_per_run(runs):
    documents, _, out = runs
    markdown = (out / "report.md").read_text()
    assert markdown.startswith(f"# {TITLE}\n\n## Summary\n")
    assert markdown.index("## Summary") < markdown.index("## Runs") < markdown.index("## Results")
    for n, document in enumerate(documents, start=1):
        line = _summary_line(markdown, n)
        reference, ort = _row(document, "pytorch"), _row(document, "onnxruntime")
        value, low, high = _expected_speedup(reference, ort)
        if low <= 1.0 <= high:
            assert f"onnxruntime as fast as PyTorch FP32 within noise ({value:.2f}x;" in line
        elif value >= 1:
            assert f"onnxruntime {value:.2f}x faster than PyTorch FP32" in line
        else:
            assert f"onnxruntime {1 / value:.2f}x slower than PyTorch FP32" in line
        assert f"{low:.2f}x-{high:.2f}x within " in line
        assert ("the rounds' p50 range" if n == 1 else "the p50..p90 spread") in line
        p50s = f"p50 {ort['latency'][0]['p50_ms']:.2f} ms vs {reference['latency'][0]['p50_ms']:.2f} ms at batch 1"
        assert p50s in line
        # random-init weights: no top-1, so the headline says why and gives the agreement with its interval
        acc = ort["accuracy"]
        assert acc["top1"] is None and "top-1 not applicable: random-init weights" in line
        lo, hi = acc["agreement_ci"]
        assert f"top-1 agreement with PyTorch FP32 {acc['agreement']:.1f}% (95% interval {lo:.1f}-{hi:.1f}%)" in line
        assert line.endswith(f"; {ort['size_mb']:.1f} MB")

    page = (out / "report.html").read_text()
    assert page.index('<section class="summary">') < page.index("<h2>Runs</h2>") < page.index("<h2>Results</h2>")
    assert "<strong>mobilenet_v3_small fp32 [run 1]</strong>: onnxruntime " in page


def test_the_image_set_is_named(runs):
    documents, _, out = runs
    described = describe_images(documents[0]["images"])
    assert described.startswith("bundled photos (7)") and describe_images(documents[1]["images"]) == described
    markdown, page = (out / "report.md").read_text(), (out / "report.html").read_text()
    assert f"Images: {described}" in markdown.split("## Runs")[0]  # once: both runs measured the same images
    assert f"<p>Images: {described}</p>" in page
    with open(out / "report.csv", newline="") as f:
        assert {r["images"] for r in csv.DictReader(f)} == {described}


def test_speedup_column_is_the_reference_p50_over_the_row_p50(runs):
    documents, _, out = runs
    markdown = (out / "report.md").read_text()
    with open(out / "report.csv", newline="") as f:
        csv_rows = list(csv.DictReader(f))
    for n, document in enumerate(documents, start=1):
        reference, ort = _row(document, "pytorch"), _row(document, "onnxruntime")
        value, low, high = _expected_speedup(reference, ort)
        rows = {r["backend"]: r for r in _markdown_rows(markdown, n)}
        assert set(rows) == {"pytorch (reference)", "onnxruntime"}
        assert rows["pytorch (reference)"]["speed-up"] == "reference"
        noise = " noise" if low <= 1.0 <= high else ""
        assert rows["onnxruntime"]["speed-up"] == f"{value:.2f}x [{low:.2f}, {high:.2f}]{noise}"
        assert rows["onnxruntime"]["p50 ms"] == f"{ort['latency'][0]['p50_ms']:.2f}"
        assert rows["onnxruntime"]["p90 ms"] == f"{ort['latency'][0]['p90_ms']:.2f}"
        [row] = [r for r in csv_rows if r["run_label"] == f"run {n}" and r["backend"] == "onnxruntime"]
        assert float(row["speedup_vs_pytorch"]) == pytest.approx(reference["latency"][0]["p50_ms"] / ort["latency"][0]["p50_ms"])
        assert (float(row["speedup_low"]), float(row["speedup_high"])) == pytest.approx((low, high))
        assert row["speedup_basis"] == ("rounds" if n == 1 else "p90") and row["reference"] == "False"
        [ref_row] = [r for r in csv_rows if r["run_label"] == f"run {n}" and r["backend"] == "pytorch"]
        assert ref_row["reference"] == "True" and float(ref_row["speedup_vs_pytorch"]) == 1.0


def test_latency_spread_is_in_the_tables(runs):
    documents, _, out = runs
    markdown = (out / "report.md").read_text()
    rounds = documents[0]["results"][1]["latency"][0]["p50_rounds"]
    assert len(rounds) == 3
    [ort] = [r for r in _markdown_rows(markdown, 1) if r["backend"] == "onnxruntime"]
    assert ort["p50 rounds ms"] == f"{min(rounds):.2f}-{max(rounds):.2f} (3 rounds)"
    # run 2 was timed in one round: no rounds column, its spread is p90 (and p99)
    assert "p50 rounds ms" not in _markdown_rows(markdown, 2)[0] and "p90 ms" in _markdown_rows(markdown, 2)[0]
    with open(out / "report.csv", newline="") as f:
        [row] = [r for r in csv.DictReader(f) if r["run_label"] == "run 1" and r["backend"] == "onnxruntime"]
    assert (int(row["p50_rounds"]), float(row["p50_rounds_min"]), float(row["p50_rounds_max"])) == (3, pytest.approx(min(rounds)), pytest.approx(max(rounds)))


def test_merged_runs_are_labelled_and_never_interleaved(runs):
    documents, paths, out = runs
    markdown = (out / "report.md").read_text()
    runs_section = markdown.split("## Runs\n", 1)[1].split("\n## ", 1)[0]
    for n, (document, repeats) in enumerate(zip(documents, REPEATS), start=1):
        label = f"- run {n}: {paths[n - 1]}; {document['created'].replace('T', ' ')}; `{_command(repeats)}`"  # the CLI names each file
        assert label in runs_section
        ort = _row(document, "onnxruntime")
        [row] = [r for r in _markdown_rows(markdown, n) if r["backend"] == "onnxruntime"]
        assert row["p50 ms"] == f"{ort['latency'][0]['p50_ms']:.2f}"  # each run's table holds that run's rows only
    with open(out / "report.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["run_label"] for r in rows] == ["run 1", "run 1", "run 2", "run 2"]
    assert [r["command"] for r in rows] == [_command(3), _command(3), _command(1), _command(1)]

    # given file names, the labels carry them
    named = write_report(documents, out.parent / "named", sources=[p.name for p in paths])
    text = named[0].read_text()
    assert "- run 1: run1.json; " in text and "- run 2: run2.json; " in text
    with open(out.parent / "named" / "report.csv", newline="") as f:
        assert [r["source"] for r in csv.DictReader(f)] == ["run1.json", "run1.json", "run2.json", "run2.json"]


def test_the_reference_is_marked_in_the_pareto_plot(runs):
    documents, _, out = runs
    entries = _collect_entries(_runs_of(documents), mixed_machines=False)
    points, use_top1 = _pareto_points(_with_references(entries, "onnxruntime"))
    assert not use_top1  # random-init: agreement with the reference
    references = [p for p in points if p.reference]
    assert [p.label for p in references] == ["mobilenet_v3_small fp32 [run 1] (reference)", "mobilenet_v3_small fp32 [run 2] (reference)"]
    assert [p.latency_ms for p in references] == [_row(d, "pytorch")["latency"][0]["p50_ms"] for d in documents]
    assert all(p.accuracy == 100.0 for p in references)  # the reference agrees with itself
    markdown = (out / "report.md").read_text()
    assert "![onnxruntime: accuracy vs batch-1 latency" in markdown and "the large star: the PyTorch FP32 reference](pareto_onnxruntime.png)" in markdown
    assert (out / "pareto_onnxruntime.png").read_bytes().startswith(b"\x89PNG")


def test_html_numbers_never_wrap(runs):
    documents, _, out = runs
    page = (out / "report.html").read_text()
    assert re.search(r"td\.num[^{]*\{[^}]*white-space: nowrap", page)
    kl = _row(documents[0], "onnxruntime")["accuracy"]["mean_kl"]
    assert f'<td class="num">{kl:.2e}</td>' in page  # an exponent, on one line
    plain = re.findall(r"<td>([^<]*)</td>", page.split("<h2>Results</h2>", 1)[1].split("<h2>", 1)[0])
    assert plain and set(plain) <= {"pytorch (reference)", "onnxruntime", "fp32"}  # only the backend and precision cells may wrap


# --------------------------------------------------------------------------- headline wording


def _bench_row(backend: str, p50: float, p90: float, accuracy: AccuracyStats, rounds=(), size_mb=None) -> BenchResult:
    return BenchResult(
        model="m", backend=backend, variant="int8", artifact_key="k", precision="fp32" if backend == "pytorch" else "int8",
        providers=(), threads=1, latency=(LatencyStats(1, 30, p50, p90, p90 * 1.1, p50, 1000 / p50, p50_rounds=rounds),),
        peak_rss_mb=100.0, size_mb=size_mb, accuracy=accuracy,
    )


def _accuracy(drop=None, drop_ci=None, top1=None) -> AccuracyStats:
    return AccuracyStats(images=500, top1=top1, top5=None, top1_drop=drop, agreement=97.0, mean_kl=0.01, max_abs_diff=0.2, top1_drop_ci=drop_ci)


def test_headline_calls_a_difference_inside_the_noise_noise():
    reference = _bench_row("pytorch", 10.0, 12.0, _accuracy(0.0, (0.0, 0.0), 70.0))
    same = _bench_row("onnxruntime", 9.5, 11.0, _accuracy(0.4, (-0.6, 1.4), 69.6), size_mb=18.63)
    text = headline([reference, same], reference)
    assert text.startswith("onnxruntime as fast as PyTorch FP32 within noise (1.05x; p50 9.50 ms vs 10.00 ms at batch 1; 0.91x-1.26x within the p50..p90 spread)")
    assert "; top-1 within noise (drop +0.4 points, 95% interval -0.6 to +1.4); 18.6 MB" in text


def test_headline_gives_a_real_speedup_and_a_drop_with_its_interval():
    reference = _bench_row("pytorch", 10.0, 10.5, _accuracy(0.0, (0.0, 0.0), 70.0), rounds=(9.9, 10.0, 10.2))
    fast = _bench_row("onnxruntime", 5.0, 5.5, _accuracy(2.1, (0.9, 3.4), 67.9), rounds=(4.9, 5.0, 5.1), size_mb=4.9)
    slower = _bench_row("openvino", 6.0, 6.5, _accuracy(0.0, (-1.0, 1.0), 70.0), rounds=(5.9, 6.0, 6.1), size_mb=4.9)
    text = headline([reference, slower, fast], reference)
    assert text == (
        "onnxruntime (the fastest of 2) 2.00x faster than PyTorch FP32 (p50 5.00 ms vs 10.00 ms at batch 1; "
        "1.94x-2.08x within the rounds' p50 range); top-1 drop 2.1 points (95% interval +0.9 to +3.4); 4.9 MB"
    )


def test_headline_without_a_reference_or_with_failures_says_so():
    row = _bench_row("onnxruntime", 5.0, 5.5, _accuracy(), size_mb=None)
    failed = BenchResult("m", "openvino", "int8", "k", "int8", (), 1, (), None, None, None, error="no device")
    text = headline([row, failed], None)
    assert text.startswith("fastest: onnxruntime, p50 5.00 ms at batch 1; no PyTorch FP32 reference in this run, so no speed-up")
    assert "top-1 not measured (no labels); top-1 agreement with PyTorch FP32 97.0%" in text
    assert text.endswith("file size not recorded; failed: openvino")
