"""`edgekit check`'s judge: refusing vacuous checks, thresholds, the reference model judged
raw, missing reference cells, failed backends, and the behaviour that stays."""

from __future__ import annotations

import copy
import json
import math
import xml.etree.ElementTree as ET

import pytest

from conftest import assert_one_line_error, run_cli
from edgekit.core import AccuracyStats, BenchResult, EdgekitError, LatencyStats, UsageError
from edgekit.results.gate import GateError, check_threshold, compare, parse_percent, status_style, summary_rows, write_junit
from edgekit.results.document import results_document
from edgekit.results.document import WriteError, load_results_document, write_json_atomic

MACHINE = {"cpu": "AMD EPYC", "logical_cores": 2, "platform": "Linux-6.18-x86_64"}
OTHER_MACHINE = {"cpu": "Jetson Orin (ARMv8)", "logical_cores": 6, "platform": "Linux-5.15-aarch64"}
REF = "mobilenet_v2"
MODEL = "resnet18"
BATCHES = {1: 1.0, 8: 5.0}

# batch-1 p50 (ms) per model and variant
P50 = {(REF, "fp32"): 4.0, (REF, "int8"): 2.0, (MODEL, "fp32"): 10.0, (MODEL, "int8"): 5.0}
TOP1 = {(REF, "fp32"): 71.9, (REF, "int8"): 71.2, (MODEL, "fp32"): 69.8, (MODEL, "int8"): 69.1}


def _result(model: str, variant: str, backend: str = "onnxruntime", scale: float = 1.0, top1=None, machine=MACHINE) -> BenchResult:
    p50 = P50[(model, variant)] * scale
    top1 = TOP1[(model, variant)] if top1 is None else top1
    return BenchResult(
        model=model, backend=backend, variant=variant, artifact_key=f"{model}-{variant}", precision=variant,
        providers=(), threads=None,
        latency=tuple(LatencyStats(b, 50, p50 * s, p50 * s * 1.1, p50 * s * 1.3, p50 * s, b * 1000 / (p50 * s)) for b, s in BATCHES.items()),
        peak_rss_mb=300.0, size_mb=10.0,
        accuracy=AccuracyStats(112, top1, None, None, 98.0, 1e-3, 0.2),
        environment={**machine, "runtime": "onnxruntime 1.20"},
    )


IMAGES = {"description": "bundled photos (7) x 11 even views", "count": 77, "identity": "edcea9b808968d56"}


def _doc(results, reference=REF) -> dict:
    document = results_document(results, command="edgekit run tiny.toml", images=IMAGES, extra={"reference": reference})
    return json.loads(json.dumps(document))  # as a file holds it


def _run(scale=None, top1=None, machine=MACHINE, reference=REF, skip=()) -> dict:
    """Every (model, variant) on onnxruntime; scale/top1: {(model, variant): value}."""
    scale, top1 = scale or {}, top1 or {}
    return _doc(
        [_result(m, v, scale=scale.get((m, v), 1.0), top1=top1.get((m, v)), machine=machine) for m, v in P50 if (m, v) not in skip],
        reference,
    )


def _failed_row(model, variant, backend="onnxruntime", error="onnxruntime: CUDAExecutionProvider not available") -> dict:
    return {"model": model, "backend": backend, "variant": variant, "artifact_key": f"{model}-{variant}", "precision": "-",
            "providers": [], "threads": None, "latency": [], "peak_rss_mb": None, "size_mb": None, "accuracy": None,
            "environment": {}, "error": error}


def _finding(report, key, check):
    [f] = [f for f in report.findings if f.key == key and f.check == check]
    return f


def _statuses(report, check=None) -> dict:
    return {(f.key, f.check): f.status for f in report.findings if check is None or f.check == check}


# --------------------------------------------------------------------------- what stays


def test_identical_runs_pass_and_every_cell_is_judged():
    report = compare(_run(), _run(), 0.5, 0.10)
    assert report.passed
    assert len(report.findings) == len(P50) * len(BATCHES) * 2  # accuracy and latency for every cell
    ref = _finding(report, (REF, "fp32", "onnxruntime", 1), "latency")
    assert ref.status == "pass" and "yardstick" in ref.message and "not judged" not in ref.message
    other = _finding(report, (MODEL, "int8", "onnxruntime", 8), "latency")
    assert "relative to the reference: 2.500 -> 2.500" in other.message
    assert report.warnings == ()


