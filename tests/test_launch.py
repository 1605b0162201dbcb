"""One launcher protocol at recipe level (edgekit.launch): here, over ssh and on Ray, each
makes its ledger and runs what the ledger has left, so `--resume` works for all three.
No device, no cluster, no model: the cell's bench is replaced by rows made here."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from edgekit.cluster.launcher import RayLauncher
from edgekit.core import BenchResult, EdgekitError
from edgekit.launch import Launcher, run_recipe
from edgekit.launch.local import LocalLauncher
from edgekit.launch.ssh import SshLauncher
from edgekit.options import Settings
from edgekit.plan import Cell

RECIPE_LAUNCHERS = (LocalLauncher, SshLauncher, RayLauncher)


@pytest.mark.parametrize("kind", RECIPE_LAUNCHERS, ids=lambda k: k.__name__)
def test_every_launcher_speaks_the_one_protocol(kind):
    for name in ("check_cells", "ledger", "run"):
        assert callable(getattr(kind, name, None)), f"{kind.__name__} has no {name}()"
    for attribute in ("name", "resume_hint"):
        assert attribute in kind.__dataclass_fields__, f"{kind.__name__} has no {attribute}"
    assert Launcher.__doc__


def _cells(n: int = 3) -> tuple[Cell, ...]:
    settings = Settings(backends=("onnxruntime",))
    return tuple(Cell(f"model{i}", "int8", ("onnxruntime",), settings) for i in range(n))


def _fake_bench(calls: list, fail: set[str]):
    """What plan.bench_cell returns, without building: one row per backend (its error when
    the cell is in ``fail``), and an INT8 budget missed on model1."""

    def bench_cell(cell, launcher, progress):
        calls.append(cell.model)
        if cell.model in fail:
            raise EdgekitError(f"{cell.model}: cannot build")
        rows = [BenchResult.failed(cell.model, b, cell.variant, "k" + cell.model, "no runtime here") for b in cell.backends]
        run = SimpleNamespace(results=rows, image_summary={"description": "none", "count": 0}, parity=())
        missed = cell.model == "model1"
        return SimpleNamespace(run=run, artifact=SimpleNamespace(key="k" + cell.model), budget_met=not missed,
                               note=f"{cell.label}: INT8 budget not met on the calibration images" if missed else None)

    return bench_cell


def _ssh_launcher() -> SshLauncher:
    from edgekit.remote import RemoteRequest

    return SshLauncher(RemoteRequest.parse("pi@device.local", (), "python3", "edgekit-bundles"), Settings())


@pytest.mark.parametrize("make", [LocalLauncher, _ssh_launcher], ids=["local", "ssh"])
def test_a_run_resumes_with_the_launcher_that_wrote_it(make, tmp_path, monkeypatch):
    import edgekit.launch.local as local

    calls: list[str] = []
    cells, output = _cells(), tmp_path / "results.json"
    monkeypatch.setattr(local, "bench_cell", _fake_bench(calls, fail={"model2"}))
    launcher = make()
    outcome = run_recipe(cells, launcher, output, resume=False, command="edgekit run r.toml", extra={"recipe": "r.toml"})
    assert calls == ["model0", "model1", "model2"]
    document = json.loads(output.read_text())
    assert document["cluster"]["launcher"] == launcher.name
    assert [u["state"] for u in document["cluster"]["units"]] == ["done", "done", "failed"]
    assert outcome.budget_missed == ["model1 int8"]  # a structured field, not a note to search
    assert len(outcome.failed) == 3

    calls.clear()
    monkeypatch.setattr(local, "bench_cell", _fake_bench(calls, fail=set()))
    again = run_recipe(cells, make(), output, resume=True, command="edgekit run r.toml --resume", extra={"recipe": "r.toml"})
    assert calls == ["model2"]  # the done cells are kept, the failed one runs again
    document = json.loads(output.read_text())
    assert [u["state"] for u in document["cluster"]["units"]] == ["done"] * 3
    assert [bool(u.get("resumed")) for u in document["cluster"]["units"]] == [True, True, False]
    assert again.budget_missed == []


def test_a_missed_budget_fails_a_strict_run_only(tmp_path, monkeypatch):
    import edgekit.launch.local as local
    from edgekit.api import RunPlan

    calls: list[str] = []
    monkeypatch.setattr(local, "bench_cell", _fake_bench(calls, fail=set()))
    cells = _cells(2)
    outcome = run_recipe(cells, LocalLauncher(), tmp_path / "r.json", resume=False, command=None, extra={})
    outcome.ledger.rows.clear()  # no failed rows: only the budget decides
    recipe = SimpleNamespace(path=Path("r.toml"), reference=None)
    RunPlan(recipe, cells, outcome.ledger.path, LocalLauncher()).raise_for_failures(outcome)
    strict = tuple(Cell(c.model, c.variant, c.backends, c.settings.replace(strict=True)) for c in cells)
    with pytest.raises(EdgekitError, match=r"INT8 budget not met for model1 int8 \(strict\)"):
        RunPlan(recipe, strict, outcome.ledger.path, LocalLauncher()).raise_for_failures(outcome)


def test_ray_units_are_per_kind_and_resume_on_ray(tmp_path):
    """The Ray launcher's ledger: one unit per cell and device kind (no cluster needed)."""
    pytest.importorskip("ray")
    settings = Settings(backends=("pytorch", "onnxruntime"), device_kinds=("edge", "pytorch=cpu_box"))
    cells = (Cell("m", "fp32", ("pytorch", "onnxruntime"), settings),)
    ledger = RayLauncher("local").ledger(cells, tmp_path / "r.json", command=None, extra={}, resume=False)
    assert sorted(u.kind for u in ledger.units) == ["cpu_box", "edge"]
    assert not ledger.local and ledger.extra["cluster"]["address"] == "a local Ray instance"


def test_a_node_receives_the_images_once_and_checks_them_at_each_use(tmp_path):
    """Every cell bundles the same images: on Ray they travel apart from the bundle, and a
    timing node keeps them under their hash (cluster/on_device.node_images)."""
    import io
    import tarfile

    from edgekit.cluster.on_device import node_images, sha256_bytes
    from edgekit.cluster.on_node import _tar

    bundle = tmp_path / "bundle"
    (bundle / "images" / "cls").mkdir(parents=True)
    (bundle / "images" / "cls" / "a.jpg").write_bytes(b"x" * 100)
    (bundle / "model.onnx").write_bytes(b"onnx")
    names = tarfile.open(fileobj=io.BytesIO(_tar(bundle, leave_out=("images",)))).getnames()
    assert names == ["model.onnx"]  # the bundle travels without its images
    data = _tar(bundle / "images")
    meta = {"images_sha256": sha256_bytes(data)}
    fetched: list[int] = []

    def fetch():
        fetched.append(1)
        return data

    cache = tmp_path / "cache"
    assert node_images(meta, fetch, cache) == data and node_images(meta, fetch, cache) == data
    assert len(fetched) == 1  # once per node, not once per cell
    (cache / f"{meta['images_sha256']}.tar").write_bytes(b"damaged")
    assert node_images(meta, fetch, cache) == data and len(fetched) == 2  # a damaged copy is received again
    with pytest.raises(RuntimeError, match="arrived damaged"):
        node_images({"images_sha256": "0" * 64}, fetch, tmp_path / "elsewhere")
    assert node_images({}, fetch, cache) is None  # a bundle with its images inside
