"""`edgekit doctor`: the machine's facts as this machine has them, and an INT8 artifact of
EfficientNet-Lite0 (real weights, real calibration photos) checked on the real runtimes."""

import json
import platform
from importlib import metadata
from pathlib import Path

import pytest

from conftest import assert_one_line_error, run_cli

MACHINE_KEYS = {
    "cpu": str, "machine": str, "os": str, "python": str, "logical_cores": int, "usable_cores": int, "memory_total_gb": (float, type(None)),
    "memory_available_gb": (float, type(None)), "cpu_flags_checked": list, "cpu_flags": list, "board": (str, type(None)), "jetson": (dict, type(None)),
}
GPU_KEYS = {"name", "driver", "cuda", "memory_gb", "compute_capability", "source"}
CHECK_KEYS = {"backend", "device", "status", "reason", "file", "variant_detail", "session", "precision", "layers"}
PRECISION_KEYS = {"asked", "ran", "mismatches", "substitutions", "device", "expected_where", "facts", "problem"}


@pytest.fixture(scope="module")
def lite0_int8(lite0_artifact, exported_root):
    """EfficientNet-Lite0 quantized quickly (minmax, one fallback node at most) on the bundled photos."""
    from edgekit.data import default_calibration
    from edgekit.steps.int8 import quantize_artifact
    from edgekit.transforms.quantize import Budget, QuantizeOptions

    fast = QuantizeOptions(method="minmax", max_fallback_nodes=1, bias_correction=False, budget=Budget(min_agreement=50.0, max_kl=None))
    artifact, _ = quantize_artifact(lite0_artifact, default_calibration().resolve(), fast, exported_root)
    return artifact


def _document(proc) -> dict:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _cpuinfo_flags() -> set:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.split(":")[0].strip().lower() in ("flags", "features"):
            return set(line.partition(":")[2].split())
    return set()


def test_doctor_json_describes_this_machine(tmp_path):
    document = _document(run_cli("doctor", "--json", cwd=tmp_path, process=True))
    assert document["format"] == "edgekit-doctor/1" and document["edgekit"] == metadata.version("edgekit")
    assert set(document) == {"format", "edgekit", "machine", "gpus", "gpu_problem", "power", "backends", "artifact", "mismatches"}
    machine = document["machine"]
    assert set(machine) == set(MACHINE_KEYS)
    for key, kind in MACHINE_KEYS.items():
        assert isinstance(machine[key], kind), (key, machine[key])
    assert machine["python"] == platform.python_version() and machine["logical_cores"] >= machine["usable_cores"] >= 1
    # the flags that matter, as /proc/cpuinfo has them: every checked one present exactly when the kernel lists it
    have = _cpuinfo_flags()
    assert machine["cpu_flags_checked"], "no instruction sets checked on this architecture"
    assert machine["cpu_flags"] == [f for f in machine["cpu_flags_checked"] if f in have]
    if platform.machine() == "x86_64":
        assert {"avx2", "avx512_vnni", "amx_int8"} <= set(machine["cpu_flags_checked"])
    assert machine["memory_total_gb"] > 0.5
    # GPUs: each with its keys, or none and why
    assert isinstance(document["gpus"], list) and isinstance(document["gpu_problem"], str)
    assert all(set(gpu) == GPU_KEYS for gpu in document["gpus"]) and bool(document["gpus"]) != bool(document["gpu_problem"])
    assert set(document["power"]) == {"tegrastats", "nvml", "rapl"}
    for state in document["power"].values():
        assert isinstance(state["available"], bool) and bool(state["problem"]) != state["available"]
    # every registered backend's own facts, and the runtimes installed here with their real versions
    from edgekit.backends.base import BACKENDS

    backends = document["backends"]
    assert list(backends) == list(BACKENDS.names())
    for name, facts in backends.items():
        assert {"installed", "version", "devices", "problem"} <= set(facts), name
        assert isinstance(facts["devices"], list) and isinstance(facts["problem"], str)
    for name, distribution in (("onnxruntime", "onnxruntime"), ("openvino", "openvino"), ("pytorch", "torch")):
        assert backends[name]["installed"] is True and backends[name]["problem"] == "", backends[name]
        assert backends[name]["version"] == f"{distribution} {metadata.version(distribution)}"
    torch_facts = backends["pytorch"]
    import torch

    # threads: the doctor process's own (a pytest worker may have set its own count)
    assert torch_facts["cuda_build"] == torch.version.cuda and isinstance(torch_facts["threads"], int) and torch_facts["threads"] >= 1
    assert torch_facts["mkldnn_available"] is torch.backends.mkldnn.is_available()
    assert document["artifact"] is None and document["mismatches"] == []


