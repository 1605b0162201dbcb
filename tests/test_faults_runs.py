"""`edgekit run` keeps every finished cell, and a recipe from someone else stays inside the
threat model of docs/reliability.md ("Threat model"): it may not write outside its folder,
overwrite a file that is not a results file, turn off ssh host-key checks, or crash the
loader with nesting or size. Real runs use random-init SqueezeNet at 64 px (seconds a cell)."""

from __future__ import annotations

import json
import os
import shutil

import pytest

import faults_runs as fr
from conftest import assert_one_line_error, run_cli
from edgekit.recipe import RecipeError, load_recipe
from edgekit.remote import RemoteHost, SshSettings, recipe_safe_ssh_option, ssh_command


def _line(path, fragment):
    return next(n for n, line in enumerate(path.read_text().splitlines(), 1) if fragment in line)


# --------------------------------------------------------------------------- every finished cell is kept


def test_a_failed_cell_is_a_row_the_run_goes_on_and_resume_keeps_the_rest(tmp_path, exported_root):
    path = fr.failing_second_cell(tmp_path, artifacts=exported_root)
    proc = run_cli("run", str(path), cwd=tmp_path)
    line = assert_one_line_error(proc, "onnxruntime failed", "1 measured", code=1)
    assert "results.json" in line
    document = json.loads((tmp_path / "results.json").read_text())
    rows = document["results"]
    assert [(r["model"], bool(r.get("error"))) for r in rows] == [("squeezenet1_1", False), ("squeezenet1_0", True)]
    assert "bad.pth" in rows[1]["error"]
    assert [u["state"] for u in fr.units(document)] == ["done", "failed"]
    assert document["machine"].get("cpu") and document["recipe"] == str(path)

    # --resume works here too: the measured cell is kept, the failed one runs again
    proc = run_cli("run", str(path), "--resume", cwd=tmp_path)
    assert proc.returncode == 1 and "from the previous run" in proc.stdout, proc.stderr
    again = json.loads((tmp_path / "results.json").read_text())
    first = fr.units(again)[0]
    assert first["state"] == "done" and first.get("resumed") and again["results"][0] == rows[0]


def test_sigterm_after_the_first_cell_leaves_it_in_the_results_file(tmp_path):
    path = fr.cheap_recipe(tmp_path, ["squeezenet1_1", "squeezenet1_0"], artifacts=tmp_path / "exported")
    proc, seen, left = fr.kill_after_first_cell(["run", str(path)], tmp_path, tmp_path / "results.json")
    assert seen is not None, proc.stderr  # the kill came after cell 1 finished
    assert proc.returncode == 130, proc.stderr
    assert "Traceback" not in proc.stderr and "--resume" in proc.stderr
    assert [u["state"] for u in fr.units(left)] == ["done", "interrupted"]
    assert [r["model"] for r in left["results"]] == ["squeezenet1_1"] and not left["results"][0].get("error")
    assert not list(tmp_path.glob("*.tmp*")) and not list((tmp_path / "exported").rglob(".tmp-*"))


def test_a_misspelt_model_or_missing_path_fails_before_any_cell(tmp_path):
    bad_model = fr.cheap_recipe(tmp_path / "m", ["squeezenet1_1", "squeezenet1_x"])
    proc = run_cli("run", str(bad_model), cwd=tmp_path)
    assert_one_line_error(proc, f"{bad_model}:1:", "unknown model 'squeezenet1_x'", "squeezenet1_1", code=2)
    assert not (tmp_path / "m" / "results.json").exists() and not (tmp_path / "exported").exists()
    for section, key, value in (("[model.squeezenet1_1]", "weights", "missing.pth"), ("[bench]", "data", "no-such-folder"),
                                ("[bench]", "labels", "labels.txt"), ("[int8]", "calib", "calib/")):
        folder = tmp_path / key
        text = fr.cheap_recipe(folder, ["squeezenet1_1"]).read_text()
        if section == "[model.squeezenet1_1]":
            text = text.replace("random_init = true\n", f'{key} = "{value}"\n')
        elif section in text:
            text = text.replace(section + "\n", f'{section}\n{key} = "{value}"\n')
        else:
            text = text.replace('variants = ["fp32"]', 'variants = ["int8"]') + f'{section}\n{key} = "{value}"\n'
        path = fr.recipe(folder, text)
        if key == "labels":
            (folder / "images").mkdir()
            path.write_text(text.replace("[bench]\n", '[bench]\ndata = "images"\n'))
        with pytest.raises(RecipeError) as caught:
            load_recipe(path)
        assert str(caught.value).startswith(f"{path}:{_line(path, key + ' =')}: "), caught.value
        assert value.rstrip("/") in str(caught.value) and "does not exist" in str(caught.value)


# --------------------------------------------------------------------------- the output stays in the recipe's folder


