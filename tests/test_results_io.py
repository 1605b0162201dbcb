"""Results documents in and out: validation with JSON paths, atomic writes under
concurrency, read-only and full disks, and the fallback that keeps measured results."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import stat
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from edgekit.core import (
    AccuracyStats,
    BenchResult,
    DataError,
    EdgekitError,
    LatencyStats,
    PowerStats,
    ThroughputStats,
)
from edgekit.results.document import RESULTS_FORMAT as REPORT_FORMAT
from edgekit.results.document import results_document
from edgekit.results.document import RESULTS_FORMAT, SavedResults, WriteError, atomic_write_text, load_results_document, load_results_documents, normalise_results_document, save_results_or_raise, save_results_safely, validate_results_document, write_json_atomic
from edgekit.files import atomic_write_bytes, ensure_dir

REPO = Path(__file__).resolve().parent.parent
MACHINE = {"cpu": "AMD EPYC", "logical_cores": 2, "platform": "Linux-6.18-x86_64", "os": "Linux 6.18", "python": "3.11.7"}


def _result(model="mobilenet_v2", backend="onnxruntime", variant="fp32", p50=4.0, with_extras=True) -> BenchResult:
    latency = tuple(
        LatencyStats(b, 50, p50 * s, p50 * s * 1.1, p50 * s * 1.3, p50 * s * 1.02, b * 1000 / (p50 * s * 1.02), (p50 * s, p50 * s * 1.01))
        for b, s in ((1, 1.0), (8, 5.0))
    )
    return BenchResult(
        model=model, backend=backend, variant=variant, artifact_key="abc123", precision=variant,
        providers=("CPUExecutionProvider",), threads=None, latency=latency, peak_rss_mb=400.0, size_mb=13.6,
        accuracy=AccuracyStats(112, 71.4, 90.2, 0.2, 98.2, 1e-3, 0.4),
        environment={**MACHINE, "runtime": "onnxruntime 1.20"},
        throughput=(ThroughputStats(1, 4, 2, 1000, 2.0, 500.0),) if with_extras else (),
        power=(PowerStats("rapl", "package-0", 2, 1.5, 30.0, 45.0, 12.0, "counter", 1, None, None, None),) if with_extras else (),
    )


def _document() -> dict:
    results = [_result(), _result(backend="pytorch"), _result(variant="int8", p50=2.0)]
    return results_document(results, command="edgekit bench mobilenet_v2", extra={"reference": "mobilenet_v2"})


def _dump(document, path: Path) -> Path:
    path.write_text(json.dumps(document, indent=2))  # Python writes NaN/Infinity as a loader would meet them
    return path


def _no_temp_files(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


# =========================================================================== reading


def test_results_format_matches_report():
    assert RESULTS_FORMAT == REPORT_FORMAT


def test_round_trip_through_from_dict(tmp_path):
    document = _document()
    path = write_json_atomic(document, tmp_path / "results.json")
    loaded = load_results_document(path)
    rows = [BenchResult.from_dict(r) for r in loaded["results"]]
    assert [r.to_dict() for r in rows] == document["results"]
    assert load_results_documents([path, path]) == [loaded, loaded]


def _set(*keys_and_value):
    *keys, value = keys_and_value

    def mutate(document):
        target = document
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value

    return mutate


def _delete(*keys):
    def mutate(document):
        target = document
        for key in keys[:-1]:
            target = target[key]
        del target[keys[-1]]

    return mutate


MALFORMED = [
    ("results-not-a-list", _set("results", {"a": 1}), "results must be a list"),
    ("results-missing", _delete("results"), "results is missing"),
    ("results-empty-row", _set("results", [{}]), "results[0] is missing required fields model, backend, variant, artifact_key, precision, latency"),
    ("row-not-an-object", _set("results", 1, "oops"), "results[1] must be an object"),
    ("model-missing", _delete("results", 0, "model"), "results[0].model is missing (expected a non-empty string)"),
    ("model-empty", _set("results", 0, "model", ""), 'results[0].model must be a non-empty string, got ""'),
    ("backend-number", _set("results", 0, "backend", 3), "results[0].backend must be a non-empty string, got 3"),
    ("artifact-key-missing", _delete("results", 2, "artifact_key"), "results[2].artifact_key is missing"),
    ("p50-null", _set("results", 0, "latency", 0, "p50_ms", None), "results[0].latency[0].p50_ms must be a positive number, got null"),
    ("p50-zero", _set("results", 0, "latency", 0, "p50_ms", 0), "results[0].latency[0].p50_ms must be a positive number, got 0"),
    ("p50-negative", _set("results", 1, "latency", 1, "p50_ms", -3.5), "results[1].latency[1].p50_ms must be a positive number, got -3.5"),
    ("p50-nan", _set("results", 0, "latency", 0, "p50_ms", float("nan")), "results[0].latency[0].p50_ms must be a positive number, got NaN"),
    ("p90-infinity", _set("results", 0, "latency", 0, "p90_ms", float("inf")), "results[0].latency[0].p90_ms must be a positive number, got Infinity"),
    ("mean-minus-infinity", _set("results", 0, "latency", 1, "mean_ms", float("-inf")), "results[0].latency[1].mean_ms must be a positive number, got -Infinity"),
    ("p50-string", _set("results", 0, "latency", 0, "p50_ms", "4.0"), 'results[0].latency[0].p50_ms must be a positive number, got "4.0"'),
    ("p99-missing", _delete("results", 0, "latency", 0, "p99_ms"), "results[0].latency[0].p99_ms is missing"),
    ("latency-not-a-list", _set("results", 0, "latency", {"batch_size": 1}), "results[0].latency must be a list of objects, got an object"),
    ("latency-null", _set("results", 0, "latency", None), "results[0].latency must be a list of objects, got null"),
    ("latency-entry-number", _set("results", 0, "latency", [5]), "results[0].latency[0] must be an object, got 5"),
    ("batch-zero", _set("results", 0, "latency", 0, "batch_size", 0), "results[0].latency[0].batch_size must be a positive integer, got 0"),
    ("batch-float", _set("results", 0, "latency", 0, "batch_size", 1.5), "results[0].latency[0].batch_size must be a positive integer, got 1.5"),
    ("batch-string", _set("results", 0, "latency", 0, "batch_size", "1"), 'results[0].latency[0].batch_size must be a positive integer, got "1"'),
    ("batch-bool", _set("results", 0, "latency", 0, "batch_size", True), "results[0].latency[0].batch_size must be a positive integer, got true"),
    ("batch-repeated", _set("results", 0, "latency", 1, "batch_size", 1), "results[0].latency[1].batch_size 1 repeats results[0].latency[0]"),
    ("p50-rounds-bad", _set("results", 0, "latency", 0, "p50_rounds", [1.0, "x"]), 'results[0].latency[0].p50_rounds[1] must be a positive number, got "x"'),
    ("compute-p50-negative", _set("results", 0, "latency", 0, "compute_p50_ms", -1), "results[0].latency[0].compute_p50_ms must be a positive number or null"),
    ("top1-string", _set("results", 0, "accuracy", "top1", "high"), 'results[0].accuracy.top1 must be a percentage from 0 to 100 or null, got "high"'),
    ("top1-above-100", _set("results", 0, "accuracy", "top1", 150.0), "results[0].accuracy.top1 must be a percentage from 0 to 100 or null, got 150.0"),
    ("top5-negative", _set("results", 0, "accuracy", "top5", -1), "results[0].accuracy.top5 must be a percentage from 0 to 100 or null, got -1"),
    ("agreement-nan", _set("results", 2, "accuracy", "agreement", float("nan")), "results[2].accuracy.agreement must be a percentage from 0 to 100 or null, got NaN"),
    ("top1-drop-string", _set("results", 0, "accuracy", "top1_drop", "0.2"), "results[0].accuracy.top1_drop must be a number of points from -100 to 100 or null"),
    ("top1-ci-reversed", _set("results", 0, "accuracy", "top1_ci", [73.0, 69.0]), "results[0].accuracy.top1_ci must be a [low, high] pair of percentages from 0 to 100 or null, got a list of 2 items"),
    ("top1-ci-string", _set("results", 0, "accuracy", "top1_ci", "69-73"), 'results[0].accuracy.top1_ci must be a [low, high] pair of percentages from 0 to 100 or null, got "69-73"'),
    ("drop-ci-nan", _set("results", 0, "accuracy", "top1_drop_ci", [float("nan"), 1.0]), "results[0].accuracy.top1_drop_ci must be a [low, high] pair of points"),
    ("mean-kl-negative", _set("results", 0, "accuracy", "mean_kl", -0.1), "results[0].accuracy.mean_kl must be a number >= 0 or null, got -0.1"),
    ("images-string", _set("results", 0, "accuracy", "images", "many"), 'results[0].accuracy.images must be a non-negative integer, got "many"'),
    ("accuracy-number", _set("results", 0, "accuracy", 97.5), "results[0].accuracy must be an object or null, got 97.5"),
    ("providers-string", _set("results", 0, "providers", "CPUExecutionProvider"), "results[0].providers must be a list of strings or null"),
    ("threads-negative", _set("results", 0, "threads", -2), "results[0].threads must be a non-negative integer or null, got -2"),
    ("peak-rss-string", _set("results", 0, "peak_rss_mb", "400"), "results[0].peak_rss_mb must be a number >= 0 or null"),
    ("size-nan", _set("results", 0, "size_mb", float("nan")), "results[0].size_mb must be a number >= 0 or null, got NaN"),
    ("throughput-requests-zero", _set("results", 0, "throughput", 0, "requests", 0), "results[0].throughput[0].requests must be a positive integer, got 0"),
    ("power-load-above-100", _set("results", 0, "power", 0, "mean_gpu_load_pct", 120), "results[0].power[0].mean_gpu_load_pct must be a percentage from 0 to 100 or null, got 120"),
    ("power-energy-missing", _delete("results", 0, "power", 0, "energy_j"), "results[0].power[0].energy_j is missing"),
    ("environment-list", _set("results", 0, "environment", []), "results[0].environment must be an object or null"),
    ("error-number", _set("results", 0, "error", 5), "results[0].error must be a non-empty string or null, got 5"),
    ("machine-string", _set("machine", "x86"), 'machine must be an object or null, got "x86"'),
    ("machine-cpu-list", _set("machine", "cpu", ["a"]), "machine.cpu must be a string or a number or null, got a list of 1 item"),
    ("reference-number", _set("reference", 7), "reference must be a non-empty string or null, got 7"),
    ("created-number", _set("created", 2024), "created must be a string or null, got 2024"),
    ("format-missing", _delete("format"), "format is missing"),
    ("format-other", _set("format", "edgekit-results/2"), 'format must be "edgekit-results/1", got "edgekit-results/2"; written by a newer edgekit?'),
    ("format-number", _set("format", 1), 'format must be "edgekit-results/1", got 1'),
]


@pytest.mark.parametrize("name, mutate, expected", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_document_names_file_and_json_path(tmp_path, name, mutate, expected):
    document = _document()
    mutate(document)
    path = _dump(document, tmp_path / "new.json")
    with pytest.raises(DataError) as info:
        load_results_document(path)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    assert expected in message, message
    assert "\n" not in message


def test_several_problems_are_counted_on_one_line(tmp_path):
    document = _document()
    document["results"][0]["latency"][0]["p50_ms"] = None
    document["results"][1]["accuracy"]["top1"] = "high"
    document["results"][2]["latency"] = "fast"
    with pytest.raises(DataError, match=r"new\.json: results\[0\]\.latency\[0\]\.p50_ms must be a positive number, got null \(and 2 more problems\)$"):
        load_results_document(_dump(document, tmp_path / "new.json"))


def test_relative_path_is_named_as_given(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    document = _document()
    document["results"][0]["latency"][0]["p50_ms"] = None
    _dump(document, tmp_path / "new.json")
    with pytest.raises(DataError) as info:
        load_results_document("new.json")
    assert str(info.value) == "new.json: results[0].latency[0].p50_ms must be a positive number, got null"


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", "not a text file (byte 0x89 at offset 0 is not UTF-8)"),
        (b"\x00\x01\x02\xff", "not a text file"),
        (b"", "the file is empty"),
        (b"  \n", "the file is empty"),
        (b'{"format": "edgekit-results/1", "results": [', "not valid JSON (Expecting value at line 1 column 45)"),
        (b"{'format': 1}", "not valid JSON (Expecting property name enclosed in double quotes"),
        (b"[1, 2]", "not an edgekit results file (the top level is a list of 2 items, expected a JSON object)"),
        (b'"results"', 'not an edgekit results file (the top level is "results", expected a JSON object)'),
        (b"null", "not an edgekit results file (the top level is null"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"format": "edgekit-results/1", "results": [], "x": ' + b"9" * 5000 + b"}", "not valid JSON"),
    ],
    ids=["png", "binary", "empty", "blank", "truncated", "single-quotes", "list", "string", "null", "deep", "huge-int"],
)
def test_unreadable_content_is_one_line(tmp_path, content, expected):
    path = tmp_path / "new.json"
    path.write_bytes(content)
    with pytest.raises(DataError) as info:
        load_results_document(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and expected in message and "\n" not in message, message


def test_missing_file_and_folder_are_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"^cannot read results file missing\.json: No such file or directory$"):
        load_results_document("missing.json")
    (tmp_path / "folder.json").mkdir()
    with pytest.raises(DataError, match=r"^cannot read results file folder\.json: Is a directory$"):
        load_results_document("folder.json")


def test_byte_order_mark_is_accepted(tmp_path):
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(_document()).encode())
    assert load_results_document(path)["format"] == RESULTS_FORMAT


def _future_document() -> dict:
    """Unknown keys at every level, a failed row, nulls where the code tolerates them."""
    document = json.loads(json.dumps(_document()))
    document["schema_note"] = "from a newer edgekit"
    document["machine"]["gpu"] = {"name": "H200"}
    row = document["results"][0]
    row["new_row_field"] = [1, 2]
    row["latency"][0]["p999_ms"] = 9.9
    row["latency"][0]["p50_rounds"] = None
    row["accuracy"]["top1_ci"] = [69.0, 73.5]
    row["accuracy"]["top1_drop_ci"] = [-0.5, 1.1]
    row["accuracy"]["ci_method"] = "wilson"
    row["accuracy"]["future_interval"] = {"kind": "bootstrap"}
    row["accuracy"]["agreement_ci"] = None
    row["throughput"][0]["latency_ms"] = 3.0
    row["power"][0]["rail_voltage"] = 5.0
    row["providers"] = None
    row["environment"] = None
    document["results"][1]["accuracy"] = {"images": 112, "top1": 70.0}  # fields left out: null
    document["results"].append(
        {"model": "mobilenet_v2", "backend": "openvino", "variant": "fp32", "error": "openvino: device GPU not found", "latency": [], "accuracy": None}
    )
    document["results"].append(
        {"model": "mobilenet_v2", "backend": "tensorrt", "variant": "fp32", "error": "tensorrt is not installed", "latency": None}
    )
    return document


def test_unknown_keys_failed_rows_and_nulls_are_accepted(tmp_path):
    path = _dump(_future_document(), tmp_path / "future.json")
    raw = load_results_document(path, normalise=False)
    assert raw == json.loads(path.read_text())
    assert raw["results"][0]["accuracy"]["top1_ci"] == [69.0, 73.5]

    loaded = load_results_document(path)
    rows = [BenchResult.from_dict(r) for r in loaded["results"]]
    assert rows[0].accuracy.top1 == pytest.approx(71.4) and rows[0].providers == () and rows[0].environment == {}
    assert rows[0].accuracy.top1_ci == (69.0, 73.5) and rows[0].accuracy.drop_within_noise is True
    assert rows[0].latency[0].p50_rounds == ()
    assert rows[1].accuracy.top1 == 70.0 and rows[1].accuracy.mean_kl is None
    failed = [r for r in loaded["results"] if r.get("error")]
    assert [r["error"] for r in failed] == ["openvino: device GPU not found", "tensorrt is not installed"]
    assert rows[3].latency == () and rows[3].accuracy is None and rows[4].latency == () and rows[4].precision == "-"
    assert loaded["schema_note"] == "from a newer edgekit" and loaded["results"][0]["new_row_field"] == [1, 2]


def test_normalising_leaves_the_input_alone():
    document = _future_document()
    before = copy.deepcopy(document)
    validate_results_document(document, "future.json")
    normalise_results_document(document)
    assert document == before


def test_results_written_by_the_report_module_still_load(tmp_path):
    path = tmp_path / "old.json"
    path.write_text((REPO / "benchmarks" / "results" / "fp32_onnxruntime.json").read_text())
    loaded = load_results_document(path)
    assert all(BenchResult.from_dict(r) for r in loaded["results"])


# =========================================================================== writing


def test_write_json_atomic_writes_creates_folders_and_keeps_modes(tmp_path):
    target = tmp_path / "deep" / "er" / "results.json"
    assert write_json_atomic(_document(), target) == target
    assert json.loads(target.read_text()) == json.loads(json.dumps(_document()))
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600
    target.chmod(0o640)
    write_json_atomic({"format": RESULTS_FORMAT, "results": []}, target)
    assert stat.S_IMODE(target.stat().st_mode) == 0o640  # an existing file keeps its mode
    assert sorted(p.name for p in target.parent.iterdir()) == ["results.json"]


def test_text_and_bytes_are_written_as_given(tmp_path):
    atomic_write_text(tmp_path / "a.csv", "x,y\r\n1,2\r\n")
    assert (tmp_path / "a.csv").read_bytes() == b"x,y\r\n1,2\r\n"
    atomic_write_bytes(tmp_path / "a.png", b"\x89PNG\x00")
    assert (tmp_path / "a.png").read_bytes() == b"\x89PNG\x00"


def test_unserialisable_document_writes_nothing(tmp_path):
    with pytest.raises(TypeError):
        write_json_atomic({"x": object()}, tmp_path / "r.json")
    assert list(tmp_path.iterdir()) == []


def test_failures_without_root_or_mounts_are_one_line(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(WriteError) as info:
        write_json_atomic(_document(), blocker / "results.json")
    assert isinstance(info.value, EdgekitError) and str(info.value).startswith(f"cannot write {blocker / 'results.json'}: ")
    with pytest.raises(WriteError, match=r": Is a directory$"):
        write_json_atomic(_document(), tmp_path)  # a folder in the way of the file
    with pytest.raises(WriteError, match=r"File exists|Not a directory"):
        ensure_dir(blocker / "sub")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def _document_of_size(writer: int, n: int, kb: int = 4) -> dict:
    return {"format": RESULTS_FORMAT, "writer": writer, "n": n, "results": [], "padding": "x" * (kb * 1024 * (1 + (writer + n) % 3))}


def _check_final(path: Path) -> dict:
    final = json.loads(path.read_text())
    assert final["format"] == RESULTS_FORMAT and len(final["padding"]) % 1024 == 0
    assert _no_temp_files(path.parent) == [] and [p.name for p in path.parent.iterdir()] == [path.name]
    return final


class _Reader(threading.Thread):
    """Reads the target in a loop while writers run: every read must be a whole document."""

    def __init__(self, path: Path):
        super().__init__(daemon=True)
        self.path, self.stop, self.reads, self.bad = path, threading.Event(), 0, []

    def run(self):
        while not self.stop.is_set():
            try:
                text = self.path.read_text()
            except FileNotFoundError:
                continue
            try:
                json.loads(text)
                self.reads += 1
            except ValueError as e:
                self.bad.append(f"{e} ({len(text)} chars)")


def test_two_hundred_concurrent_threads(tmp_path):
    target = tmp_path / "out" / "results.json"
    writers, rounds = 200, 2
    barrier = threading.Barrier(writers)
    errors: list[BaseException] = []

    def write(i: int):
        try:
            barrier.wait()
            for n in range(rounds):
                write_json_atomic(_document_of_size(i, n), target)
        except BaseException as e:  # noqa: BLE001 - collected and asserted below
            errors.append(e)

    reader = _Reader(target)
    reader.start()
    threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    reader.stop.set()
    reader.join()
    assert errors == []
    assert reader.bad == [] and reader.reads > 0
    final = _check_final(target)
    assert 0 <= final["writer"] < writers


WRITER_SCRIPT = """
import sys
from pathlib import Path
from edgekit.results.document import write_json_atomic
target, writer, count = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
sys.stdin.readline()  # start together
for n in range(count):
    write_json_atomic({"format": "edgekit-results/1", "writer": writer, "n": n, "results": [],
                       "padding": "x" * (4096 * (1 + (writer + n) % 3))}, target)