def test_doctor_text_is_compact_and_plain_when_piped(tmp_path):
    proc = run_cli("doctor", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("edgekit ") and any(line.startswith("CPU flags: ") for line in lines)
    assert "backends" in lines and not any(c in proc.stdout for c in "┏━│")  # plain tables when piped


def test_int8_artifact_runs_as_its_graph_asks_on_the_cpu_backends(lite0_int8, tmp_path):
    from edgekit.backends.base import BackendOptions
    from edgekit.backends.onnxruntime import CPU_FORM_FILES, OnnxRuntimeBackend
    from edgekit.layer_precision import asked_precision

    proc = run_cli("doctor", str(lite0_int8.path), "--json", cwd=tmp_path)
    document = _document(proc)
    artifact = document["artifact"]
    assert artifact["variant"] == "int8" and artifact["numeric_format"] == "int8" and artifact["key"] == lite0_int8.key
    asked = asked_precision(lite0_int8.onnx_path)
    assert artifact["asked"]["int8"] == sum(1 for word in asked.values() if word == "int8") >= 40  # every conv but the one fallback at most
    checks = {check["backend"]: check for check in artifact["backends"]}
    for check in checks.values():
        assert set(check) == CHECK_KEYS
        assert check["status"] in ("ok", "failed", "skipped") and bool(check["reason"]) == (check["status"] != "ok"), check
    # ONNX Runtime loads the CPU form its machine facts say this CPU gets, and that is what compile chooses
    ort = checks["onnxruntime"]
    assert ort["status"] == "ok", ort["reason"]
    compiled = OnnxRuntimeBackend().compile(lite0_int8, BackendOptions())
    assert ort["file"] == compiled.onnx_path.name and ort["variant_detail"] == compiled.manifest["variant_detail"]
    form_facts = [value for key, value in document["backends"]["onnxruntime"].items() if "form" in key]
    assert form_facts, f"onnxruntime's machine_facts name no INT8 CPU form: {sorted(document['backends']['onnxruntime'])}"
    form = form_facts[0]["form"] if isinstance(form_facts[0], dict) else form_facts[0]
    assert CPU_FORM_FILES[form] == ort["file"]
    # the layers each CPU runtime ran: every asked compute node judged, in INT8 where the graph asks it
    for name in ("onnxruntime", "openvino"):
        precision = checks[name]["precision"]
        assert precision is not None and set(precision) == PRECISION_KEYS and precision["problem"] == "", (name, precision)
        assert precision["asked"] == artifact["asked"] and precision["ran"].get("int8", 0) >= 1, (name, precision)
        assert checks[name]["layers"] and all(layer["ran"] for layer in checks[name]["layers"] if layer["covers"]), name
    # no mismatch on any CPU backend that ran it, and exit 0
    ran_on_cpu = [c for c in checks.values() if c["status"] == "ok" and c["device"].lower() == "cpu"]
    assert {"onnxruntime", "openvino", "pytorch"} <= {c["backend"] for c in ran_on_cpu}, [(c["backend"], c["reason"]) for c in checks.values()]
    assert all(not (c["precision"] or {}).get("mismatches") for c in ran_on_cpu) and document["mismatches"] == []
    assert proc.returncode == 0


def test_int8_layers_print_as_text(lite0_int8, tmp_path):
    proc = run_cli("doctor", str(lite0_int8.path), "--backend", "onnxruntime", "--layers", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "what runs where" in proc.stdout and "onnxruntime: every layer" in proc.stdout and "QLinearConv" in proc.stdout
    assert "pytorch" not in proc.stdout.split("what runs where", 1)[1]  # --backend narrows the check


def test_a_bad_artifact_is_one_line_and_non_zero(tmp_path):
    assert_one_line_error(run_cli("doctor", str(tmp_path / "nowhere"), "--json", cwd=tmp_path, process=True), "nowhere", code=2)
    (tmp_path / "empty").mkdir()
    assert_one_line_error(run_cli("doctor", str(tmp_path / "empty"), cwd=tmp_path), "not an edgekit artifact", code=2)


def test_options_are_declared_once_and_refused_where_they_would_do_nothing(tmp_path):
    from edgekit.cli import main
    from edgekit.options import options_for

    params = {p.name for p in main.commands["doctor"].params if p.param_type_name == "option" and p.name != "help"}
    assert params - {"layers", "as_json"} == {o.key for o in options_for("doctor")}
    assert {"backends", "device", "int8", "fp16", "random_init"} <= params
    assert_one_line_error(run_cli("doctor", "--int8", cwd=tmp_path), "--int8", "ARTIFACT", code=2)
    assert_one_line_error(run_cli("doctor", "--layers", cwd=tmp_path), "--layers", code=2)
    assert_one_line_error(run_cli("doctor", "--backend", "nosuch", "x", cwd=tmp_path), "nosuch", code=2)


def test_a_mismatch_fails_and_a_declared_substitution_does_not():
    """The exit rule on a report a runtime could give: a layer at another precision than asked."""
    from edgekit.api import raise_if_unhealthy
    from edgekit.core import EdgekitError
    from edgekit.doctor import ArtifactCheck, BackendCheck, DoctorReport
    from edgekit.layer_precision import LayerFact, LayerReport, summary

    asked = {"conv1": "fp16", "conv2": "fp16"}
    layers = (LayerFact("a", "Conv", ("conv1",), "fp16"), LayerFact("b", "Conv", ("conv2",), "fp32"))

    def report(substituted) -> DoctorReport:
        precision = {**summary(asked, LayerReport("x", "cpu", layers, substituted=substituted)), "problem": ""}
        check = BackendCheck("x", "cpu", "ok", precision=precision)
        artifact = ArtifactCheck("nowhere", "m", "k", "fp16", "fp16", None, {"fp16": 2}, (check,))
        return DoctorReport("0", {}, (), "", {}, {}, artifact)

    with pytest.raises(EdgekitError, match="1 precision mismatch.*x: b \\(conv2\\) ran in fp32; the graph asks fp16"):
        raise_if_unhealthy(report({}))
    substituted = report({("fp16", "fp32"): "no FP16 kernel here"})
    assert substituted.mismatches == [] and substituted.artifact.backends[0].precision["substitutions"]


def test_machine_facts_read_arm_and_jetson_files(tmp_path):
    from edgekit.board import jetson
    from edgekit.doctor import cpu_flags

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nBogoMIPS\t: 62.50\nFeatures\t: fp asimd evtstrm aes asimdhp asimddp sve i8mm bf16\n")
    checked, present = cpu_flags(cpuinfo, "aarch64")
    assert "neon" in checked and present == ("asimd", "asimddp", "asimdhp", "i8mm", "bf16", "sve")
    release, model = tmp_path / "nv_tegra_release", tmp_path / "model"
    release.write_text("# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64, DATE: Tue Aug  1 19:57:35 UTC 2023\n")
    model.write_bytes(b"NVIDIA Jetson Orin Nano Developer Kit\x00")
    found = jetson(release, model)
    assert found["l4t"] == "35.4.1" and found["model"] == "NVIDIA Jetson Orin Nano Developer Kit"
    assert jetson(tmp_path / "none", tmp_path / "none") is None