def test_a_cell_slower_than_its_neighbours_fails_on_the_normalised_ratio():
    report = compare(_run(), _run(scale={(MODEL, "int8"): 1.5}), 0.5, 0.10)
    failed = {key for (key, check), status in _statuses(report, "latency").items() if status == "fail"}
    assert failed == {(MODEL, "int8", "onnxruntime", b) for b in BATCHES}
    assert "+50.0% relative to the reference" in _finding(report, (MODEL, "int8", "onnxruntime", 1), "latency").message
    assert not report.passed


def test_a_whole_machine_slower_keeps_every_ratio_but_the_yardstick_fails_raw():
    # a raw p50 cannot tell a slower machine from a slower model: inconclusive by default
    default = compare(_run(), _run(scale={k: 1.5 for k in P50}), 0.5, 0.10)
    assert all(status == "inconclusive" for (key, _), status in _statuses(default, "latency").items() if key[0] == REF)
    assert "--trust-raw-latency" in _finding(default, (REF, "fp32", "onnxruntime", 1), "latency").message
    report = compare(_run(), _run(scale={k: 1.5 for k in P50}), 0.5, 0.10, trust_raw_latency=True)
    statuses = _statuses(report, "latency")
    assert all(status == "pass" for (key, _), status in statuses.items() if key[0] == MODEL)
    assert all(status == "fail" for (key, _), status in statuses.items() if key[0] == REF)
    message = _finding(report, (REF, "fp32", "onnxruntime", 1), "latency").message
    assert "+50.0% raw p50" in message and "yardstick" in message
    assert not report.passed


def test_a_yardstick_within_the_allowance_passes():
    report = compare(_run(), _run(scale={(REF, "fp32"): 1.05, (REF, "int8"): 1.05}), 0.5, 0.10)
    assert _finding(report, (REF, "int8", "onnxruntime", 8), "latency").status == "pass"
    # the others moved relative to the yardstick by -4.8%: a pass too
    assert report.passed


def test_accuracy_drop_fails_on_top1_else_on_agreement():
    # 112 images without stored intervals: Wilson intervals from the counts, unpaired
    report = compare(_run(), _run(top1={(MODEL, "int8"): 40.0}), 0.5, 0.10)
    f = _finding(report, (MODEL, "int8", "onnxruntime", 1), "accuracy")
    assert f.status == "fail" and "top-1 69.10% -> 40.00% (-29.10 points; drop 95% interval +" in f.message
    assert "unpaired; views counted as independent" in f.message and "allowed -0.5)" in f.message
    assert not report.passed
    # 2.1 points on 112 images is not evidence of a drop beyond 0.5: inconclusive, and it passes
    report = compare(_run(), _run(top1={(MODEL, "int8"): 67.0}), 0.5, 0.10)
    f = _finding(report, (MODEL, "int8", "onnxruntime", 1), "accuracy")
    assert f.status == "inconclusive" and "the 0.5-point allowance is below what 112 images resolve" in f.message
    assert report.passed

    unlabelled = _run()
    worse = _run()
    for doc in (unlabelled, worse):
        for r in doc["results"]:
            r["accuracy"]["top1"] = None
    worse["results"][0]["accuracy"]["agreement"] = 40.0
    report = compare(unlabelled, worse, 0.5, 0.10)
    f = _finding(report, (REF, "fp32", "onnxruntime", 1), "accuracy")
    assert f.status == "fail" and "agreement with PyTorch" in f.message
    # the reference model's accuracy is judged like any other cell
    report = compare(_run(), _run(top1={(REF, "fp32"): 20.0}), 0.5, 0.10)
    assert _finding(report, (REF, "fp32", "onnxruntime", 1), "accuracy").status == "fail"


def test_new_and_missing_cells():
    fewer = _run(skip={(MODEL, "int8")})
    report = compare(_run(), fewer, 0.5, 0.10)
    missing = {f.key for f in report.findings if f.status == "missing"}
    assert missing == {(MODEL, "int8", "onnxruntime", b) for b in BATCHES} and not report.passed
    report = compare(fewer, _run(), 0.5, 0.10)
    assert {f.key for f in report.findings if f.status == "new"} == missing and report.passed


