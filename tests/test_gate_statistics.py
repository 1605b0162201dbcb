"""`edgekit check` on the evidence: the drop's 95% interval (paired through the PyTorch
original, else unpaired), what the images cannot resolve, image sets that differ, latency
beyond the rounds' noise. Built on one real `edgekit bench` document (a small real model
on the bundled photos, 3 rounds), plus synthetic figures for the statistics alone."""

from __future__ import annotations

import copy
import json
import math
import xml.etree.ElementTree as ET

import pytest

from conftest import assert_one_line_error, run_cli
from edgekit.results.document import load_results_document
from edgekit.results.gate import (
    DEFAULT_NOISE_FLOOR, GateError, accuracy_drop, check_image_sets, compare, image_sets, newcombe, rounds_noise, t95, write_junit,
)

BENCH = ("--backend", "onnxruntime", "--repeats", "3", "--iterations", "5", "--warmup", "1", "--max-seconds", "1", "--power", "off")


@pytest.fixture(scope="module")
def bench(tiny_artifact, tmp_path_factory):
    """One real bench run: (its folder, the document as written)."""
    folder = tmp_path_factory.mktemp("gate-statistics")
    proc = run_cli("bench", str(tiny_artifact.path), *BENCH, "--json", "base.json", cwd=folder)
    assert proc.returncode == 0, proc.stderr
    return folder, json.loads((folder / "base.json").read_text())


def _write(folder, name, document) -> str:
    (folder / name).write_text(json.dumps(document))
    return name


def _row(document, backend="onnxruntime") -> dict:
    [row] = [r for r in document["results"] if r["backend"] == backend]
    return row


def _findings(report, check):
    return [f for f in report.findings if f.check == check]


# --------------------------------------------------------------------------- a real document


def test_the_real_document_holds_what_the_gate_reads(bench):
    _, document = bench
    row = _row(document)
    assert document["images"]["identity"] and document["images"]["count"] == 77
    assert len(row["latency"][0]["p50_rounds"]) == 3
    accuracy = row["accuracy"]
    assert accuracy["agreement_ci"] and accuracy["top1"] is None  # random-init weights: agreement with PyTorch is judged


