"""`edgekit report` on results files with `edgekit profile`'s per-layer section: alone, beside
bench rows, for an INT8 artifact (its FP32 parent beside it) and an FP32 one."""

from __future__ import annotations

import copy
import json

import pytest

from conftest import assert_one_line_error, run_cli
from edgekit.backends import BackendOptions
from edgekit.core import AccuracyStats, BenchResult, DataError, LatencyStats
from edgekit.data import load_all, resolve_images
from edgekit.profiling import profile_artifact
from edgekit.results.document import load_results_document, results_document, write_json
from edgekit.results.site import write_report

MACHINE = {"cpu": "AMD EPYC", "logical_cores": 2, "os": "Linux 6.18", "machine": "x86_64", "python": "3.11.7"}
PNG = b"\x89PNG"


def _profile(artifact, backends, kl_by_module=None) -> dict:
    """The ``profile`` section `edgekit profile` writes, made by the same code on the tiny model."""
    x, _ = load_all(resolve_images(views_per_image=1, limit=2), artifact.preprocessing)
    found = profile_artifact(artifact, backends, BackendOptions(threads=1), x, 1, 5, 1, kl_by_module=kl_by_module, kl_images=8 if kl_by_module else 0)
    assert found.profiles and not found.unavailable
    return found.to_dict()


@pytest.fixture(scope="module")
def int8_profile(int8_artifact) -> dict:
    return _profile(int8_artifact, ("onnxruntime", "pytorch"), kl_by_module={"classifier.3": 1e-4})


@pytest.fixture(scope="module")
def fp32_profile(tiny_artifact) -> dict:
    return _profile(tiny_artifact, ("onnxruntime",))


def _profile_file(folder, section: dict, name: str):
    document = results_document([], command="edgekit profile tiny", machine=MACHINE, extra={"profile": section})
    return write_json(document, folder / name)


def _bench_rows() -> list[BenchResult]:
    def row(backend: str, precision: str, p50: float) -> BenchResult:
        return BenchResult(
            model="mobilenet_v3_small", backend=backend, variant="int8", artifact_key="abc", precision=precision,
            providers=(), threads=1, latency=(LatencyStats(1, 20, p50, p50 * 1.1, p50 * 1.2, p50, 1000 / p50),),
            peak_rss_mb=300.0, size_mb=None if backend == "pytorch" else 2.9,
            accuracy=AccuracyStats(images=16, top1=None, top5=None, top1_drop=None, agreement=100.0 if backend == "pytorch" else 93.8, mean_kl=0.01, max_abs_diff=0.5),
            environment={**MACHINE, "runtime": f"{backend} 1.0"},
        )

    return [row("pytorch", "fp32", 5.0), row("onnxruntime", "int8", 1.5)]


