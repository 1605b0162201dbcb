"""Power and memory telemetry: the tegrastats parser on lines recorded on real Jetson boards
(tests/data/tegrastats, each file names its source), energy arithmetic, RAPL counters on a
fake sysfs tree, the tegrastats sampler against a stand-in executable that replays the
recorded lines, and the worker putting it all into the results. NVML tests need a GPU."""

import importlib.util
import json
import os
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, assert_one_line_error, run_cli
from edgekit import telemetry
from edgekit.timing import TimingOptions, time_session
from edgekit.core import BackendUnavailableError, BenchResult, PowerStats, Preprocessing, UsageError
from edgekit.results.tables import markdown_table, text_table
from edgekit.telemetry import (
    NvmlMonitor,
    PowerMonitor,
    RaplMonitor,
    TegrastatsMonitor,
    check_power_source,
    counter_delta,
    gpu_memory_mb,
    integrate_power,
    nvml_unavailable,
    open_power_monitor,
    parse_tegrastats_line,
    rapl_domains,
    rapl_unavailable,
    summarise_tegrastats,
)

RECORDED = REPO / "tests" / "data" / "tegrastats"


def recorded_lines(name: str) -> list[str]:
    return [line for line in (RECORDED / name).read_text().splitlines() if line.strip() and not line.startswith("#")]


# --------------------------------------------------------------------------- parser


@pytest.mark.parametrize("name", sorted(p.name for p in RECORDED.glob("*.txt")))
def test_every_recorded_line_gives_ram_loads_and_a_total_power(name):
    lines = recorded_lines(name)
    assert lines
    for line in lines:
        sample = parse_tegrastats_line(line)
        assert sample is not None and sample.total is not None, line
        assert 0 < sample.ram_used_mb < sample.ram_total_mb
        assert sample.cpu_load_pct and sample.gpu_load_pct is not None
        assert all(name not in ("RAM", "SWAP", "IRAM") for name, _ in sample.rails_mw)


def test_nano_pom_rails_without_units():
    s = parse_tegrastats_line(recorded_lines("nano_jp461.txt")[0])
    assert s.timestamp is None
    assert (s.ram_used_mb, s.ram_total_mb) == (1923, 3964)
    assert s.rails_mw == (("POM_5V_IN", 1750), ("POM_5V_GPU", 0), ("POM_5V_CPU", 366))
    assert s.total == ("POM_5V_IN", 1750.0)  # the input rail, not the running average (1628)
    assert s.cpu_load_pct == (5, 4, 3, 6) and s.gpu_load_pct == 0


def test_xavier_nx_jetpack5_timestamp_mw_and_bracketed_gpu_frequency():
    s = parse_tegrastats_line(recorded_lines("xavier_nx_jp512.txt")[0])
    assert s.timestamp == datetime(2024, 7, 9, 13, 31, 31)
    assert (s.ram_used_mb, s.ram_total_mb) == (3168, 6851)
    assert s.rails_mw == (("VDD_IN", 2763), ("VDD_CPU_GPU_CV", 650), ("VDD_SOC", 650))
    assert s.total == ("VDD_IN", 2763.0)
    assert s.gpu_load_pct == 0  # "GR3D_FREQ 0%@[114]"
    assert s.cpu_load_pct == (23, 17, 16, 13, 23, 10)


def test_tx2_input_rail_among_six():
    s = parse_tegrastats_line(recorded_lines("tx2_jp4.txt")[0])
    assert dict(s.rails_mw) == {
        "VDD_SYS_GPU": 153, "VDD_SYS_SOC": 536, "VDD_4V0_WIFI": 633, "VDD_IN": 3140, "VDD_SYS_CPU": 536, "VDD_SYS_DDR": 557,
    }
    assert s.total == ("VDD_IN", 3140.0)


def test_boards_without_an_input_rail_sum_their_rails():
    xavier = parse_tegrastats_line(recorded_lines("agx_xavier_jp42.txt")[0])
    assert xavier.total == ("GPU+CPU+SOC+CV+VDDRQ+SYS5V", 463 + 618 + 2936 + 0 + 309 + 3306)
    assert xavier.cpu_load_pct == (0,) * 8 and xavier.ram_used_mb == 14700
    orin = parse_tegrastats_line(recorded_lines("agx_orin_jp6.txt")[0])
    assert orin.timestamp == datetime(2025, 9, 1, 10, 55, 25)
    assert orin.total == ("VDD_GPU_SOC+VDD_CPU_CV+VIN_SYS_5V0", 1995 + 0 + 2524)
    assert orin.cpu_load_pct == (0,) * 8 + (None,) * 4  # four cores "off"