def test_without_a_reference_raw_p50s_are_compared_with_a_warning():
    report = compare(_run(reference=None), _run(reference=None, scale={(MODEL, "fp32"): 1.3}), 0.5, 0.10, trust_raw_latency=True)
    f = _finding(report, (MODEL, "fp32", "onnxruntime", 1), "latency")
    assert f.status == "fail" and "+30.0% raw p50 (one round per run: the verdict rests on a single round" in f.message
    assert "allowed +10%" in f.message
    assert any("compared as raw p50s" in w for w in report.warnings)


def test_other_machines_are_warned_about_and_the_yardstick_warning_says_why():
    report = compare(_run(), _run(machine=OTHER_MACHINE), 0.5, 0.10)
    assert any("different machines" in w and "cpu: AMD EPYC vs Jetson Orin (ARMv8)" in w for w in report.warnings)
    assert any("compared as raw p50s and the runs come from different machines" in w for w in report.warnings)
    same = compare(_run(), _run(), 0.5, 0.10)
    assert not any("machines" in w for w in same.warnings)


def test_reference_names_that_disagree_use_the_new_one_with_a_warning():
    baseline = _run()
    new = _run(reference=MODEL)
    report = compare(baseline, new, 0.5, 0.10)
    assert any(f"the baseline names reference model {REF!r} and the new results {MODEL!r}" in w for w in report.warnings)
    assert "yardstick" in _finding(report, (MODEL, "fp32", "onnxruntime", 1), "latency").message
    # --reference wins over both documents
    report = compare(baseline, new, 0.5, 0.10, reference=REF)
    assert "yardstick" in _finding(report, (REF, "fp32", "onnxruntime", 1), "latency").message
    assert not any("names reference model" in w for w in report.warnings)


def test_cells_listed_twice_are_refused():
    new = _run()
    new["results"].append(copy.deepcopy(new["results"][0]))
    with pytest.raises(GateError, match=r"the new results has cell .* more than once \(results\[0\] and results\[4\]\)"):
        compare(_run(), new, 0.5, 0.10)


# --------------------------------------------------------------------------- refusing to pass vacuously


def test_an_empty_baseline_is_refused():
    with pytest.raises(GateError, match="the baseline has no results") as info:
        compare(_doc([]), _run(), 0.5, 0.10)
    assert info.value.exit_code == 2 and isinstance(info.value, EdgekitError)
    only_failed = _doc([])
    only_failed["results"] = [_failed_row(REF, "fp32")]
    with pytest.raises(GateError, match="the baseline has no timed results"):
        compare(only_failed, _run(), 0.5, 0.10)


def test_a_new_file_with_nothing_in_it_is_refused():
    with pytest.raises(GateError, match="the new results file has no timed results"):
        compare(_run(), _doc([]), 0.5, 0.10)


def test_no_cell_in_common_is_refused():
    other_backend = _run()
    for r in other_backend["results"]:
        r["backend"] = "openvino"
    with pytest.raises(GateError, match=r"no cell of the new results matches a cell of the baseline .*new: mobilenet_v2 fp32 openvino b1") as info:
        compare(_run(), other_backend, 0.5, 0.10)
    assert info.value.exit_code == 2 and "\n" not in str(info.value)


def test_a_reference_in_neither_run_is_refused():
    with pytest.raises(GateError, match="reference model 'mobilenet_v3' is in neither run"):
        compare(_run(), _run(), 0.5, 0.10, reference="mobilenet_v3")


# --------------------------------------------------------------------------- thresholds


@pytest.mark.parametrize("text", ["nan", "NaN%", "inf", "Infinity", "-inf", "-5%", "-0.1", "abc", "", "  ", "%", "10%%", None])
def test_bad_latency_allowances_are_rejected(text):
    with pytest.raises(ValueError):
        parse_percent(text)


@pytest.mark.parametrize("text, expected", [("10%", 0.10), ("0.1", 0.10), ("25", 0.25), (" 5 % ", 0.05), ("0", 0.0), ("0%", 0.0), ("150%", 1.5)])
def test_latency_allowances_parse(text, expected):
    assert parse_percent(text) == pytest.approx(expected)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, -0.5, "abc", None, True, "nan"])
