"""Output that can be piped and scripted (docs/cli.md): results on stdout, the rest on
stderr, --json with stable keys, plain tables when not a terminal, one exit-code table."""

import json
import re
from pathlib import Path

import pytest

from conftest import REPO, assert_one_line_error, run_cli

BOX_CHARACTERS = re.compile("[\u2500-\u257f]")  # rich's box drawing: ─ │ ┏ ┃ ╇ ...


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """One cheap artifact for the module: `edgekit export` of a small random-init model."""
    root = tmp_path_factory.mktemp("output")
    proc = run_cli("export", "mobilenet_v3_small", "--random-init", "--input-size", "64", "--artifacts", "artifacts", cwd=root)
    assert proc.returncode == 0, proc.stderr
    path = Path(proc.stdout.strip().splitlines()[-1])  # the path: the last line on stdout
    return path if path.is_absolute() else root / path


def _plain(text: str) -> None:
    assert not BOX_CHARACTERS.search(text), text


# --------------------------------------------------------------------------- models


MODEL_KEYS = {
    "name": str, "family": str, "source": str, "input_size": int, "params_m": (float, type(None)), "gmacs": (float, type(None)),
    "top1": (float, type(None)), "reference": str, "offline_weights": bool, "measured": (dict, type(None)),
}


