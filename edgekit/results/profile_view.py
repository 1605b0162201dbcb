"""The results file's ``profile`` section (edgekit.profiling.ArtifactProfile.to_dict) as
tables: on the screen (`edgekit profile`) and in Markdown (`edgekit report`).

Works on the plain dicts, so a profile read back from a results file renders the same way.
"""

from __future__ import annotations

from typing import Any, Optional

from ..backends.base import BASELINE_BACKEND

OUTSIDE_PREFIX = "("


def heading(backend: dict[str, Any], variant: str) -> str:
    """'openvino, int8 as model.ov-cpu.onnx (openvino 2026.4.1, cpu), batch 1, 50 runs: ...'."""
    total, e2e = backend["sum_ms"], backend["e2e_p50_ms"]
    what = "the FP32 original" if backend["backend"] == BASELINE_BACKEND else f"{variant} as {backend['file']}"
    profiled = backend.get("profiled_run_ms") or 0.0
    if not profiled:  # written before profiled runs were timed
        return f"{backend['backend']}: {what} ({backend['runtime']}, {backend['device']}), batch {backend['batch_size']}: rows sum to {total:.3f} ms; end-to-end p50 {e2e:.3f} ms"
    return (
        f"{backend['backend']}: {what} ({backend['runtime']}, {backend['device']}), batch {backend['batch_size']}, "
        f"{backend['iterations']} profiled runs of {profiled:.3f} ms, {100.0 * backend['attributed']:.0f}% of it inside the runtime's nodes; "
        f"end-to-end p50 without the profiler {e2e:.3f} ms; rows are the profiler's times x {backend['scale']:.2f} (its own cost taken out), "
        f"the rest of the run's wall time on a row of its own, and sum to {total:.3f} ms ({100.0 * total / e2e:.0f}% of the p50)"
    )


def rows(backend: dict[str, Any], top: Optional[int]) -> list[dict[str, Any]]:
    """The largest ``top`` module rows and every outside-a-module row (never cut: they say
    where the rest goes), then one row for the modules left out."""
    prices = backend["prices"]
    modules = sorted((p for p in prices if not p["module"].startswith(OUTSIDE_PREFIX)), key=lambda p: -p["ms"])
    outside = [p for p in prices if p["module"].startswith(OUTSIDE_PREFIX)]
    shown = modules if top is None else modules[:top]
    rest = modules[len(shown):]
    table = shown + outside
    if rest:
        float_values = [p["float_ms"] for p in rest if p["float_ms"] is not None]
        table.append({
            "module": f"... {len(rest)} more modules", "ms": sum(p["ms"] for p in rest),
            "float_ms": sum(float_values) if len(float_values) == len(rest) else None,
            "precisions": (), "ops": (), "fused_with": (), "kl_if_only_int8": None,
            "saved_ms": None,
        })
    return table


def columns(backend: dict[str, Any], with_kl: bool) -> list[str]:
    has_float = backend.get("float") is not None
    return ["module", "runs as", "ms", "%", *(("FP32 ms", "INT8 saves ms") if has_float else ()), *(("KL if only it is INT8",) if with_kl else ()), "also computes"]


def cells(row: dict[str, Any], backend: dict[str, Any], with_kl: bool) -> list[str]:
    total = backend["sum_ms"] or 1.0
    has_float = backend.get("float") is not None
    precision = ", ".join(dict.fromkeys(_short(p) for p in row["precisions"] if p))
    ops = ", ".join(row["ops"][:2])
    out = [row["module"], f"{ops} {precision}".strip(), f"{row['ms']:.3f}", f"{100.0 * row['ms'] / total:.1f}"]
    if has_float:
        out.append("-" if row["float_ms"] is None else f"{row['float_ms']:.3f}")
        saved = None if row["float_ms"] is None else row["float_ms"] - row["ms"]
        out.append("-" if saved is None else f"{saved:+.3f}")
    if with_kl:
        out.append("-" if row["kl_if_only_int8"] is None else f"{row['kl_if_only_int8']:.5f}")
    fused = list(row["fused_with"])
    out.append(", ".join(fused[:3]) + (f" +{len(fused) - 3}" if len(fused) > 3 else ""))
    return out


def _short(precision: str) -> str:
    """'u8 (brgconv_avx512_dw_I8)' -> 'u8': the kernel's name is in the JSON."""
    return precision.split(" (")[0]


def screen_tables(section: dict[str, Any], top: Optional[int] = 15) -> list:
    """One rich Table per backend, and the notes (backends without a profiler, KL images)."""
    from rich.table import Table

    with_kl = bool(section.get("kl_by_module"))
    out: list = []
    for backend in section["backends"]:
        table = Table(title=heading(backend, section["variant"]), title_justify="left")
        for name in columns(backend, with_kl):
            table.add_column(name, justify="left" if name in ("module", "runs as", "also computes") else "right")
        for row in rows(backend, top):
            table.add_row(*cells(row, backend, with_kl))
        out.append(table)
        if backend.get("note"):
            out.append(f"note: {backend['note']}")
    out += notes(section)
    return out


def notes(section: dict[str, Any]) -> list[str]:
    found = [f"note: {name}: {why}" for name, why in (section.get("unavailable") or {}).items()]
    if section.get("kl_by_module"):
        found.append(f"KL if only it is INT8: the model's mean KL vs FP32 on {section['kl_images']} calibration images with that module alone quantized, the rest in float")
    elif section.get("kl_note"):
        found.append(f"no per-module KL: {section['kl_note']}")
    return found


def markdown(section: dict[str, Any], top: Optional[int] = 15) -> str:
    with_kl = bool(section.get("kl_by_module"))
    parts = [f"## Per-layer profile: {section['model']} {section['variant']} [{section['artifact']}]", ""]
    for backend in section["backends"]:
        names = columns(backend, with_kl)
        parts += [heading(backend, section["variant"]), "", "| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
        parts += ["| " + " | ".join(c.replace("|", "\\|") for c in cells(row, backend, with_kl)) + " |" for row in rows(backend, top)]
        parts.append("")
    parts += notes(section)
    return "\n".join(parts) + "\n"