def test_bad_thresholds_are_usage_errors(value):
    with pytest.raises(UsageError, match="--max-top1-drop: expected a finite number >= 0") as info:
        check_threshold(value, "--max-top1-drop")
    assert info.value.exit_code == 2


def test_thresholds_are_checked_by_compare_too():
    assert check_threshold(0, "x") == 0.0 and check_threshold("0.5", "x") == 0.5
    with pytest.raises(UsageError, match="--max-top1-drop"):
        compare(_run(), _run(), math.nan, 0.10)
    with pytest.raises(UsageError, match="--max-latency-regression"):
        compare(_run(), _run(), 0.5, math.inf)


# --------------------------------------------------------------------------- missing reference cells


def test_a_reference_cell_missing_in_the_new_run_fails_the_cells_that_need_it():
    new = _run(skip={(REF, "int8")})  # the FP32 reference cell must not stand in
    report = compare(_run(), new, 0.5, 0.10)
    f = _finding(report, (MODEL, "int8", "onnxruntime", 1), "latency")
    assert f.status == "fail"
    assert f.message.startswith("reference cell mobilenet_v2 int8 onnxruntime b1 missing in the new run")
    assert _finding(report, (MODEL, "int8", "onnxruntime", 1), "accuracy").status != "fail"  # inconclusive on 112 images
    assert _finding(report, (MODEL, "fp32", "onnxruntime", 1), "latency").status == "pass"
    assert not report.passed


def test_a_reference_cell_missing_in_the_baseline_or_both():
    report = compare(_run(skip={(REF, "int8")}), _run(), 0.5, 0.10)
    f = _finding(report, (MODEL, "int8", "onnxruntime", 8), "latency")
    assert f.status == "fail" and "reference cell mobilenet_v2 int8 onnxruntime b8 missing in the baseline" in f.message
    report = compare(_run(skip={(REF, "int8")}), _run(skip={(REF, "int8")}), 0.5, 0.10)
    f = _finding(report, (MODEL, "int8", "onnxruntime", 8), "latency")
    assert f.status == "fail" and "missing in both runs" in f.message


def test_a_reference_batch_missing_fails_only_that_batch():
    new = _run()
    for r in new["results"]:
        if r["model"] == REF:
            r["latency"] = [s for s in r["latency"] if s["batch_size"] == 1]
    report = compare(_run(), new, 0.5, 0.10)
    assert _finding(report, (MODEL, "fp32", "onnxruntime", 1), "latency").status == "pass"
    assert "reference cell mobilenet_v2 fp32 onnxruntime b8 missing in the new run" in _finding(report, (MODEL, "fp32", "onnxruntime", 8), "latency").message


# --------------------------------------------------------------------------- failed backends


def test_a_failed_backend_in_the_new_run_fails_every_cell_of_its_row():
    baseline = _run()
    baseline["results"].append(_result(MODEL, "fp32", backend="openvino").to_dict())
    baseline = json.loads(json.dumps(baseline))
    new = _run()
    new["results"].append(_failed_row(MODEL, "fp32", backend="openvino", error="openvino: device GPU not found"))
    report = compare(baseline, new, 0.5, 0.10)
    run = [f for f in report.findings if f.key[2] == "openvino"]
    assert {(f.key, f.check, f.status, f.message) for f in run} == {
        ((MODEL, "fp32", "openvino", b), "run", "fail", "openvino: device GPU not found") for b in BATCHES
    }
    assert not report.passed and report.findings[0].status == "fail"
    assert ("FAIL", f"{MODEL} fp32 openvino b1", "run", "openvino: device GPU not found") in summary_rows(report)


def test_a_failed_backend_not_in_the_baseline_still_fails():
    new = _run()
    new["results"].append(_failed_row(MODEL, "fp32", backend="tensorrt", error="tensorrt is not installed"))
    report = compare(_run(), new, 0.5, 0.10)
    assert {f.key for f in report.findings if f.check == "run"} == {(MODEL, "fp32", "tensorrt", b) for b in BATCHES}
    assert not report.passed