def test_models_json_has_stable_keys(tmp_path):
    proc = run_cli("models", "mobilenet", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    document = json.loads(proc.stdout)
    assert set(document) == {"models"}
    rows = {r["name"]: r for r in document["models"]}
    assert {"mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large"} <= set(rows)
    for row in rows.values():
        assert set(row) == set(MODEL_KEYS), row
        for key, kind in MODEL_KEYS.items():
            assert isinstance(row[key], kind), (key, row[key])
        assert row["measured"] is None  # the default reads published figures, builds nothing
    assert abs(rows["mobilenet_v2"]["params_m"] - 3.50) < 0.01 and rows["mobilenet_v2"]["input_size"] == 224


def test_models_measure_counts_from_the_built_model(tmp_path):
    proc = run_cli("models", "mobilenet_v2", "--measure", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (row,) = [r for r in json.loads(proc.stdout)["models"] if r["name"] == "mobilenet_v2"]
    measured = row["measured"]
    assert set(measured) == {"params_m", "gmacs", "error"} and measured["error"] is None
    assert abs(measured["params_m"] - row["params_m"]) < 0.01 and abs(measured["gmacs"] - row["gmacs"]) < 0.01


def test_models_table_is_plain_when_piped(tmp_path):
    proc = run_cli("models", "lite", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    _plain(proc.stdout)
    lines = proc.stdout.splitlines()
    header = lines.index(next(line for line in lines if line.startswith("name")))
    rows = [re.split(r"\s{2,}", line) for line in lines[header + 1:]]
    assert [r[0] for r in rows] == ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
    assert all(len(r) == len(re.split(r"\s{2,}", lines[header])) for r in rows)
    assert all(line == line.rstrip() for line in lines)


def test_models_pattern_that_matches_nothing_is_refused(tmp_path):
    proc = run_cli("models", "zzz", cwd=tmp_path)
    assert_one_line_error(proc, "no registered model name contains 'zzz'", code=2)
    assert proc.stdout == ""
    proc = run_cli("models", "mobilnet", cwd=tmp_path)
    assert_one_line_error(proc, "did you mean", "mobilenet_v2", code=2)


# --------------------------------------------------------------------------- inspect


def test_inspect_writes_to_stdout(built, tmp_path):
    proc = run_cli("inspect", str(built), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "integrity: intact" in proc.stdout and "deploy: model.onnx on every runtime" in proc.stdout
    assert "mobilenet_v3_small" in proc.stdout.splitlines()[0]
    assert proc.stderr == ""
    _plain(proc.stdout)


INSPECT_KEYS = {
    "path": str, "key": str, "model": str, "variant": str, "weights": (str, type(None)), "integrity": dict, "steps": list,
    "parity": (dict, type(None)), "quantization": (dict, type(None)), "deploy": (dict, type(None)),
}


def test_inspect_json_has_stable_keys(built, tmp_path):
    proc = run_cli("inspect", str(built), "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    facts = json.loads(proc.stdout)
    assert set(facts) == set(INSPECT_KEYS)
    for key, kind in INSPECT_KEYS.items():
        assert isinstance(facts[key], kind), (key, facts[key])
    assert facts["model"] == "mobilenet_v3_small" and facts["variant"] == "fp32" and facts["quantization"] is None
    assert facts["integrity"] == {"intact": True, "problems": [], "sealed_files": 1}
    assert [s["step"] for s in facts["steps"]] == ["export"]
    assert set(facts["deploy"]) >= {"onnxruntime", "openvino"}
    for entries in facts["deploy"].values():
        assert all(set(e) == {"file", "when", "state"} and e["state"] == "ok" for e in entries)


def test_inspect_of_a_damaged_artifact_says_what_then_exits_2(built, tmp_path):
    import shutil

    copy = Path(shutil.copytree(built, tmp_path / "copy"))
    (copy / "model.onnx").write_bytes(b"not the graph")
    proc = run_cli("inspect", str(copy), "--json", cwd=tmp_path)
    assert_one_line_error(proc, "is not intact", "model.onnx", code=2)
    facts = json.loads(proc.stdout)
    assert facts["integrity"]["intact"] is False and facts["integrity"]["problems"]


def test_inspect_redirected_in_a_process(built, tmp_path):
    """The issue's symptom, end to end: `edgekit inspect A > file` holds the facts."""
    out = tmp_path / "facts.txt"
    import os
    import subprocess
    import sys

    with open(out, "w") as f:
        proc = subprocess.run([sys.executable, "-m", "edgekit.cli", "inspect", str(built)], stdout=f, stderr=subprocess.PIPE, text=True,
                              cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "integrity: intact" in out.read_text()


def test_an_artifact_built_by_bench_has_the_deploy_section(built, tmp_path):
    """The deploy section comes with the artifact, not with the command that built it:
    plan.build (bench, profile, run, bundle) records it as export does."""
    import shutil

    from edgekit.artifacts import write_manifest
    from edgekit.core import Artifact
    from edgekit.options import Settings
    from edgekit.plan import build, command_cell

    copy = Path(shutil.copytree(built, tmp_path / "old"))
    manifest = Artifact.load(copy).manifest
    write_manifest(copy, {k: v for k, v in manifest.items() if k != "deploy"})  # as bench used to leave it
    assert "not recorded" in run_cli("inspect", str(copy), cwd=tmp_path).stdout
    artifact, reused = build(command_cell(str(copy), Settings(), backends=()))
    assert reused and artifact.manifest["deploy"] == manifest["deploy"] and artifact.problems() == []
    proc = run_cli("inspect", str(copy), cwd=tmp_path)
    assert "not recorded" not in proc.stdout and "deploy: model.onnx on every runtime" in proc.stdout


# --------------------------------------------------------------------------- tables


def test_boxed_tables_print_plain_when_not_a_terminal(capsys):
    from rich.table import Table

    from edgekit.console import stdout

    table = Table(title="a title", title_justify="left")
    table.add_column("name")
    table.add_column("value", justify="right")
    table.add_row("no (--random-init)", "1.5")
    stdout().print(table)
    out = capsys.readouterr().out
    _plain(out)
    assert out.splitlines() == ["a title", "name                value", "no (--random-init)    1.5"]


def test_screen_precision_of_a_finetuned_int8_row_on_openvino():
    from edgekit.core import BenchResult
    from edgekit.results.tables import screen_rows, short_precision

    def row(precision):
        return BenchResult(model="m", backend="openvino", variant="finetuned+int8", artifact_key="k", precision=precision, providers=(),
                           threads=None, latency=(), peak_rss_mb=None, size_mb=None, accuracy=None)

    assert short_precision(row("finetuned+int8 (OpenVINO CPU inference precision f32)")) == "int8"
    assert short_precision(row("pruned+int8 (OpenVINO CPU inference precision bf16)")) == "int8"
    assert short_precision(row("finetuned (OpenVINO CPU inference precision bf16)")) == "bf16"
    assert short_precision(row("fp32 (OpenVINO CPU inference precision f32)")) == "fp32"
    assert short_precision(row("dw-separable+fp16")) == "fp16"
    assert short_precision(row("int8 (CPU form: uint8 activations, int8 weights)")) == "int8"
    assert short_precision(row("fp16 (TensorRT 11.4)")) == "fp16"
    assert short_precision(row("finetuned+int8")) == "int8"
    assert screen_rows([row("finetuned+int8 (OpenVINO CPU inference precision f32)")])[0][1] == "int8"


# --------------------------------------------------------------------------- exit codes


def _documented_exit_codes() -> dict[int, tuple[str, set[str]]]:
    """{code: (meaning, error classes named)} from the table under '## Exit codes' in docs/cli.md."""
    text = (REPO / "docs" / "cli.md").read_text()
    section = text.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    table = {}
    for line in section.splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        if len(cells) == 3 and cells[0].isdigit():
            table[int(cells[0])] = (cells[1], set(re.findall(r"`(\w+)`", cells[2])))
    return table


def _error_classes() -> dict[str, type]:
    import importlib

    from edgekit.core import EdgekitError

    for module in ("edgekit.core", "edgekit.files", "edgekit.data", "edgekit.recipe", "edgekit.results.gate"):
        importlib.import_module(module)
    found, todo = {}, [EdgekitError]
    while todo:
        cls = todo.pop()
        found[cls.__name__] = cls
        todo += cls.__subclasses__()
    return found


def test_documented_exit_codes_match_the_code():
    from edgekit.core import EXIT_CODES

    documented = _documented_exit_codes()
    assert set(documented) == set(EXIT_CODES)
    classes = _error_classes()
    named = {name: code for code, (_, names) in documented.items() for name in names if name in classes}
    assert set(named) == set(classes), f"error classes missing from docs/cli.md: {set(classes) - set(named)}"
    for name, code in named.items():
        assert classes[name].exit_code == code, (name, classes[name].exit_code, code)
    builtins = {name for _, names in documented.values() for name in names} - set(classes)
    assert builtins == {"KeyboardInterrupt", "BrokenPipeError"}


def test_exit_codes_end_to_end(built, tmp_path, monkeypatch):
    from edgekit import cli
    from edgekit.core import EXIT_BROKEN_PIPE, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_REFUSED

    assert_one_line_error(run_cli("inspect", str(tmp_path / "nowhere"), cwd=tmp_path), "nowhere", code=EXIT_REFUSED)  # click's check
    assert_one_line_error(run_cli("inspect", str(tmp_path), cwd=tmp_path), "not an edgekit artifact", code=EXIT_REFUSED)  # edgekit's
    assert_one_line_error(run_cli("report", "missing.json", cwd=tmp_path), "missing.json", code=EXIT_REFUSED)
    assert_one_line_error(run_cli("models", "--bogus", cwd=tmp_path), "--bogus", code=EXIT_REFUSED)

    def fails_with(error):
        def facts(artifact):
            raise error
        return facts

    monkeypatch.setattr(cli, "artifact_facts", fails_with(ValueError("a bug")))
    proc = run_cli("inspect", str(built), cwd=tmp_path)
    assert proc.returncode == EXIT_INTERNAL and "Traceback" in proc.stderr and "error: internal error (ValueError)" in proc.stderr
    monkeypatch.setattr(cli, "artifact_facts", fails_with(KeyboardInterrupt()))
    proc = run_cli("inspect", str(built), cwd=tmp_path)
    assert proc.returncode == EXIT_INTERRUPTED and "interrupted" in proc.stderr and "Traceback" not in proc.stderr
    monkeypatch.setattr(cli, "artifact_facts", fails_with(BrokenPipeError()))
    proc = run_cli("inspect", str(built), cwd=tmp_path)
    assert proc.returncode == EXIT_BROKEN_PIPE and proc.stderr == ""
