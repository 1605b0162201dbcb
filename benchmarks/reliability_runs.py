"""Reliability rows for `edgekit run` and recipes (issue "hostile and huge inputs"): every
finished cell kept (a failed cell, a kill, --resume), a recipe checked before its first
cell, its output confined to its folder, ssh host-key checks it cannot turn off, deep
nesting and huge files. Called by benchmarks/reliability.py; faults from tests/faults_runs.py."""

from __future__ import annotations

from pathlib import Path

import faults_runs as fr
from reliability import edgekit, one_line, shown


def _rows(path: Path) -> list[tuple[str, bool]]:
    document = fr.read_json(path) or {}
    return [(r.get("model"), bool(r.get("error"))) for r in document.get("results", [])]


def cases(t, w: Path, art: dict) -> None:
    root = w / "runs"
    artifacts = w / "exported"

    # -- a misspelt model in a later cell: refused before cell 1 is built
    folder = root / "misspelt"
    path = fr.cheap_recipe(folder, ["squeezenet1_1", "squeezenet1_x"], artifacts=folder / "exported")
    args = ("run", str(path))
    t.case("run: misspelt model in a later cell", shown(args), "one error line naming recipe.toml:1 and close names, exit 2, nothing built",
           lambda: (lambda proc: (one_line(proc, 2, "recipe.toml:1:", "squeezenet1_x", "squeezenet1_1")[0] and not (folder / "exported").exists(),
                                  one_line(proc, 2)[1]))(edgekit(*args, cwd=folder)))

    # -- a cell that fails part way (weights that are not a checkpoint): a row, the run goes on, exit 1
    folder = root / "failed-cell"
    path = fr.failing_second_cell(folder, artifacts=artifacts)
    args = ("run", str(path))

    def failed_cell():
        proc = edgekit(*args, cwd=folder)
        rows = _rows(folder / "results.json")
        ok, said = one_line(proc, 1, "failed", "1 measured")
        return ok and rows == [("squeezenet1_1", False), ("squeezenet1_0", True)], f"{said}; rows {rows}"

    t.case("run: second cell's weights are not a checkpoint", shown(args), "cell 1 measured and saved, cell 2 a row with its error, exit 1", failed_cell)

    args_resume = ("run", str(path), "--resume")

    def resumed():
        proc = edgekit(*args_resume, cwd=folder)
        document = fr.read_json(folder / "results.json") or {}
        states = [(u.get("state"), bool(u.get("resumed"))) for u in fr.units(document)]
        return proc.returncode == 1 and states == [("done", True), ("failed", False)], f"exit {proc.returncode}; cells {states}"

    t.case("run --resume (local) after a failed cell", shown(args_resume), "cell 1 kept from the file, cell 2 run again (fails again), exit 1", resumed)

    # -- SIGTERM after cell 1 finished
    folder = root / "killed"
    path = fr.cheap_recipe(folder, ["squeezenet1_1", "squeezenet1_0"], artifacts=folder / "exported")
    args = ("run", str(path))

    def killed():
        proc, seen, left = fr.kill_after_first_cell(list(args), folder, folder / "results.json")
        states = [u.get("state") for u in fr.units(left or {})]
        rows = _rows(folder / "results.json")
        ok = seen is not None and proc.returncode == 130 and "Traceback" not in proc.stderr and states == ["done", "interrupted"] and rows == [("squeezenet1_1", False)]
        return ok, f"exit {proc.returncode}; cells {states}; rows {rows}"

    t.case("run: SIGTERM after the first cell finished", shown(args) + "  (SIGTERM once results.json says cell 1 is done)",
           "exit 130, results.json holds cell 1's rows, cell 2 marked interrupted", killed)

    # -- a recipe's output cannot overwrite other files
    for name, output, fragment in (("dotdot", "../victim.txt", "'..'"), ("absolute", str(root / "victim.txt"), "inside its own folder"),
                                   ("not-results", "notes.txt", "not an edgekit results file")):
        folder = root / f"output-{name}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "notes.txt").write_text("my notes\n")
        (root / "victim.txt").write_text("precious\n")
        path = fr.cheap_recipe(folder, ["squeezenet1_1"], output=output)
        args = ("run", str(path))

        def refused(args=args, folder=folder, fragment=fragment):
            ok, said = one_line(edgekit(*args, cwd=folder), 2, "recipe.toml:", "'output' cannot be", fragment)
            intact = (root / "victim.txt").read_text() == "precious\n" and (folder / "notes.txt").read_text() == "my notes\n"
            return ok and intact, said + ("" if intact else " (the file was changed!)")

        t.case(f"recipe output = {output!r}", shown(args), f"one error line with recipe.toml:LINE and {fragment!r}, exit 2, the file untouched", refused)

    # -- ssh host-key checks stay on
    folder = root / "ssh"
    text = fr.cheap_recipe(folder, ["squeezenet1_1"]).read_text()
    path = fr.recipe(folder, text.replace("[bench]\n", '[bench]\nremote = "edge@127.0.0.1:2222"\nssh_options = ["StrictHostKeyChecking=no"]\n', 1))
    args = ("run", str(path))
    t.error_case("recipe ssh_options = StrictHostKeyChecking=no", args, 2, "recipe.toml:", "StrictHostKeyChecking", "only you may change", cwd=folder)

    def ssh_order():
        from edgekit.remote import RemoteHost, SshSettings, ssh_command

        argv = ssh_command(RemoteHost("h", "u"), SshSettings(("BatchMode=no",)), "true")
        ok = argv[1:5] == ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=accept-new"] and argv.index("BatchMode=yes") < argv.index("BatchMode=no")
        return ok, " ".join(argv[:9])

    t.case("ssh argv: edgekit's security options first", "edgekit.remote.ssh_command(..., SshSettings(('BatchMode=no',)))",
           "BatchMode=yes and StrictHostKeyChecking=accept-new before any recipe option", ssh_order)

    # -- nesting and size
    for kind in ("array", "table"):
        folder = root / f"nested-{kind}"
        path = fr.recipe(folder, fr.nested_toml(10_000, kind))
        t.error_case(f"recipe with 10,000 nested {kind}s", ("run", str(path)), 2, "nested too deeply", cwd=folder)
    folder = root / "huge"
    folder.mkdir(parents=True, exist_ok=True)
    path = fr.huge_recipe(folder / "big.toml", 2)
    t.error_case("recipe of 2 MiB", ("run", str(path)), 2, "larger than 1024 KiB", cwd=folder)
    t.error_case("recipe = /dev/zero", ("run", "/dev/zero"), 2, "larger than 1024 KiB", cwd=folder)

    # -- a path that does not exist, caught before cell 1
    folder = root / "missing-data"
    text = fr.cheap_recipe(folder, ["squeezenet1_1"], artifacts=folder / "exported").read_text()
    path = fr.recipe(folder, text.replace("[bench]\n", '[bench]\ndata = "no-such-folder"\n', 1))
    args = ("run", str(path))
    t.case("recipe data = a folder that does not exist", shown(args), "one error line with recipe.toml:LINE, exit 2, nothing built",
           lambda: (lambda proc: (one_line(proc, 2, "recipe.toml:", "no-such-folder", "does not exist")[0] and not (folder / "exported").exists(),
                                  one_line(proc, 2)[1]))(edgekit(*args, cwd=folder)))