def test_the_same_run_passes_and_says_the_allowance_is_below_what_77_images_resolve(bench, tmp_path):
    folder, _ = bench
    proc = run_cli("check", str(folder / "base.json"), "--baseline", str(folder / "base.json"), "--junit", "j.xml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "INCONCLUSIVE" in proc.stdout and "FAIL" not in proc.stdout
    report = compare(load_results_document(folder / "base.json"), load_results_document(folder / "base.json"), 0.5, 0.10)
    [acc] = _findings(report, "accuracy")
    assert acc.status == "inconclusive" and "the 0.5-point allowance is below what 77 images (7 photos) resolve (±" in acc.message
    assert "agreement with PyTorch" in acc.message and "judged inconclusive (exit 0)" in acc.message
    [lat] = _findings(report, "latency")
    assert lat.status == "pass" and "3 rounds per run: noise ±" in lat.message
    assert "check passed (1 finding(s) inconclusive" in proc.stderr
    suite = ET.parse(tmp_path / "j.xml").getroot()
    assert suite.get("failures") == "0"
    assert any((e.text or "").startswith("INCONCLUSIVE: agreement with PyTorch") for e in suite.iter("system-out"))


def test_a_real_accuracy_collapse_fails(bench, tmp_path):
    folder, document = bench
    worse = copy.deepcopy(document)
    accuracy = _row(worse)["accuracy"]
    accuracy["agreement"], accuracy["agreement_ci"] = 0.0, [0.0, 4.75]  # as a broken model's row holds it
    proc = run_cli("check", _write(tmp_path, "worse.json", worse), "--baseline", str(folder / "base.json"), cwd=tmp_path)
    assert_one_line_error(proc, "1 regression(s)", "accuracy", code=1)
    assert "FAIL" in proc.stdout


def test_other_images_are_refused_in_one_line_unless_allowed(bench, tmp_path):
    folder, document = bench
    other = copy.deepcopy(document)
    other["images"].update(identity="0123456789abcdef", description="bundled photos (3) x 11 even views", count=33)
    new = _write(tmp_path, "other.json", other)
    proc = run_cli("check", new, "--baseline", str(folder / "base.json"), cwd=tmp_path)
    line = assert_one_line_error(proc, "the baseline was evaluated on bundled photos (7) x 11 even views", "--allow-different-images", code=2)
    assert "bundled photos (3) x 11 even views (image set 0123456789abcdef)" in line
    allowed = run_cli("check", new, "--baseline", str(folder / "base.json"), "--allow-different-images", cwd=tmp_path)
    assert allowed.returncode == 0, allowed.stderr
    assert "warning: the runs used different images" in allowed.stderr


def _scaled(document, factor, rounds=True, keep_rounds=None) -> dict:
    out = copy.deepcopy(document)
    for stats in _row(out)["latency"]:
        stats["p50_ms"] *= factor
        if keep_rounds is not None:
            stats["p50_rounds"] = keep_rounds
        elif rounds:
            stats["p50_rounds"] = [x * factor for x in stats["p50_rounds"]]
    return out


def test_latency_fails_beyond_the_rounds_noise_only(bench):
    _, document = bench
    tight = [1.0, 1.01, 0.99]
    base = _scaled(document, 1.0, keep_rounds=tight)
    slower = _scaled(base, 1.5)
    [f] = _findings(compare(base, slower, 0.5, 0.10, trust_raw_latency=True), "latency")
    assert f.status == "fail" and "+50.0% raw p50" in f.message and "slower beyond the noise" in f.message
    # by default a raw p50 is at most inconclusive: load between runs moves it, and no round sees that
    [f] = _findings(compare(base, slower, 0.5, 0.10), "latency")
    assert f.status == "inconclusive" and "which no round sees" in f.message
    # the same slowdown where the rounds move by half: above the allowance, not beyond the noise
    noisy = _scaled(document, 1.0, keep_rounds=[1.0, 1.5, 0.7])
    [f] = _findings(compare(noisy, _scaled(noisy, 1.5), 0.5, 0.10), "latency")
    assert f.status == "inconclusive" and "within the noise, judged inconclusive (exit 0)" in f.message
    # within the noise floor
    [f] = _findings(compare(base, _scaled(base, 1.08), 0.5, 0.10), "latency")
    assert f.status == "pass" and f"floor {DEFAULT_NOISE_FLOOR:.0%} applies" in f.message


def test_latency_from_one_round_says_so(bench):
    _, document = bench
    one = _scaled(document, 1.0, keep_rounds=[])
    [f] = _findings(compare(one, _scaled(one, 1.05, rounds=False), 0.5, 0.10), "latency")
    assert f.status == "pass" and "the verdict rests on a single round, within the 10% noise floor" in f.message
    [f] = _findings(compare(one, _scaled(one, 1.4, rounds=False), 0.5, 0.10, trust_raw_latency=True), "latency")
    assert f.status == "fail" and "single round, beyond the 10% noise floor" in f.message
    [f] = _findings(compare(one, _scaled(one, 1.15, rounds=False), 0.5, 0.10, latency_noise_floor=0.0, trust_raw_latency=True), "latency")
    assert f.status == "fail"  # no floor: one round judged at face value


def test_the_noise_floor_is_checked(bench):
    _, document = bench
    with pytest.raises(Exception, match="--latency-noise-floor"):
        compare(document, document, 0.5, 0.10, latency_noise_floor=math.nan)


# --------------------------------------------------------------------------- the statistics


LITE0 = {"images": 77, "files": 7, "top1": 79.22, "top1_ci": [56.06, 91.93], "top1_drop": 0.0, "top1_drop_ci": [-4.75, 4.75],
         "agreement": 100.0, "agreement_ci": [95.25, 100.0]}
PRUNED = {"images": 77, "files": 7, "top1": 0.0, "top1_ci": [0.0, 4.75], "top1_drop": 79.22, "top1_drop_ci": [47.17, 91.93],
          "agreement": 0.0, "agreement_ci": [0.0, 4.75]}


def test_paired_through_the_pytorch_original():
    name, old, new, drop = accuracy_drop(LITE0, PRUNED, same_images=True)
    assert name == "top-1" and "paired" in drop.method
    assert drop.estimate == pytest.approx(79.22)
    assert drop.low == pytest.approx(79.22 - math.hypot(79.22 - 47.17, 4.75), abs=1e-6) and drop.low > 40
    # the same run: centred on zero, as wide as the two paired intervals combined
    _, _, _, same = accuracy_drop(LITE0, LITE0, same_images=True)
    assert same.estimate == 0 and same.half_width == pytest.approx(math.hypot(4.75, 4.75))


def test_unpaired_when_images_or_the_pytorch_original_differ():
    _, _, _, drop = accuracy_drop(LITE0, PRUNED, same_images=False)
    assert drop.method == "unpaired"
    assert (drop.low, drop.high) == pytest.approx(newcombe(79.22, (56.06, 91.93), 0.0, (0.0, 4.75)))
    other_original = {**PRUNED, "top1_drop": 70.0, "top1_drop_ci": [40.0, 85.0]}  # PyTorch at 70%: another original
    assert accuracy_drop(LITE0, other_original, same_images=True)[3].method == "unpaired"


def test_a_stale_or_missing_interval_is_recomputed_from_the_counts():
    stale = {**PRUNED, "top1_ci": [50.0, 60.0], "top1_drop_ci": None}  # does not hold top-1 = 0
    _, _, _, drop = accuracy_drop(LITE0, stale, same_images=True)
    assert "independent" in drop.method and drop.low > 0.5
    assert accuracy_drop({"top1": None}, {"top1": None}, True) is None


@pytest.mark.parametrize("estimate, half, status", [(0.0, 0.2, "pass"), (2.0, 0.5, "fail"), (0.4, 0.3, "inconclusive"), (0.0, 3.0, "inconclusive")])
def test_three_outcomes_by_where_the_interval_lies(estimate, half, status):
    from edgekit.results.gate import Cell, _accuracy

    def cell(acc):
        return Cell(("m", "fp32", "onnxruntime", 1), 1.0, acc.get("top1"), None, accuracy=acc)

    base = {"images": 50000, "top1": 80.0, "top1_ci": [80.0 - half / math.sqrt(2), 80.0 + half / math.sqrt(2)]}
    new = {"images": 50000, "top1": 80.0 - estimate, "top1_ci": [80.0 - estimate - half / math.sqrt(2), 80.0 - estimate + half / math.sqrt(2)]}
    finding = _accuracy(("m", "fp32", "onnxruntime", 1), cell(base), cell(new), 0.5)
    assert finding.status == status, finding.message
    if status == "inconclusive":
        assert ("below what 50000 images resolve" in finding.message) == (half > 0.5)


def test_rounds_noise_and_t_quantiles():
    assert rounds_noise([((1.0,), (1.0, 1.1))]) is None  # one round in a run: the floor decides
    half, rounds = rounds_noise([((10.0, 10.1, 9.9), (10.0, 10.1, 9.9))])
    assert rounds == 3 and 0 < half < 0.05
    assert rounds_noise([((10.0, 13.0), (10.0, 13.0)), ((5.0, 5.0), (5.0, 5.0))])[0] > half
    assert t95(4) == pytest.approx(2.776) and t95(11) == pytest.approx(2.228) and t95(1000) == 1.96 and t95(0) == math.inf


def test_image_sets_of_a_ray_document_and_documents_without_one():
    ray = {"images": None, "cluster": {"units": [{"images": {"identity": "a1", "description": "photos"}}, {"state": "failed"}]}}
    assert image_sets(ray) == {"a1": "photos"}
    same, warnings = check_image_sets(ray, {"images": {"identity": "a1", "description": "photos"}}, False)
    assert same and warnings == []
    with pytest.raises(GateError, match=r"^the baseline was evaluated on photos \(image set a1\) and the new results on other"):
        check_image_sets(ray, {"images": {"identity": "b2", "description": "other"}}, False)
    same, warnings = check_image_sets({"images": None}, ray, False)
    assert not same and "the baseline does not record the image set" in warnings[0]


def test_junit_marks_inconclusive_findings_as_passing_with_their_reason(bench, tmp_path):
    _, document = bench
    report = compare(document, document, 0.5, 0.10)
    suite = ET.parse(write_junit(report, tmp_path / "j.xml")).getroot()
    assert suite.get("failures") == "0" and int(suite.get("tests")) == len(report.findings)
    cases = [c for c in suite.iter("testcase") if c.find("system-out") is not None]
    assert len(cases) == len(report.inconclusive) >= 1
