"""`edgekit run RECIPE --ray`: placement, the streamed results file, and real Ray clusters
(a local instance; a head and two worker nodes on loopback, one killed mid-run)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, assert_one_line_error, run_cli
from edgekit.cluster.placement import BUILD_RESOURCE, Node, cluster_problems, parse_kinds, plan_units, timing_resources
from edgekit.core import UsageError
from edgekit.launch.ledger import Ledger
from edgekit.plan import recipe_cells
from edgekit.recipe import RecipeError, load_recipe
from ray_cluster import Cluster, processes_running

# Under pytest-xdist every test here runs on one worker, one after another (setup.cfg:
# --dist loadfile; keep them in this file): `ray.init()` with no address may join a
# cluster already running on this machine instead of starting its own, and the clusters
# below take the loopback addresses 127.0.0.2-3. conftest.py hands this file out first.
pytestmark = pytest.mark.xdist_group("ray")

TINY = """\
name = "lab"
models = ["mobilenet_v3_small", "squeezenet1_1"]
variants = ["fp32"]
backends = ["pytorch", "onnxruntime"]
batch = [1]
output = "out/results.json"

[export]
random_init = true
input_size = 64
artifacts = "exported"

[bench]
iterations = 20
warmup = 2
views = 1
"""


def _recipe(folder: Path, text: str = TINY) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "recipe.toml"
    path.write_text(text)
    return path


def _artifacts_in(root: Path, text: str = TINY) -> str:
    """The recipe building into the session's artifact root (conftest's exported_root):
    an artifact already built there with the same settings is reused by its key, so the
    runs below time and ship artifacts instead of exporting the same two models again."""
    assert 'artifacts = "exported"' in text
    return text.replace('artifacts = "exported"', f'artifacts = "{root}"')


# --------------------------------------------------------------------------- placement, no cluster


def test_kinds_per_backend_and_for_every_backend():
    kinds = parse_kinds(["x86", "tensorrt=h100", "tensorrt=jetson_orin_nano"], ("pytorch", "onnxruntime", "tensorrt"))
    assert kinds == {"pytorch": ("x86",), "onnxruntime": ("x86",), "tensorrt": ("h100", "jetson_orin_nano")}
    assert parse_kinds([], ("onnxruntime",)) == {"onnxruntime": ("host",)}
    with pytest.raises(UsageError, match="names backend 'tensort'"):
        parse_kinds(["tensort=h100"], ("tensorrt",))
    with pytest.raises(UsageError, match="cannot name a device kind"):
        parse_kinds(["CPU"], ("onnxruntime",))
    with pytest.raises(UsageError, match="which the recipe does not run"):
        parse_kinds(["openvino=x86"], ("onnxruntime",))


def test_units_group_backends_per_kind_with_ids_stable_across_runs(tmp_path):
    recipe = load_recipe(_recipe(tmp_path, TINY + '\n[ray]\nkinds = ["edge", "pytorch=cpu_box"]\n[model.squeezenet1_1]\nkinds = ["cpu_box"]\n'))
    units = plan_units(recipe_cells(recipe))
    assert [(u.model, u.kind, u.backends) for u in units] == [
        ("mobilenet_v3_small", "cpu_box", ("pytorch",)),
        ("mobilenet_v3_small", "edge", ("onnxruntime",)),
        ("squeezenet1_1", "cpu_box", ("pytorch", "onnxruntime")),  # [model.X] kinds: per cell
    ]
    assert [u.id for u in units] == [u.id for u in plan_units(recipe_cells(load_recipe(recipe.path)))]
    changed = load_recipe(_recipe(tmp_path / "other", recipe.path.read_text().replace("iterations = 20", "iterations = 21")))
    assert not {u.id for u in units} & {u.id for u in plan_units(recipe_cells(changed))}  # other settings: other cells


def test_recipe_refuses_a_bad_ray_table(tmp_path):
    with pytest.raises(RecipeError, match=r"recipe.toml:\d+: unknown key 'kind' in \[ray\] \(did you mean 'kinds'\?\)"):
        load_recipe(_recipe(tmp_path, TINY + '\n[ray]\nkind = ["edge"]\n'))
    with pytest.raises(RecipeError, match="'retries' must be an integer >= 0"):
        load_recipe(_recipe(tmp_path, TINY + "\n[ray]\nretries = -1\n"))


def _node(name: str, **resources: float) -> Node:
    return Node(name * 8, "10.0.0.1", resources)


def test_cluster_problems_name_what_to_change(tmp_path):
    recipe = load_recipe(_recipe(tmp_path, TINY + '\n[ray]\nkinds = ["edge", "pytorch=cpu_box"]\n'))
    units = plan_units(recipe_cells(recipe))
    good = [_node("a", **{BUILD_RESOURCE: 1, "cpu_box": 1}), _node("b", edge=1), _node("c", edge=1)]
    assert cluster_problems(good, units, "head:6379") == []
    assert timing_resources("cpu_box", good) == {"cpu_box": 1, BUILD_RESOURCE: 1}  # builds wait while it times
    assert timing_resources("edge", good) == {"edge": 1}

    def problem(nodes):
        found = cluster_problems(nodes, units, "head:6379")
        assert found
        return " | ".join(found)

    assert "no node offers device kind 'edge'" in problem(good[:1])
    assert "ray start --address head:6379 --resources '{\"edge\": 1}'" in problem(good[:1])
    assert "no node offers 'edgekit_build'" in problem([_node("a", cpu_box=1), *good[1:]])
    assert "one unit of one device kind" in problem([*good[:2], _node("c", edge=2)])
    assert "one unit of one device kind" in problem([*good[:2], _node("c", edge=1, cpu_box=1)])
    assert "pytorch is timed on 'edge'" in cluster_problems(good, plan_units(recipe_cells(load_recipe(_recipe(tmp_path / "p", TINY + '\n[ray]\nkinds = ["edge"]\n')))), "h:1")[0]
    assert "must all offer 'edgekit_build': 1 or none" in problem([*good, _node("d", **{BUILD_RESOURCE: 1, "edge": 1})])


def test_the_instance_started_here_passes_the_checks_on_any_machine(tmp_path):
    from edgekit.cluster.launcher import LOCAL_RESOURCES

    units = plan_units(recipe_cells(load_recipe(_recipe(tmp_path))))
    assert cluster_problems([_node("a", CPU=64, **LOCAL_RESOURCES)], units, "here") == []


# --------------------------------------------------------------------------- the results file, no cluster


def _row(model, backend, **environment):
    return {"model": model, "backend": backend, "variant": "fp32", "artifact_key": "abc", "precision": "fp32", "providers": [], "threads": None,
            "latency": [], "peak_rss_mb": None, "size_mb": None, "accuracy": None, "environment": environment}


def test_ledger_accounts_for_every_unit_and_resumes_the_done_ones(tmp_path):
    recipe = load_recipe(_recipe(tmp_path, TINY + '\n[ray]\nkinds = ["edge", "pytorch=cpu_box"]\n'))
    units = plan_units(recipe_cells(recipe))
    path = tmp_path / "results.json"
    node = {"ray_node": "n" * 56, "name": "box (10.0.0.2, node nnnnnn)", "ip": "10.0.0.2"}
    ledger = Ledger(path, units, "edgekit run", {"recipe": "r"})
    ledger.write()
    document = json.loads(path.read_text())
    assert [u["state"] for u in document["cluster"]["units"]] == ["waiting"] * 4 and document["results"] == []
    ledger.record(units[0], {"results": [_row(units[0].model, "pytorch")], "parity": []}, node, 1.5)
    ledger.fail(units[1], "lost after 3 tries (NodeDiedError: ...)")
    ledger.running(units[2], node)
    ledger.interrupt()
    ledger.write()
    document = json.loads(path.read_text())
    assert [u["state"] for u in document["cluster"]["units"]] == ["done", "failed", "interrupted", "interrupted"]
    assert document["results"][0]["environment"]["node"] == node["name"] and document["results"][0]["environment"]["unit"] == units[0].id
    assert document["results"][1]["error"].startswith("lost after 3 tries")

    resumed = Ledger(path, units, "edgekit run --resume", {"recipe": "r"}, resume=True)
    assert [u.id for u in resumed.to_run] == [u.id for u in units[1:]]  # failed and interrupted ones run again
    resumed.write()
    document = json.loads(path.read_text())
    assert [r["backend"] for r in document["results"]] == ["pytorch"] and document["cluster"]["units"][0]["resumed"]


def test_resume_refuses_a_damaged_results_file(tmp_path):
    recipe = load_recipe(_recipe(tmp_path))
    path = tmp_path / "results.json"
    path.write_text("{not json")
    with pytest.raises(Exception, match="--resume: .*not valid JSON"):
        Ledger(path, plan_units(recipe_cells(recipe)), None, {}, resume=True)


def test_command_line_errors_are_one_line(tmp_path):
    path = _recipe(tmp_path)
    # --resume applies to local runs too now (tests/test_faults_runs.py)
    assert_one_line_error(run_cli("run", str(path), "--ray", "127.0.0.1:1", cwd=tmp_path), "cannot reach the Ray cluster at 127.0.0.1:1")
    assert_one_line_error(run_cli("run", str(path), "--ray", "nowhere", cwd=tmp_path), "expected auto, HOST:PORT")
    remote = _recipe(tmp_path / "remote", TINY.replace("[bench]", '[bench]\nremote = "pi@device"'))
    assert_one_line_error(run_cli("run", str(remote), "--ray", cwd=tmp_path), "--ray and [bench] remote are two ways")
    typo = _recipe(tmp_path / "typo", TINY + '\n[ray]\nkinds = ["tensort=h100"]\n')
    assert_one_line_error(run_cli("run", str(typo), "--ray", cwd=tmp_path), "names backend 'tensort'")


def test_a_cluster_that_cannot_run_the_recipe_is_one_line_before_any_work(tmp_path):
    path = _recipe(tmp_path, TINY + '\n[ray]\nkinds = ["onnxruntime=jetson_orin_nano", "pytorch=host"]\n')
    proc = _process(["run", str(path), "--ray"], tmp_path)  # the instance started here offers 'host' only
    _, err = proc.communicate(timeout=300)
    completed = subprocess.CompletedProcess(proc.args, proc.returncode, "", err)
    assert_one_line_error(completed, "no node offers device kind 'jetson_orin_nano'", "--resources '{\"jetson_orin_nano\": 1}'", code=2)
    assert not (tmp_path / "exported").exists()  # nothing was built


def test_without_ray_the_error_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if it were not installed
    assert_one_line_error(run_cli("run", str(_recipe(tmp_path)), "--ray", cwd=tmp_path), "pip install 'edgekit[ray]'")


def test_the_bundle_timing_task_travels_without_edgekit_or_torch():
    """A Jetson node has Ray, numpy, Pillow and its runtime: the task that times a bundle
    is shipped by value and unpickles where edgekit and torch cannot be imported."""
    import ray.cloudpickle as cloudpickle

    from edgekit.cluster import on_device

    cloudpickle.register_pickle_by_value(on_device)
    try:
        data = cloudpickle.dumps(on_device.time_bundle)
    finally:
        cloudpickle.unregister_pickle_by_value(on_device)
    check = (
        "import sys, pickle\n"
        "for name in ('edgekit', 'torch', 'onnx', 'click'): sys.modules[name] = None\n"
        "task = pickle.loads(sys.stdin.buffer.read())\n"
        "assert callable(task) and task.__name__ == 'time_bundle'\n"
        "print(sorted(k for k in sys.modules if k.startswith('edgekit') and sys.modules[k] is not None))\n"
    )
    proc = subprocess.run([sys.executable, "-c", check], input=data, capture_output=True, cwd="/")
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode().strip() == "[]"


# --------------------------------------------------------------------------- a Ray instance here


def _process(args, cwd, env=None, **kwargs):
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0", **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "edgekit.cli", *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


@pytest.fixture(scope="module")
def local_and_ray(tmp_path_factory, exported_root):
    """The same recipe run here and through `--ray` (a Ray instance started by edgekit)."""
    folder = tmp_path_factory.mktemp("ray-local")
    path = _recipe(folder, _artifacts_in(exported_root))
    local = run_cli("run", str(path), "--json", "out/local.json", cwd=folder)
    assert local.returncode == 0, local.stderr
    ray = _process(["run", str(path), "--ray"], folder)
    out, err = ray.communicate(timeout=600)
    assert ray.returncode == 0, err
    return folder, json.loads((folder / "out" / "local.json").read_text()), json.loads((folder / "out" / "results.json").read_text()), err


def test_ray_run_records_what_a_local_run_records(local_and_ray):
    _, local, ray, progress = local_and_ray
    key = lambda r: (r["model"], r["variant"], r["backend"])  # noqa: E731
    assert sorted(map(key, local["results"])) == sorted(map(key, ray["results"]))
    here = {key(r): r for r in local["results"]}
    for row in ray["results"]:
        mine, theirs = row["accuracy"], here[key(row)]["accuracy"]
        for figure in ("images", "agreement", "kl_mean", "top1"):
            assert mine.get(figure) == pytest.approx(theirs.get(figure), abs=1e-9), (key(row), figure)
        assert row["environment"]["node"] and row["environment"]["kind"] == "host" and row["environment"]["unit"]
    assert all(u["state"] == "done" for u in ray["cluster"]["units"])
    assert "done (2 on this node)" in progress  # progress names the node and counts its cells


def test_resume_keeps_the_done_cells(local_and_ray):
    folder, _, first, _ = local_and_ray
    proc = _process(["run", "recipe.toml", "--ray", "--resume"], folder)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    again = json.loads((folder / "out" / "results.json").read_text())
    assert all(u.get("resumed") for u in again["cluster"]["units"])
    assert again["results"] == first["results"]


def test_ctrl_c_leaves_a_valid_results_file_that_resume_completes(tmp_path, exported_root):
    # each backend of a cell times for max_seconds: the first cell is still running when
    # Ctrl-C comes (the test sends it as soon as the results file says so), the second waits
    path = _recipe(tmp_path, _artifacts_in(exported_root, TINY.replace("iterations = 20", "iterations = 100000\nmax_seconds = 1.5")))
    proc = _process(["run", str(path), "--ray"], tmp_path, start_new_session=True)
    results = tmp_path / "out" / "results.json"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:  # the first cell is being timed
        if results.exists() and any(u["state"] == "running" for u in json.loads(results.read_text())["cluster"]["units"]):
            break
        assert proc.poll() is None, proc.communicate()[1]
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "--resume" in err
    states = [u["state"] for u in json.loads(results.read_text())["cluster"]["units"]]
    assert "interrupted" in states and set(states) <= {"done", "interrupted"}
    proc = _process(["run", str(path), "--ray", "--resume"], tmp_path)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    document = json.loads(results.read_text())
    assert [u["state"] for u in document["cluster"]["units"]] == ["done"] * len(states)
    assert len(document["results"]) == 4 and not any(r.get("error") for r in document["results"])


# --------------------------------------------------------------------------- a real cluster


LAB = TINY.replace("iterations = 20", "iterations = 100000\nmax_seconds = 2") + '\n[ray]\nkinds = ["edge", "pytorch=cpu_box"]\nretries = 2\n'


def _run_and_kill_a_worker(tmp_path, workers: dict[str, str], text: str):
    """A head that builds and times PyTorch ('cpu_box') and ``workers`` (name -> loopback
    address) offering 'edge'; the recipe runs there, and the first worker seen running the
    bundle runner is killed outright. Returns (the finished edgekit process's exit code and
    stderr, the victim's address, the results document)."""
    cluster = Cluster(tmp_path)
    try:
        cluster.start("head", f'{{"{BUILD_RESOURCE}": 1, "cpu_box": 1}}', head=True)
        for count, (name, ip) in enumerate(workers.items(), 2):
            cluster.start(name, '{"edge": 1}', ip=ip)
            cluster.wait_for_nodes(count)  # one at a time: two raylets starting at once on 2 cores can time out
        path = _recipe(tmp_path / "run", text)
        proc = _process(["run", str(path), "--ray", cluster.address], path.parent, env=cluster.env)
        victim, deadline = None, time.monotonic() + 300
        while victim is None and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()[1]
            victim = next((n for n in map(cluster.node_of, processes_running("edgekit.device_runner bench")) if n in workers), None)
            time.sleep(0.1)
        assert victim is not None, "no worker started timing"
        cluster.kill(victim)
        _, err = proc.communicate(timeout=600)
    finally:
        cluster.stop()
    return proc.returncode, err, workers[victim], json.loads((path.parent / "out" / "results.json").read_text())


def test_a_worker_dies_mid_run_and_its_cell_is_retried_on_another(tmp_path, exported_root):
    """Two 'edge' workers time ONNX Runtime from bundles; one dies, the other takes its cell."""
    text = _artifacts_in(exported_root, LAB) + '\n[model.squeezenet1_1]\nshared = "shared"\n'  # its bundle travels through a shared folder, the other's through Ray
    code, err, dead_ip, document = _run_and_kill_a_worker(tmp_path, {"a": "127.0.0.2", "b": "127.0.0.3"}, text)
    assert code == 0, err
    units = document["cluster"]["units"]
    assert len(units) == 4 and all(u["state"] == "done" for u in units), units
    retried = [u for u in units if u.get("attempts", 1) > 1]
    assert retried and all(u["kind"] == "edge" and dead_ip not in u["node"] for u in retried), units
    rows = document["results"]
    assert len(rows) == 4 and not any(r.get("error") for r in rows)
    for row in rows:
        edge = row["environment"]["node_ip"] in ("127.0.0.2", "127.0.0.3")
        assert edge == (row["backend"] == "onnxruntime")  # pytorch on the head, onnxruntime on the workers
        assert row["environment"]["kind"] == ("cpu_box" if row["backend"] == "pytorch" else "edge")
        assert row["accuracy"]["images"] == 7
    assert all(r["accuracy"]["agreement"] == 100.0 for r in rows if r["backend"] == "onnxruntime")  # vs the bundled PyTorch logits
    shared = sorted(p.name for p in (tmp_path / "run" / "shared").iterdir())
    # for the head's PyTorch cell, for the workers' (the bundle without its images, and the images, apart: once per node)
    assert [name.split("-")[0] for name in shared] == ["artifact", "bundle", "images"]
    assert all(name.endswith(".tar") for name in shared)


def test_the_only_worker_of_a_kind_dies_and_its_cells_fail_with_the_reason(tmp_path, exported_root):
    """A head and one 'edge' worker: when the worker dies there is nowhere to retry, so its
    cells become failed rows saying why, the head's cells finish, and the run exits 1."""
    code, err, _, document = _run_and_kill_a_worker(tmp_path, {"a": "127.0.0.2"}, _artifacts_in(exported_root, LAB) + "wait_for_kind = 3\n")
    assert code == 1 and "onnxruntime failed" in err and "results.json" in err, err
    units = {(u["model"], u["kind"]): u for u in document["cluster"]["units"]}
    assert len(units) == 4
    for (model, kind), unit in units.items():
        if kind == "cpu_box":
            assert unit["state"] == "done"
        else:
            assert unit["state"] == "failed" and "no node in the cluster offers 'edge' any more" in unit["error"], unit
    failed = [r for r in document["results"] if r.get("error")]
    assert sorted(r["model"] for r in failed) == ["mobilenet_v3_small", "squeezenet1_1"] and all(r["backend"] == "onnxruntime" for r in failed)


def test_shipped_files_are_checked_against_their_builders_hash(tiny_artifact, tmp_path):
    from edgekit.cluster.on_device import read_payload, sha256_bytes
    from edgekit.cluster.on_node import _received_artifact, _tar, _to_shared

    data = _tar(tiny_artifact.path)
    meta = {"artifact_key": tiny_artifact.key, "artifact_path": str(tmp_path / "elsewhere" / tiny_artifact.path.name), "artifact_sha256": sha256_bytes(data)}
    (tmp_path / "in").mkdir()
    received = _received_artifact(meta, data, tmp_path / "in")  # not where its builder left it: unpacked, verified
    assert received.key == tiny_artifact.key and received.path.parent == tmp_path / "in"
    middle = len(data) // 2
    damaged = data[:middle] + bytes([data[middle] ^ 1]) + data[middle + 1:]  # one bit
    with pytest.raises(RuntimeError, match="arrived damaged"):
        _received_artifact(meta, damaged, tmp_path / "in")
    shared = _to_shared(data, meta["artifact_sha256"], tmp_path / "shared", "artifact")
    assert read_payload("x", meta["artifact_sha256"], str(shared), None) == data
    shared.write_bytes(damaged)
    with pytest.raises(RuntimeError, match="x arrived damaged"):
        read_payload("x", meta["artifact_sha256"], str(shared), None)