print("ok", writer)
"""


def test_processes_and_threads_writing_the_same_file(tmp_path):
    target = tmp_path / "results.json"
    processes, per_process = 8, 50
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER_SCRIPT, str(target), str(i), str(per_process)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        for i in range(processes)
    ]
    reader = _Reader(target)
    reader.start()
    thread_errors: list[BaseException] = []

    def write(i: int):
        try:
            for n in range(per_process):
                write_json_atomic(_document_of_size(100 + i, n), target)
        except BaseException as e:  # noqa: BLE001
            thread_errors.append(e)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(4)]
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    for t in threads:
        t.start()
    outputs = [p.communicate(timeout=300) for p in procs]
    for t in threads:
        t.join()
    reader.stop.set()
    reader.join()
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0 and out.startswith("ok"), err
    assert thread_errors == []
    assert reader.bad == []
    _check_final(target)


# --------------------------------------------------------------------------- read-only and full disks


@contextlib.contextmanager
def _tmpfs(folder: Path, options: str):
    folder.mkdir()
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; skipped (not running as root)")
    try:
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True, text=True)
    except FileNotFoundError:
        pytest.skip("no mount command here")
    if proc.returncode != 0:
        pytest.skip(f"mount is not permitted here ({proc.stderr.strip() or proc.returncode})")
    try:
        yield folder
    finally:
        if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder nobody can write: a read-only tmpfs as root (permission bits do not stop
    root), else a folder without write permission."""
    folder = tmp_path / "read-only"
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        with _tmpfs(folder, "ro,size=1m"):
            yield folder, "Read-only file system"
    else:
        folder.mkdir()
        folder.chmod(0o555)
        try:
            yield folder, "Permission denied"
        finally:
            folder.chmod(0o755)