def test_orin_nano_jetpack6_line():
    s = parse_tegrastats_line(recorded_lines("orin_nano_jp621.txt")[0])
    assert s.timestamp == datetime(2026, 4, 27, 14, 59, 41)
    assert (s.ram_used_mb, s.ram_total_mb) == (775, 7620)
    assert s.rails_mw == (("VDD_IN", 4761), ("VDD_CPU_GPU_CV", 515), ("VDD_SOC", 1428))
    assert s.cpu_load_pct == (1, 0, 0, 0, 0, 0) and s.gpu_load_pct == 0


def test_noise_is_not_a_sample():
    assert parse_tegrastats_line("") is None
    assert parse_tegrastats_line("tegrastats: permission denied") is None


# --------------------------------------------------------------------------- energy arithmetic


def _orin_nano_run():
    """The recorded Orin Nano lines, timed by their own timestamps (seconds from the first)."""
    samples = [parse_tegrastats_line(line) for line in recorded_lines("orin_nano_jp621.txt")]
    first = samples[0].timestamp
    return [((s.timestamp - first).total_seconds(), s) for s in samples]


def test_recorded_sequence_summary():
    run = _orin_nano_run()
    assert [t for t, _ in run] == [0, 1, 2, 73, 74, 75]
    stats = summarise_tegrastats(run, 0.0, 2.0, inferences=100)
    assert stats.source == "tegrastats" and stats.rail == "VDD_IN" and stats.energy_method == "sampled"
    assert stats.energy_j == pytest.approx(2 * 4.761)
    assert stats.mean_power_w == pytest.approx(4.761)
    assert stats.energy_per_inference_mj == pytest.approx(95.22)
    assert (stats.samples, stats.peak_ram_mb, stats.mean_gpu_load_pct) == (3, 775.0, 0.0)


def test_integration_interpolates_between_samples_and_holds_at_the_edges():
    run = _orin_nano_run()
    # 1.5 s -> 2 s at 4.761 W, 2 s -> 73 s linear up to 6.626 W, 73 s -> 73.5 s at 6.626 W
    expected = 0.5 * 4.761 + 71 * (4.761 + 6.626) / 2 + 0.5 * 6.626
    stats = summarise_tegrastats(run, 1.5, 73.5, inferences=1)
    assert stats.energy_j == pytest.approx(expected)
    assert stats.mean_power_w == pytest.approx(expected / 72)
    assert stats.samples == 2 and stats.peak_ram_mb == 779.0
    assert integrate_power([0.0], [2.0], -1.0, 0.5) == pytest.approx(3.0)  # one reading, held
    assert integrate_power([], [], 0.0, 1.0) == 0.0


def test_rapl_counter_wraps_around():
    assert counter_delta(100, 5_100, 1_000_000) == 5_000
    assert counter_delta(999_000, 400, 1_000_000) == 1_400


def _rapl_domain(root: Path, folder: str, name: str, energy: int, wrap: int) -> Path:
    d = root / folder
    d.mkdir(parents=True)
    (d / "name").write_text(name + "\n")
    (d / "energy_uj").write_text(f"{energy}\n")
    (d / "max_energy_range_uj").write_text(f"{wrap}\n")
    return d / "energy_uj"


def test_rapl_reads_package_domains_across_a_wrap(tmp_path):
    pkg0 = _rapl_domain(tmp_path, "intel-rapl:0", "package-0", 999_000, 1_000_000)
    pkg1 = _rapl_domain(tmp_path, "intel-rapl:1", "package-1", 100, 2_000_000)
    _rapl_domain(tmp_path, "intel-rapl:0:0", "core", 5, 1_000_000)  # part of package-0
    _rapl_domain(tmp_path, "intel-rapl:2", "psys", 7, 1_000_000)  # overlaps the packages
    assert [d.name for d in rapl_domains(tmp_path)] == ["package-0", "package-1"]
    assert rapl_unavailable(tmp_path) is None

    monitor = open_power_monitor("rapl", rapl_root=tmp_path)
    assert isinstance(monitor, RaplMonitor)
    with monitor:
        monitor.begin()
        pkg0.write_text("999500\n")
        monitor.read()  # what the slow poll does between the marks
        pkg0.write_text("400\n")  # wrapped: +900
        pkg1.write_text("5100\n")
        monitor.end()
    stats = monitor.summary(inferences=8)
    assert stats.source == "rapl" and stats.rail == "package-0+package-1" and stats.energy_method == "counter"
    assert stats.energy_j == pytest.approx((500 + 900 + 5_000) / 1e6)
    assert stats.energy_per_inference_mj == pytest.approx(6_400 / 1e6 * 1000 / 8)
    assert stats.mean_power_w == pytest.approx(stats.energy_j / stats.seconds)


