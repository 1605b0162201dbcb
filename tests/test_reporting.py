"""The report folder: CSV numbers, pages, plots, mixed machines, empty input."""

from __future__ import annotations

import csv

import pytest

from edgekit.core import AccuracyStats, BenchResult, DataError, LatencyStats
from edgekit.results.document import results_document
from edgekit.results.site import pareto_front, write_report

MACHINE = {"cpu": "AMD EPYC", "logical_cores": 2, "os": "Linux 6.18", "machine": "x86_64", "python": "3.11.7"}
OTHER_MACHINE = {**MACHINE, "cpu": "Intel Xeon", "logical_cores": 8}
BACKENDS = ("pytorch", "onnxruntime", "openvino")
BATCH_SCALING = {1: 1.0, 8: 5.5}  # batch-8 p50 relative to batch 1

# batch-1 p50 in ms per (model, variant) and backend; pytorch always runs the FP32 original
P50_MS = {
    ("efficientnet_lite0", "fp32"): {"pytorch": 14.2, "onnxruntime": 7.6, "openvino": 5.9},
    ("efficientnet_lite0", "int8"): {"pytorch": 14.0, "onnxruntime": 4.1, "openvino": 2.8},
    ("mobilenet_v3_small", "fp32"): {"pytorch": 5.2, "onnxruntime": 1.9, "openvino": 1.4},
    ("mobilenet_v3_small", "int8"): {"pytorch": 5.3, "onnxruntime": 1.3, "openvino": 0.9},
}
TOP1 = {
    ("efficientnet_lite0", "fp32"): 83.9,
    ("efficientnet_lite0", "int8"): 82.1,
    ("mobilenet_v3_small", "fp32"): 67.0,
    ("mobilenet_v3_small", "int8"): 63.4,
}
SIZE_MB = {
    ("efficientnet_lite0", "fp32"): {"onnxruntime": 18.56, "openvino": 18.66},
    ("efficientnet_lite0", "int8"): {"onnxruntime": 5.12, "openvino": 5.12},
    ("mobilenet_v3_small", "fp32"): {"onnxruntime": 10.17, "openvino": 10.17},
    ("mobilenet_v3_small", "int8"): {"onnxruntime": 2.93, "openvino": 2.93},
}


def _latency(batch_size: int, p50_ms: float) -> LatencyStats:
    return LatencyStats(batch_size, 50, p50_ms, p50_ms * 1.08, p50_ms * 1.3, p50_ms * 1.02, batch_size * 1000 / (p50_ms * 1.02))


def _accuracy(model: str, variant: str, backend: str, labelled: bool) -> AccuracyStats:
    original = TOP1[(model, "fp32")]
    top1 = original if backend == "pytorch" else TOP1[(model, variant)]
    same = backend == "pytorch" or variant == "fp32"
    return AccuracyStats(
        images=112,
        top1=top1 if labelled else None,
        top5=min(top1 + 14, 100.0) if labelled else None,
        top1_drop=original - top1 if labelled else None,
        agreement=100.0 if same else 94.6,
        mean_kl=0.0 if backend == "pytorch" else (1.5e-12 if same else 1.2e-2),
        max_abs_diff=0.0 if backend == "pytorch" else (1.1e-5 if same else 0.9),
    )


def _precision(variant: str, backend: str) -> str:
    if backend == "pytorch":
        return "fp32"
    if backend == "openvino":
        return f"{variant} (OpenVINO CPU inference precision f32)"
    return variant


def _result(model: str, variant: str, backend: str, machine: dict, labelled: bool) -> BenchResult:
    p50 = P50_MS[(model, variant)][backend]
    return BenchResult(
        model=model,
        backend=backend,
        variant=variant,  # a bench run labels every row, PyTorch's included, with the artifact's variant
        artifact_key=f"{model[:6]}{variant}",
        precision=_precision(variant, backend),
        providers=("CPUExecutionProvider",) if backend == "onnxruntime" else (),
        threads=None,
        latency=tuple(_latency(b, p50 * scale) for b, scale in BATCH_SCALING.items()),
        peak_rss_mb=900.0 if backend == "pytorch" else 400.0,
        size_mb=SIZE_MB[(model, variant)].get(backend),
        accuracy=_accuracy(model, variant, backend, labelled),
        environment={**machine, "runtime": f"{backend} 1.0"},
    )