@pytest.fixture
def full_dir(tmp_path):
    with _tmpfs(tmp_path / "full", "size=64k") as folder:
        yield folder


def _big_document() -> dict:
    document = _document()
    document["results"] = document["results"] * 60  # well over 64 KiB
    assert len(json.dumps(document)) > 200 * 1024
    return document


def test_read_only_folder_is_one_line_and_leaves_nothing(read_only_dir):
    folder, reason = read_only_dir
    target = folder / "results.json"
    with pytest.raises(WriteError) as info:
        write_json_atomic(_document(), target)
    assert str(info.value) == f"cannot write {target}: {reason}"
    assert info.value.reason == reason and isinstance(info.value, EdgekitError)
    assert list(folder.iterdir()) == []


def test_full_disk_keeps_the_old_file_and_leaves_no_temp_file(full_dir):
    target = full_dir / "results.json"
    small = _document()
    write_json_atomic(small, target)
    with pytest.raises(WriteError) as info:
        write_json_atomic(_big_document(), target)
    assert str(info.value) == f"cannot write {target}: No space left on device"
    assert [p.name for p in full_dir.iterdir()] == ["results.json"]
    assert json.loads(target.read_text()) == json.loads(json.dumps(small))  # the old file, whole
    with pytest.raises(WriteError, match="No space left on device"):
        atomic_write_bytes(full_dir / "plot.png", b"\x89PNG" + bytes(300 * 1024))
    assert not (full_dir / "plot.png").exists()  # no 0-byte PNG
    assert [p.name for p in full_dir.iterdir()] == ["results.json"]