def test_a_failed_reference_fails_its_cells_and_the_cells_that_need_it():
    new = _run(skip={(REF, "int8")})
    new["results"].append(_failed_row(REF, "int8", error="int8 kernel crashed"))
    report = compare(_run(), new, 0.5, 0.10)
    assert _finding(report, (REF, "int8", "onnxruntime", 1), "run").message == "int8 kernel crashed"
    f = _finding(report, (MODEL, "int8", "onnxruntime", 1), "latency")
    assert f.status == "fail" and "missing in the new run (it failed in the new run: int8 kernel crashed)" in f.message


def test_a_failed_backend_in_the_baseline_makes_its_cells_new():
    baseline = _run(skip={(MODEL, "int8")})
    baseline["results"].append(_failed_row(MODEL, "int8"))
    report = compare(baseline, _run(), 0.5, 0.10)
    assert {f.key for f in report.findings if f.status == "new"} == {(MODEL, "int8", "onnxruntime", b) for b in BATCHES}
    assert report.passed


# --------------------------------------------------------------------------- output


def test_junit_counts_failures_and_is_written_atomically(tmp_path):
    new = _run(top1={(MODEL, "int8"): 20.0})
    new["results"].append(_failed_row(MODEL, "fp32", backend="openvino"))
    report = compare(_run(), new, 0.5, 0.10)
    path = write_junit(report, tmp_path / "ci" / "junit.xml")
    suite = ET.parse(path).getroot()
    assert suite.get("failures") == str(2 + len(BATCHES)) and int(suite.get("tests")) == len(report.findings)
    assert {c.get("classname") for c in suite.iter("testcase")} >= {"edgekit.run", "edgekit.accuracy", "edgekit.latency"}
    assert [p.name for p in (tmp_path / "ci").iterdir()] == ["junit.xml"]
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(WriteError, match=r"^cannot write .*a-file/junit.xml: "):
        write_junit(report, blocker / "junit.xml")


@pytest.mark.parametrize("status, style", [("FAIL", "red"), ("fail", "red"), ("MISSING", "red"), ("NEW", "yellow"), ("INCONCLUSIVE", "yellow"), ("PASS", "green"), ("other", "")])
def test_status_styles(status, style):
    assert status_style(status) == style


# --------------------------------------------------------------------------- with the loader, and through the CLI


def test_loaded_documents_with_intervals_and_failed_rows_compare(tmp_path):
    baseline, new = _run(), _run()
    for r in new["results"]:
        r["accuracy"]["top1_ci"] = [r["accuracy"]["top1"] - 1.0, r["accuracy"]["top1"] + 1.0]
        r["latency"][0]["p999_ms"] = 99.0
    new["results"].append(_failed_row(MODEL, "fp32", backend="openvino"))
    write_json_atomic(baseline, tmp_path / "base.json")
    write_json_atomic(new, tmp_path / "new.json")
    report = compare(load_results_document(tmp_path / "base.json"), load_results_document(tmp_path / "new.json"), 0.5, 0.10)
    assert {f.check for f in report.findings if f.status == "fail"} == {"run"}


def _write(tmp_path, name, document):
    (tmp_path / name).write_text(json.dumps(document))
    return name


def test_cli_refuses_an_empty_baseline_and_unmatched_runs_with_exit_2(tmp_path):
    new = _write(tmp_path, "new.json", _run())
    empty = _write(tmp_path, "empty.json", _doc([]))
    proc = run_cli("check", new, "--baseline", empty, cwd=tmp_path)
    assert_one_line_error(proc, "the baseline has no results", code=2)
    assert "check passed" not in proc.stdout + proc.stderr
    other = _run()
    for r in other["results"]:
        r["model"] = "efficientnet_lite0" + r["model"]  # distinct: duplicate cells are refused first
    other["reference"] = None
    proc = run_cli("check", _write(tmp_path, "other.json", other), "--baseline", new, cwd=tmp_path)
    assert_one_line_error(proc, "no cell of the new results matches a cell of the baseline", code=2)


@pytest.mark.parametrize("flag, value", [("--max-latency-regression", "nan"), ("--max-latency-regression", "inf"), ("--max-latency-regression", "-5%"), ("--max-top1-drop", "nan"), ("--max-top1-drop", "inf")])
def test_cli_rejects_non_finite_thresholds(tmp_path, flag, value):
    new = _write(tmp_path, "new.json", _run())
    proc = run_cli("check", new, "--baseline", new, flag, value, cwd=tmp_path)
    assert_one_line_error(proc, flag, code=2)
