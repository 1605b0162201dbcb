"""Recipes (`edgekit run`), the CI gate (`edgekit check`) and `edgekit report`, end to end."""

import copy
import json
import xml.etree.ElementTree as ET

import pytest

from conftest import assert_one_line_error, run_cli
from edgekit.results.gate import compare, parse_percent
from edgekit.recipe import RecipeError, load_recipe

RECIPE = """\
name = "tiny"
models = ["mobilenet_v3_small", "squeezenet1_1"]
variants = ["fp32", "int8"]
backends = ["onnxruntime"]
batch = [1]
reference = "squeezenet1_1"
output = "out/results.json"

[export]
random_init = true
input_size = 64
artifacts = "exported"

[int8]
calib_method = "minmax"
max_fallback = 0
bias_correction = false

[bench]
iterations = 5
warmup = 1
repeats = 2
views = 1
"""


def _write(tmp_path, text):
    path = tmp_path / "recipe.toml"
    path.write_text(text)
    return path


def test_misspelt_key_points_at_its_line(tmp_path):
    path = _write(tmp_path, RECIPE.replace("iterations = 5", "iteratons = 5"))
    line = RECIPE.splitlines().index("iterations = 5") + 1
    with pytest.raises(RecipeError, match=rf"recipe.toml:{line}: unknown key 'iteratons' in \[bench\] \(did you mean 'iterations'\?\)"):
        load_recipe(path)


def test_wrong_type_and_bad_toml_and_unbuilt_variant(tmp_path):
    with pytest.raises(RecipeError, match=r"recipe.toml:\d+: 'repeats' must be an integer >= 1, got 'two'"):
        load_recipe(_write(tmp_path, RECIPE.replace("repeats = 2", 'repeats = "two"')))
    with pytest.raises(RecipeError, match="not valid TOML"):
        load_recipe(_write(tmp_path, RECIPE.replace("[bench]", "[bench")))
    with pytest.raises(RecipeError, match="recipe.toml:3: unknown step 'int4' in variant 'int4' \\(did you mean 'int8'\\?\\)"):
        load_recipe(_write(tmp_path, RECIPE.replace('"fp32", "int8"', '"fp32", "int4"')))
    with pytest.raises(RecipeError, match=r"a 'pruned' variant needs \[prune\] ratio"):
        load_recipe(_write(tmp_path, RECIPE.replace('"fp32", "int8"', '"fp32", "pruned"')))
    with pytest.raises(RecipeError, match=r"\[model.resnet18\] names a model that is not in 'models'"):
        load_recipe(_write(tmp_path, RECIPE + "\n[model.resnet18]\nrandom_init = true\n"))


@pytest.mark.parametrize("variant", ["finetuned+pruned", "pruned+int8", "finetuned+pruned+int8"])
def test_a_chain_with_a_pruned_step_needs_prune_ratio_before_any_work(tmp_path, variant):
    """The step is found in the chain, not only at its start: 'finetuned+pruned' without
    [prune] ratio used to pass the check and fail only after fine-tuning had run."""
    with pytest.raises(RecipeError, match=r"recipe.toml:3: a 'pruned' variant needs \[prune\] ratio"):
        load_recipe(_write(tmp_path, RECIPE.replace('"fp32", "int8"', f'"fp32", "{variant}"')))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.toml"]  # nothing built, nothing written


def test_cli_malformed_recipe_is_one_line(tmp_path):
    path = _write(tmp_path, RECIPE.replace("[int8]", "[int9]"))
    proc = run_cli("run", str(path), cwd=tmp_path)
    assert_one_line_error(proc, "recipe.toml:", "unknown table [int9]", code=2)


# --------------------------------------------------------------------------- a real run


@pytest.fixture(scope="module")
def run_results(tmp_path_factory):
    folder = tmp_path_factory.mktemp("recipe")
    path = _write(folder, RECIPE)
    proc = run_cli("run", str(path), cwd=folder)
    assert proc.returncode == 0, proc.stderr
    return folder, json.loads((folder / "out" / "results.json").read_text())


def test_run_benchmarks_every_cell_into_one_file(run_results):
    _, document = run_results
    cells = {(r["model"], r["variant"], r["backend"]) for r in document["results"]}
    assert cells == {(m, v, "onnxruntime") for m in ("mobilenet_v3_small", "squeezenet1_1") for v in ("fp32", "int8")}
    assert document["reference"] == "squeezenet1_1"
    for r in document["results"]:
        assert len(r["latency"][0]["p50_rounds"]) == 2  # repeats
        assert r["accuracy"]["images"] == 7  # views = 1 of the held-out views: the same images for every cell