def test_save_results_falls_back_when_the_folder_is_read_only(read_only_dir, tmp_path):
    folder, reason = read_only_dir
    document = _document()
    saved = save_results_safely(document, folder / "results.json", fallback_dirs=[tmp_path / "fallback"])
    assert isinstance(saved, SavedResults) and saved.error == reason
    path, error = saved
    assert path.parent == tmp_path / "fallback" and path.name.startswith("edgekit-results-") and path.suffix == ".json"
    assert load_results_document(path)["results"] == json.loads(json.dumps(document["results"]))
    again = save_results_safely(document, folder / "results.json", fallback_dirs=[tmp_path / "fallback"])
    assert again.path != path  # never overwrites an earlier fallback
    with pytest.raises(WriteError) as info:
        save_results_or_raise(document, folder / "results.json", fallback_dirs=[tmp_path / "fallback"])
    assert str(info.value).startswith(f"cannot write results to {folder / 'results.json'} ({reason}); they were saved to {tmp_path / 'fallback'}/edgekit-results-")


def test_save_results_default_fallback_is_the_temp_folder(read_only_dir):
    folder, reason = read_only_dir
    path, error = save_results_safely(_document(), folder / "results.json")
    try:
        assert error == reason and path.parent == Path(tempfile.gettempdir())
        assert load_results_document(path)["format"] == RESULTS_FORMAT
    finally:
        path.unlink()


def test_save_results_falls_back_on_a_full_disk(full_dir, tmp_path):
    path, error = save_results_safely(_big_document(), full_dir / "results.json", fallback_dirs=[tmp_path])
    assert error == "No space left on device" and path.parent == tmp_path
    assert list(full_dir.iterdir()) == []
    assert len(load_results_document(path)["results"]) == 180


def test_save_results_where_nothing_is_writable(read_only_dir, tmp_path):
    folder, reason = read_only_dir
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(WriteError) as info:
        save_results_safely(_document(), folder / "results.json", fallback_dirs=[folder, blocker])
    message = str(info.value)
    assert message.startswith(f"cannot write results to {folder / 'results.json'} ({reason}); no fallback location could take them either")
    assert "\n" not in message and info.value.reason == reason
    assert list(folder.iterdir()) == []


def test_save_results_where_asked_returns_no_error(tmp_path):
    assert save_results_safely(_document(), tmp_path / "r.json") == (tmp_path / "r.json", None)
    assert save_results_or_raise(_document(), tmp_path / "r2.json") == tmp_path / "r2.json"