def test_unreadable_rapl_is_unavailable_not_an_error(tmp_path):
    assert "no RAPL domains" in rapl_unavailable(tmp_path / "none")
    folder = tmp_path / "intel-rapl:0"
    folder.mkdir()
    (folder / "name").write_text("package-0\n")  # energy_uj missing, as when it is root-only
    assert rapl_domains(tmp_path) == []
    assert "not readable" in rapl_unavailable(tmp_path)
    with pytest.raises(BackendUnavailableError, match="--power rapl"):
        check_power_source("rapl", rapl_root=tmp_path)


# --------------------------------------------------------------------------- choosing a source


def test_auto_falls_back_to_a_monitor_that_reads_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no tegrastats
    monkeypatch.setattr(telemetry, "nvml_unavailable", lambda device_index=0: "no GPU here")
    monitor = open_power_monitor("auto", rapl_root=tmp_path / "no-powercap")
    assert type(monitor) is PowerMonitor and monitor.source == "off"
    with monitor:
        monitor.begin()
        monitor.end()
    assert monitor.summary(inferences=10) is None


def test_explicit_sources_that_cannot_be_read_fail_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(BackendUnavailableError, match="no tegrastats on PATH"):
        check_power_source("tegrastats")
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml fails
    with pytest.raises(BackendUnavailableError, match="pip install nvidia-ml-py"):
        check_power_source("nvml")
    with pytest.raises(UsageError, match="unknown power source"):
        check_power_source("joulemeter")
    check_power_source("auto")
    check_power_source("off")


@pytest.mark.skipif(importlib.util.find_spec("pynvml") is not None, reason="nvidia-ml-py is installed here")
def test_cli_names_the_missing_nvml_package(tmp_path):
    proc = run_cli("bench", "--power", "nvml", "--backend", "onnxruntime", cwd=tmp_path, timeout=120)
    assert_one_line_error(proc, "--power nvml", "pip install nvidia-ml-py", code=2)


def test_gpu_memory_is_none_without_nvml():
    if nvml_unavailable() is None:
        pytest.skip("NVML answers here")
    assert gpu_memory_mb() is None
    assert gpu_memory_mb(pid=os.getpid()) is None


# --------------------------------------------------------------------------- the sampler


@pytest.fixture
def fake_tegrastats(tmp_path, monkeypatch):
    """A stand-in `tegrastats` on PATH replaying the recorded Orin Nano lines every --interval ms."""
    folder = tmp_path / "bin"
    folder.mkdir()
    script = folder / "tegrastats"
    script.write_text(
        f"#!{sys.executable}\n"
        "import os, sys, time\n"
        "interval = int(sys.argv[sys.argv.index('--interval') + 1]) / 1000\n"
        "lines = [l for l in open(os.environ['FAKE_TEGRASTATS_LINES']) if l.strip() and not l.startswith('#')]\n"
        "i = 0\n"
        "while True:\n"
        "    sys.stdout.write(lines[i % len(lines)].rstrip('\\n') + '\\n')\n"
        "    sys.stdout.flush()\n"
        "    i += 1\n"
        "    time.sleep(interval)\n"
    )
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_TEGRASTATS_LINES", str(RECORDED / "orin_nano_jp621.txt"))
    return script


def test_tegrastats_sampler_end_to_end(fake_tegrastats):
    monitor = open_power_monitor("auto", gpu=False, interval_ms=50)
    assert isinstance(monitor, TegrastatsMonitor)
    with monitor:
        time.sleep(0.4)  # like the warm-up: the process starts and prints
        monitor.begin()
        time.sleep(0.6)
        monitor.end()
    assert monitor.returncode is not None  # the process was ended with the block
    stats = monitor.summary(inferences=60)
    assert stats.source == "tegrastats" and stats.rail == "VDD_IN"
    assert stats.samples >= 3
    assert 4.761 <= stats.mean_power_w <= 6.626
    assert stats.energy_j == pytest.approx(stats.mean_power_w * stats.seconds)
    assert stats.energy_per_inference_mj == pytest.approx(stats.energy_j * 1000 / 60)
    assert stats.peak_ram_mb in (775.0, 779.0)