def test_check_passes_against_itself_and_writes_junit(run_results, tmp_path):
    folder, _ = run_results
    results = folder / "out" / "results.json"
    proc = run_cli("check", str(results), "--baseline", str(results), "--junit", str(tmp_path / "junit.xml"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    suite = ET.parse(tmp_path / "junit.xml").getroot()
    assert suite.get("failures") == "0" and int(suite.get("tests")) >= 4


def _slower(document, model, factor):
    changed = copy.deepcopy(document)
    for r in changed["results"]:
        if model is None or r["model"] == model:
            for s in r["latency"]:
                s["p50_ms"] *= factor
    return changed


def test_latency_regression_is_judged_against_the_reference(run_results):
    _, document = run_results
    # only one model slowed down: a regression (4x: beyond what 2 rounds of 5 runs on a busy machine can call noise)
    report = compare(document, _slower(document, "mobilenet_v3_small", 4.0), 0.5, 0.10, trust_raw_latency=True)
    failed = {(f.key[0], f.check) for f in report.findings if f.status == "fail"}
    assert ("mobilenet_v3_small", "latency") in failed and not report.passed
    # the whole machine is 4x slower today: every ratio holds, only the yardstick itself
    # (judged on its raw p50, the one comparison a uniformly slower machine can fail) regresses
    report = compare(document, _slower(document, None, 4.0), 0.5, 0.10, trust_raw_latency=True)
    assert {f.key[0] for f in report.findings if f.status == "fail"} == {document["reference"]}
    assert compare(document, _slower(document, None, 4.0), 0.5, 0.10).passed  # by default a raw p50 is at most inconclusive


def test_accuracy_drop_missing_and_new_cells_and_other_machines(run_results, tmp_path):
    _, document = run_results
    worse = copy.deepcopy(document)
    worse["results"][0]["accuracy"]["agreement"] = 0.0  # 5 points on 7 images is not evidence (the gate says inconclusive)
    worse["results"][0]["accuracy"]["top1"] = None
    report = compare(document, worse, 0.5, 0.10)
    assert any(f.check == "accuracy" and f.status == "fail" for f in report.findings)

    fewer = copy.deepcopy(document)
    dropped = next(r for r in fewer["results"] if r["model"] != document["reference"])
    fewer["results"].remove(dropped)
    report = compare(document, fewer, 0.5, 0.10)
    assert any(f.status == "missing" and f.key[0] == dropped["model"] for f in report.findings)
    report = compare(fewer, document, 0.5, 0.10)
    assert any(f.status == "new" for f in report.findings) and report.passed

    elsewhere = copy.deepcopy(document)
    elsewhere["machine"]["cpu"] = "Jetson Orin (ARMv8)"
    assert any("different machines" in w for w in compare(document, elsewhere, 0.5, 0.10).warnings)

    (tmp_path / "worse.json").write_text(json.dumps(worse))
    (tmp_path / "base.json").write_text(json.dumps(document))
    proc = run_cli("check", "worse.json", "--baseline", "base.json", "--junit", "j.xml", cwd=tmp_path)
    assert_one_line_error(proc, "regression", "accuracy", code=1)
    assert ET.parse(tmp_path / "j.xml").getroot().get("failures") == "1"


def test_report_writes_tables_and_plots(run_results, tmp_path):
    folder, _ = run_results
    proc = run_cli("report", str(folder / "out" / "results.json"), "-o", str(tmp_path / "report"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    names = {p.name for p in (tmp_path / "report").iterdir()}
    assert {"report.md", "report.csv", "report.html", "pareto_onnxruntime.png"} <= names


def test_report_and_check_reject_files_that_are_not_results(tmp_path):
    (tmp_path / "junk.json").write_text("[1, 2]")
    assert_one_line_error(run_cli("report", "junk.json", cwd=tmp_path), "not an edgekit results file", code=2)
    assert_one_line_error(run_cli("check", "junk.json", "--baseline", "missing.json", cwd=tmp_path), "cannot read results file missing.json", code=2)


def test_percentages_parse():
    assert parse_percent("10%") == pytest.approx(0.10)
    assert parse_percent("0.1") == pytest.approx(0.10)
    assert parse_percent("25") == pytest.approx(0.25)