def _document(model: str, variant: str, machine: dict = MACHINE, backends=BACKENDS, labelled: bool = True) -> dict:
    results = [_result(model, variant, b, machine, labelled) for b in backends]
    return results_document(results, command=f"edgekit bench {model} --variant {variant}")


def _all_documents(**kwargs) -> list[dict]:
    return [_document(model, variant, **kwargs) for model, variant in P50_MS]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("report")
    return out_dir, write_report(_all_documents(), out_dir, title="CPU <bench>")


def test_writes_pages_csv_and_plots(report):
    out_dir, paths = report
    names = {p.name for p in paths}
    assert names == {
        "report.md", "report.csv", "report.html",
        "pareto_onnxruntime.png", "pareto_openvino.png", "speedup.png", "size.png",
    }
    assert all(p.parent == out_dir and p.stat().st_size > 0 for p in paths)
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in paths if p.suffix == ".png")


def test_csv_has_a_row_per_result_and_batch_with_speedups(report):
    out_dir, _ = report
    with open(out_dir / "report.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(P50_MS) * len(BACKENDS) * len(BATCH_SCALING)
    [row] = [r for r in rows if (r["model"], r["variant"], r["backend"], r["batch"]) == ("efficientnet_lite0", "int8", "onnxruntime", "8")]
    assert float(row["speedup_vs_pytorch"]) == pytest.approx(14.0 / 4.1)
    assert float(row["top1_drop"]) == pytest.approx(83.9 - 82.1)
    assert row["machine_cpu"] == "AMD EPYC" and row["created"]
    baseline = [r for r in rows if r["backend"] == "pytorch"]
    assert all(r["size_mb"] == "" and float(r["speedup_vs_pytorch"]) == pytest.approx(1.0) for r in baseline)


def test_html_is_self_contained_with_tables_and_images(report):
    out_dir, paths = report
    page = (out_dir / "report.html").read_text()
    assert "<title>CPU &lt;bench&gt;</title>" in page
    assert page.count("<table>") == len(P50_MS)  # one table per model + variant
    assert "<th>p50 ms</th>" in page and "<td>onnxruntime</td>" in page
    for png in (p for p in paths if p.suffix == ".png"):
        assert f'<img src="{png.name}"' in page
    assert "<script" not in page and "://" not in page


def test_markdown_embeds_table_machine_and_images(report):
    out_dir, paths = report
    text = (out_dir / "report.md").read_text()
    assert text.startswith("# CPU <bench>")
    assert "AMD EPYC, 2 logical cores" in text and "| backend | precision |" in text
    for png in (p for p in paths if p.suffix == ".png"):
        assert f"]({png.name})" in text
    assert "Warning" not in text


@pytest.mark.parametrize(
    "points, expected",
    [
        ([(1.0, 70.0), (2.0, 80.0), (3.0, 75.0), (0.5, 60.0), (2.5, 80.0)], [(0.5, 60.0), (1.0, 70.0), (2.0, 80.0)]),
        ([(2.0, 50.0), (1.0, 50.0), (1.0, 50.0)], [(1.0, 50.0)]),  # ties: faster wins, duplicates once
        ([], []),
    ],
)
def test_pareto_front_keeps_only_undominated_points(points, expected):
    assert pareto_front(points) == expected


def test_mixed_machines_still_report_with_a_warning(tmp_path):
    documents = [_document("mobilenet_v3_small", "fp32"), _document("mobilenet_v3_small", "fp32", machine=OTHER_MACHINE)]
    with pytest.warns(UserWarning, match="2 different machines"):
        paths = write_report(documents, tmp_path)
    assert (tmp_path / "report.csv") in paths
    assert "Warning:" in (tmp_path / "report.md").read_text()
    assert 'class="warning"' in (tmp_path / "report.html").read_text()


def test_unlabelled_images_without_pytorch_skip_the_speedup_plot(tmp_path):
    documents = _all_documents(backends=("onnxruntime",), labelled=False)
    names = {p.name for p in write_report(documents, tmp_path)}
    assert "pareto_onnxruntime.png" in names and "speedup.png" not in names
    with open(tmp_path / "report.csv", newline="") as f:
        assert all(r["top1"] == "" and r["speedup_vs_pytorch"] == "" for r in csv.DictReader(f))


def test_no_results_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="no results to report"):
        write_report([results_document([])], tmp_path)
    with pytest.raises(DataError, match="no results to report"):
        write_report([], tmp_path)
