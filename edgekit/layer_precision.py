"""Precision per layer: what an artifact's graph asks for (read from the graph itself:
precision lives in the graph), what a runtime reports it ran, and the difference.

A backend's ``layer_report`` (engine inspector, OpenVINO's runtime model, ONNX Runtime's
profiler) returns a LayerReport; ``mismatches`` compares it with ``asked_precision`` of the
ONNX file the backend was given. Only compute nodes (convolutions, matrix products) are
judged: they are where precision decides speed and accuracy, and every runtime names them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

PRECISIONS = ("fp32", "fp16", "bf16", "int8")
JUDGED_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})

# how runtimes spell a precision -> edgekit's word
_WORDS = {
    "float": "fp32", "float32": "fp32", "fp32": "fp32", "f32": "fp32",
    "half": "fp16", "float16": "fp16", "fp16": "fp16", "f16": "fp16",
    "bfloat16": "bf16", "bf16": "bf16",
    "int8": "int8", "i8": "int8", "u8": "int8", "uint8": "int8", "fp8": "fp8", "int4": "int4", "i4": "int4", "u4": "int4",
}


def precision_word(spelled: str) -> str:
    """'Half', 'FP16', 'f16' -> 'fp16'; 'Int8 NC/32HW32' -> 'int8'; '' where unknown."""
    head = str(spelled).strip().split(" ")[0].strip().lower()
    return _WORDS.get(head, "")


@dataclass(frozen=True)
class LayerFact:
    """One layer a runtime executes, as it reports it."""

    layer: str  # the runtime's own layer name
    op_type: str  # the runtime's kind of layer
    covers: tuple[str, ...]  # the ONNX nodes it computes (names in the file the backend loaded)
    ran: str  # precision_word of what it computed in; '' where the runtime does not say
    where: str = ""  # the device or execution provider that ran it
    note: str = ""  # how ``ran`` was read, where it needs saying (e.g. 'fp16 tensors, fp32 arithmetic')


@dataclass(frozen=True)
class LayerReport:
    """What one backend ran, layer by layer, for one artifact on one device."""

    backend: str
    device: str
    layers: tuple[LayerFact, ...]
    expected_where: tuple[str, ...] = ()  # providers/devices every compute layer should run on ('' = any)
    facts: Mapping[str, Any] = field(default_factory=dict)  # anything else the backend reports (typing mode, hints)
    # (asked, ran) pairs the backend knows its runtime substitutes on this device, with why:
    # recorded and printed (``substitutions``), not errors. E.g. ("fp16", "fp32"): "ONNX
    # Runtime's CPU provider has no FP16 Conv kernel; it computes the node in FP32".
    # Anything else that differs is a mismatch.
    substituted: Mapping[tuple[str, str], str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "device": self.device,
            "facts": dict(self.facts),
            "substituted": [{"asked": a, "ran": r, "why": why} for (a, r), why in self.substituted.items()],
            "layers": [
                {"layer": f.layer, "op_type": f.op_type, "covers": list(f.covers), "ran": f.ran, "where": f.where, **({"note": f.note} if f.note else {})}
                for f in self.layers
            ],
        }


def asked_precision(model: Any) -> dict[str, str]:
    """Per judged compute node of an ONNX model (onnx.ModelProto or a path): 'int8' where its
    data and weight inputs both come from DequantizeLinear of 8-bit integers, 'fp16' where its
    input tensor is float16, 'bf16' for bfloat16, else 'fp32'."""
    import onnx

    if isinstance(model, (str, Path)):
        model = onnx.load(str(model), load_external_data=False)
    graph = model.graph
    types: dict[str, int] = {}
    for info in list(graph.input) + list(graph.output) + list(graph.value_info):
        types[info.name] = info.type.tensor_type.elem_type
    for init in graph.initializer:
        types[init.name] = init.data_type
    if not graph.value_info:
        try:
            inferred = onnx.shape_inference.infer_shapes(model)
            for info in inferred.graph.value_info:
                types.setdefault(info.name, info.type.tensor_type.elem_type)
        except Exception:  # noqa: BLE001 (a graph shape inference cannot read: types from initializers and producers below)
            pass
    made_by = {out: node for node in graph.node for out in node.output}
    for node in graph.node:  # types shape inference left out: a Cast says, a DequantizeLinear gives its scale's type
        for out in node.output:
            if out in types:
                continue
            if node.op_type == "Cast":
                types[out] = next((a.i for a in node.attribute if a.name == "to"), 0)
            elif node.op_type == "DequantizeLinear" and len(node.input) > 1 and node.input[1] in types:
                types[out] = types[node.input[1]]
    eight_bit = {onnx.TensorProto.INT8, onnx.TensorProto.UINT8}

    def from_int8(tensor: str) -> bool:
        producer = made_by.get(tensor)
        if producer is None or producer.op_type != "DequantizeLinear":
            return False
        source = producer.input[0]
        if types.get(source) in eight_bit:
            return True
        quant = made_by.get(source)
        return quant is not None and quant.op_type == "QuantizeLinear"

    asked = {}
    for node in graph.node:
        if node.op_type not in JUDGED_OPS or len(node.input) < 2:
            continue
        if from_int8(node.input[0]) and from_int8(node.input[1]):
            asked[node.name] = "int8"
            continue
        kind = types.get(node.input[0])
        asked[node.name] = {onnx.TensorProto.FLOAT16: "fp16", onnx.TensorProto.BFLOAT16: "bf16"}.get(kind, "fp32")
    return asked


def mismatches(asked: Mapping[str, str], report: LayerReport) -> list[str]:
    """One line per compute node that ran at another precision than its graph asks, or on
    another device than the report expects; [] when everything ran as asked. A layer whose
    precision the runtime does not report is not judged."""
    problems = []
    for fact in report.layers:
        judged = [node for node in fact.covers if node in asked]
        if not judged:
            continue
        if report.expected_where and fact.where and fact.where not in report.expected_where:
            problems.append(f"{fact.layer} ({', '.join(judged)}) ran on {fact.where}, not {' or '.join(report.expected_where)}")
        if not fact.ran:
            continue
        wanted = {asked[node] for node in judged}
        if fact.ran not in wanted and not any((w, fact.ran) in report.substituted for w in wanted):
            problems.append(f"{fact.layer} ({', '.join(judged)}) ran in {fact.ran}; the graph asks {'/'.join(sorted(wanted))}")
    return problems


def substitutions(asked: Mapping[str, str], report: LayerReport) -> list[str]:
    """One line per substitution the backend declared that happened: how many compute nodes
    ran at another precision than asked, and why (recorded and printed, not an error)."""
    counts: dict[tuple[str, str], int] = {}
    for fact in report.layers:
        for node in fact.covers:
            pair = (asked.get(node, ""), fact.ran)
            if node in asked and fact.ran and pair[0] != pair[1] and pair in report.substituted:
                counts[pair] = counts.get(pair, 0) + 1
    return [f"{n} compute node(s) asked {a} ran {r}: {report.substituted[(a, r)]}" for (a, r), n in counts.items()]


def summary(asked: Mapping[str, str], report: Optional[LayerReport]) -> dict[str, Any]:
    """Counts for a results row or `edgekit doctor`: compute nodes asked per precision, layers
    per precision that ran, and the mismatches."""
    counts: dict[str, int] = {}
    for word in asked.values():
        counts[word] = counts.get(word, 0) + 1
    out: dict[str, Any] = {"asked": counts}
    if report is not None:
        ran: dict[str, int] = {}
        for fact in report.layers:
            if any(node in asked for node in fact.covers):
                key = fact.ran or "unreported"
                ran[key] = ran.get(key, 0) + 1
        out["ran"] = ran
        out["mismatches"] = mismatches(asked, report)
        out["substitutions"] = substitutions(asked, report)
    return out