def _report(tmp_path, *files):
    out = tmp_path / "report"
    proc = run_cli("report", *map(str, files), "-o", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    return out, [line for line in proc.stdout.splitlines() if line]


def test_a_profile_only_file_gets_its_tables_and_a_plot_per_backend(tmp_path, int8_profile):
    path = _profile_file(tmp_path, int8_profile, "profile.json")
    out, written = _report(tmp_path, path)
    key = int8_profile["artifact"]
    plots = sorted(p for p in written if p.endswith(".png"))
    assert [p.rsplit("/", 1)[-1] for p in plots] == [
        f"profile_mobilenet_v3_small_int8_{key}_onnxruntime.png", f"profile_mobilenet_v3_small_int8_{key}_pytorch.png",
    ]
    assert all((out / p.rsplit("/", 1)[-1]).read_bytes().startswith(PNG) for p in plots)
    assert not (out / "report.csv").exists()  # no bench rows: nothing for the CSV

    text = (out / "report.md").read_text()
    assert f"## Per-layer profile: mobilenet_v3_small int8 [{key}]" in text
    assert "## Results" not in text and "report.csv" not in text
    assert "| module | runs as | ms | % | FP32 ms | INT8 saves ms | KL if only it is INT8 | also computes |" in text
    assert "onnxruntime: int8 as " in text and "pytorch: the FP32 original" in text
    assert "KL if only it is INT8: the model's mean KL vs FP32 on 8 calibration images" in text
    for name in ("onnxruntime", "pytorch"):
        assert f"](profile_mobilenet_v3_small_int8_{key}_{name}.png)" in text
    assert "each beside the FP32 parent's time" in text  # onnxruntime's plot pairs the INT8 and FP32 bars
    assert "AMD EPYC, 2 logical cores" in text and "edgekit profile tiny" in text

    page = (out / "report.html").read_text()
    assert page.count('<table class="profile">') == 2
    assert "<th>FP32 ms</th>" in page and "<th>KL if only it is INT8</th>" in page
    slowest = max((p for p in int8_profile["backends"][0]["prices"] if not p["module"].startswith("(")), key=lambda p: p["ms"])
    assert f"<td>{slowest['module']}</td><td>" in page
    for name in ("onnxruntime", "pytorch"):
        assert f'<img src="profile_mobilenet_v3_small_int8_{key}_{name}.png"' in page
    assert "<script" not in page and "://" not in page


def test_an_fp32_profile_plots_module_times_alone(tmp_path, fp32_profile):
    assert fp32_profile["backends"][0]["float"] is None
    out, written = _report(tmp_path, _profile_file(tmp_path, fp32_profile, "fp32.json"))
    assert [p.rsplit("/", 1)[-1] for p in written if p.endswith(".png")] == [f"profile_mobilenet_v3_small_fp32_{fp32_profile['artifact']}_onnxruntime.png"]
    text = (out / "report.md").read_text()
    assert "| module | runs as | ms | % | also computes |" in text
    assert "FP32 parent" not in text


def test_bench_rows_and_profiles_report_together(tmp_path, int8_profile, fp32_profile):
    bench = write_json(results_document(_bench_rows(), command="edgekit bench tiny --int8"), tmp_path / "bench.json")
    both = results_document(_bench_rows(), command="edgekit bench tiny --int8", extra={"profile": fp32_profile})
    out, written = _report(tmp_path, bench, _profile_file(tmp_path, int8_profile, "int8.json"), write_json(both, tmp_path / "both.json"))
    names = {p.rsplit("/", 1)[-1] for p in written}
    assert {"report.md", "report.csv", "report.html", "pareto_onnxruntime.png"} <= names
    assert sum(name.startswith("profile_") for name in names) == 3  # two backends of the INT8 profile, one of the FP32
    text = (out / "report.md").read_text()
    assert text.count("## Per-layer profile: ") == 2 and "## Results" in text and "## Plots" in text
    assert text.index("## Results") < text.index("## Per-layer profile") < text.index("## Plots")
    assert "Warning" not in text  # one machine
    page = (out / "report.html").read_text()
    # the bench rows: one model + variant in each of the two documents with bench rows, a table per run
    assert page.count('<table class="profile">') == 3 and page.count("<table>") == 2
    assert "<h3>mobilenet_v3_small int8 [run 1]</h3>" in page and "<h3>mobilenet_v3_small int8 [run 3]</h3>" in page
    with open(out / "report.csv") as f:
        assert len(f.readlines()) == 1 + 4  # header, two rows from each bench document


def test_the_same_profile_twice_gets_plots_of_its_own(tmp_path, fp32_profile):
    documents = [load_results_document(_profile_file(tmp_path, fp32_profile, name)) for name in ("a.json", "b.json")]
    names = [p.name for p in write_report(documents, tmp_path / "report") if p.suffix == ".png"]
    assert len(names) == 2 and len(set(names)) == 2


def test_profile_text_is_escaped_in_html(tmp_path, int8_profile):
    section = copy.deepcopy(int8_profile)
    slowest = max(section["backends"][0]["prices"], key=lambda p: p["ms"])
    slowest["module"] = "features.<b>|x"
    section["backends"][0]["note"] = "rows are <ONNX> nodes"
    write_report([results_document([], machine=MACHINE, extra={"profile": section})], tmp_path)
    page = (tmp_path / "report.html").read_text()
    assert "features.&lt;b&gt;|x" in page and "<b>" not in page
    assert "note: rows are &lt;ONNX&gt; nodes" in page
    text = (tmp_path / "report.md").read_text()
    assert "features.<b>\\|x" in text and "- note: onnxruntime: rows are <ONNX> nodes" in text


def test_neither_rows_nor_a_profile_is_still_a_data_error(tmp_path):
    for name, extra in (("empty.json", {}), ("null.json", {"profile": None})):
        write_json(results_document([], machine=MACHINE, extra=extra), tmp_path / name)
        assert_one_line_error(run_cli("report", name, cwd=tmp_path), "no results to report in 1 document(s)", code=2)
    with pytest.raises(DataError, match="no results to report"):
        write_report([results_document([], extra={"profile": None})], tmp_path)


def test_a_broken_profile_section_is_a_one_line_error(tmp_path, int8_profile):
    section = copy.deepcopy(int8_profile)
    section["backends"][1]["prices"][0]["ms"] = None
    del section["backends"][0]["sum_ms"]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(results_document([], machine=MACHINE, extra={"profile": section})))
    assert_one_line_error(run_cli("report", "bad.json", cwd=tmp_path), "bad.json", "profile.backends[0].sum_ms", "(and 1 more problem)", code=2)