class _Marks(PowerMonitor):
    def __init__(self, calls):
        super().__init__()
        self.calls = calls
        self.at = {}

    def begin(self):
        self.at["begin"] = len(self.calls)
        super().begin()

    def end(self):
        self.at["end"] = len(self.calls)
        super().end()


def test_time_session_marks_the_timed_runs_only():
    calls = []
    monitor = _Marks(calls)
    with monitor:
        stats = time_session(calls.append, np.zeros((1, 3, 4, 4), np.float32), 2, TimingOptions(warmup=3, iterations=7), power=monitor)
    assert monitor.at == {"begin": 3, "end": 10} and stats.iterations == 7


def test_worker_records_power_per_batch_size(fake_tegrastats, tmp_path, monkeypatch):
    from edgekit import worker
    from edgekit.data import resolve_images

    from edgekit.backends.base import SessionBase

    class Session(SessionBase):
        precision, providers, threads, device = "fp32", ("fake",), 1, "cpu"

        def run(self, batch):
            time.sleep(0.01)
            return np.zeros((len(batch), 10), np.float32)

    from edgekit.backends.base import BackendBase

    class Backend(BackendBase):
        def check_available(self):
            pass

        def compile(self, artifact, options):
            return artifact

        def load(self, artifact, options):
            return Session()

        def size_mb(self, artifact):
            return None

    monkeypatch.setattr(worker, "get_backend", lambda name: Backend())
    folder = tmp_path / "artifact"
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({
        "key": "fake", "model": {"name": "fake"}, "input": {"shape": ["batch", 3, 32, 32]},
        "preprocessing": Preprocessing(input_size=32, resize_size=36).to_dict(),
    }))
    job = {
        "backend": "onnxruntime",
        "artifact": str(folder),
        "options": {},
        "views": str(worker.write_views(resolve_images(views_per_image=1, limit=2), tmp_path)),
        "timing": {"batch_sizes": [1, 2], "warmup": 2, "iterations": 20, "max_seconds": 5.0, "min_iterations": 5, "repeats": 1},
        "power": "tegrastats",
        "logits_out": str(tmp_path / "logits.f32"),
        "rows_out": str(tmp_path / "rows.npy"),
        "result_out": str(tmp_path / "result.json"),
    }
    result = worker.run_job(job)
    power = [PowerStats(**p) for p in result["power"]]
    assert [p.batch_size for p in power] == [1, 2]
    assert all(p.source == "tegrastats" and p.rail == "VDD_IN" for p in power)
    assert power[1].energy_per_inference_mj == pytest.approx(power[1].energy_j * 1000 / (20 * 2))


# --------------------------------------------------------------------------- results and tables


def _result(power=()):
    from edgekit.core import LatencyStats

    latency = (LatencyStats(1, 20, 2.0, 2.5, 3.0, 2.1, 476.0), LatencyStats(4, 20, 6.0, 6.5, 7.0, 6.1, 655.0))
    return BenchResult("m", "onnxruntime", "fp32", "k", "fp32", (), 1, latency, 100.0, 1.0, None, power=power)


def test_power_round_trips_and_shows_in_tables_only_when_read():
    stats = PowerStats("tegrastats", "VDD_IN", 12, 0.5, 5.2, 2.6, 130.0, batch_size=1, peak_ram_mb=775.0, mean_gpu_load_pct=14.0)
    with_power = _result((stats,))
    assert BenchResult.from_dict(json.loads(json.dumps(with_power.to_dict()))) == with_power
    assert BenchResult.from_dict({k: v for k, v in _result().to_dict().items() if k != "power"}).power == ()
    table = markdown_table([with_power])
    assert "mean W" in table and "mJ/img" in table and "| 5.20 | 130 |" in table
    assert "| - | - |" in table  # batch 4 was not read
    assert "mJ/img" not in markdown_table([_result()]) and "mJ/img" not in text_table([_result()], "t")
    assert "mJ/img" in text_table([with_power], "t")


# --------------------------------------------------------------------------- NVML (needs a GPU)


def _nvml_or_skip():
    reason = nvml_unavailable()
    if reason:
        pytest.skip(reason)


@pytest.mark.gpu
def test_nvml_reads_power_and_memory_of_the_gpu():
    _nvml_or_skip()
    assert gpu_memory_mb() > 0
    with NvmlMonitor() as monitor:
        monitor.begin()
        time.sleep(0.5)
        monitor.end()
    stats = monitor.summary(inferences=10)
    assert stats.source == "nvml" and stats.energy_j > 0 and stats.mean_power_w > 0
    assert stats.gpu_memory_mb > 0
    assert stats.energy_method in ("counter", "sampled")