@pytest.mark.parametrize("output, reason", [
    ("../victim.txt", "'..'"),
    ("results/../../victim.txt", "'..'"),
    ("/tmp/edgekit-victim.json", "inside its own folder"),
    ("~/.bashrc", "inside its own folder"),
    ("notes.txt", "not an edgekit results file"),
    ("link/out.json", "leads out of the recipe's folder"),
    ("here.json", "symlink"),
    ("sub", "not a plain file"),
])
def test_output_cannot_overwrite_what_is_not_its_own(tmp_path, output, reason):
    folder = tmp_path / "shared"
    folder.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (folder / "notes.txt").write_text("my notes\n")
    (folder / "link").symlink_to(tmp_path)
    (folder / "here.json").symlink_to(folder / "notes.txt")
    (folder / "sub").mkdir()
    path = fr.cheap_recipe(folder, ["squeezenet1_1"], output=output)
    with pytest.raises(RecipeError) as caught:
        load_recipe(path)
    assert str(caught.value).startswith(f"{path}:{_line(path, 'output =')}: 'output' cannot be"), caught.value
    assert reason in str(caught.value)
    assert victim.read_text() == "precious\n" and (folder / "notes.txt").read_text() == "my notes\n"


def test_output_may_replace_its_own_results_and_cli_refuses_in_one_line(tmp_path):
    path = fr.cheap_recipe(tmp_path / "r", ["squeezenet1_1"], output="out/results.json")
    (tmp_path / "r" / "out").mkdir()
    (tmp_path / "r" / "out" / "results.json").write_text('{\n  "format": "edgekit-results/1",\n  "results": []\n}\n')
    assert load_recipe(path).output == tmp_path / "r" / "out" / "results.json"
    (tmp_path / "victim.txt").write_text("precious\n")
    path.write_text(path.read_text().replace('"out/results.json"', '"../victim.txt"'))
    proc = run_cli("run", str(path), cwd=tmp_path)
    assert_one_line_error(proc, f"{path}:{_line(path, 'output =')}:", "'..'", "--json", code=2)
    assert (tmp_path / "victim.txt").read_text() == "precious\n"


# --------------------------------------------------------------------------- ssh: host keys are checked


def test_a_recipe_cannot_turn_off_host_key_checks(tmp_path):
    for option in ("StrictHostKeyChecking=no", "UserKnownHostsFile=/dev/null", "stricthostkeychecking no", "HostKeyAlgorithms=ssh-rsa",
                   "GlobalKnownHostsFile=/dev/null"):
        assert recipe_safe_ssh_option(option), option
    text = fr.cheap_recipe(tmp_path, ["squeezenet1_1"]).read_text()
    path = fr.recipe(tmp_path, text.replace("[bench]\n", '[bench]\nremote = "edge@127.0.0.1:2222"\nssh_options = ["UserKnownHostsFile=/dev/null"]\n', 1))
    proc = run_cli("run", str(path), cwd=tmp_path)
    assert_one_line_error(proc, f"{path}:{_line(path, 'ssh_options')}:", "UserKnownHostsFile", "only you may change", code=2)


def test_edgekit_security_options_come_first_and_only_the_user_replaces_the_host_key_policy(monkeypatch):
    monkeypatch.delenv("EDGEKIT_SSH_OPTS", raising=False)
    recipe_like = SshSettings(("BatchMode=no", "ConnectTimeout=3"))
    args = ssh_command(RemoteHost("h", "u"), recipe_like, "true")
    assert args[1:5] == ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=accept-new"]
    assert args.index("BatchMode=yes") < args.index("BatchMode=no")  # ssh keeps the first value
    monkeypatch.setenv("EDGEKIT_SSH_OPTS", "-o StrictHostKeyChecking=no -oUserKnownHostsFile=/dev/null")
    user = SshSettings.from_environment(("ConnectTimeout=3",))
    args = ssh_command(RemoteHost("h", "u"), user, "true")
    assert "StrictHostKeyChecking=accept-new" not in args and args.index("BatchMode=yes") < args.index("StrictHostKeyChecking=no")
    assert args.index("StrictHostKeyChecking=no") < args.index("ConnectTimeout=3")  # the user's env before the -o options


# --------------------------------------------------------------------------- nesting and size


@pytest.mark.parametrize("kind", ["array", "table"])
def test_deeply_nested_toml_is_one_line(tmp_path, kind):
    path = fr.recipe(tmp_path, fr.nested_toml(10_000, kind))
    proc = run_cli("run", str(path), cwd=tmp_path)
    assert_one_line_error(proc, str(path), "nested too deeply", code=2)


def test_a_huge_or_endless_recipe_is_refused_without_reading_it_all(tmp_path):
    path = fr.huge_recipe(tmp_path / "big.toml", 2)
    assert_one_line_error(run_cli("run", str(path), cwd=tmp_path), "larger than 1024 KiB", code=2)
    if os.path.exists("/dev/zero"):
        assert_one_line_error(run_cli("run", "/dev/zero", cwd=tmp_path), "larger than 1024 KiB", code=2)


def test_resume_from_a_file_that_is_not_a_results_file_is_one_line(tmp_path):
    path = fr.cheap_recipe(tmp_path, ["squeezenet1_1"], output=None)
    (tmp_path / "theirs.json").write_text('{"format": "edgekit-results/1", "results": "nope"}')
    proc = run_cli("run", str(path), "--resume", "--json", str(tmp_path / "theirs.json"), cwd=tmp_path)
    assert_one_line_error(proc, "--resume", "theirs.json")
    assert not (tmp_path / "exported").exists()
    shutil.rmtree(tmp_path / "exported", ignore_errors=True)
