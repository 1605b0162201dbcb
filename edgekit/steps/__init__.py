"""Steps: the transformations a variant chains, one module each.

A variant is the export followed by at most one training step, which makes a new model
(``finetuned``: a head for the user's classes), at most one structural step, which
changes the PyTorch module (``pruned``, ``dw-separable``), then at most one numeric step,
which rewrites the float ONNX (``int8``, ``fp16``): ``fp32``, ``int8``, ``pruned+int8``,
``finetuned+dw-separable+fp16``... Each step module has ``run(parent, settings, root, progress) ->
(artifact, reused)``; it reads its options from the Settings, derives its artifact key
from its parent's key and everything that decides its output, and appends its step to
the manifest. ``parse_variant`` is the only place that knows the chaining rules.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from pathlib import Path

from ..core import Artifact, UsageError
from ..options import BY_STEP, Settings
from ..progress import Progress



@dataclass(frozen=True)
class Step:
    name: str  # as it appears in variant names
    kind: str  # "training": a new model; "structural": changes the float PyTorch module; "numeric": rewrites the float ONNX
    module: str  # edgekit.steps.<module> holds run()
    groups: tuple[str, ...]  # option groups it reads

    @property
    def flag(self) -> str:
        """The command-line option that asks for it (declared in options.py: Option.step)."""
        return BY_STEP[self.name].flag

    def run(self, parent: Artifact, settings: Settings, root: Path, progress: Progress) -> tuple[Artifact, bool]:
        return importlib.import_module(f"{__name__}.{self.module}").run(parent, settings, root, progress)

    def describe(self, artifact: Artifact) -> list["Summary"]:
        """What this step did to ``artifact``, for people: lines and tables (its module's
        ``describe``, which reads the artifact's manifest); empty when the artifact holds no
        record of this step, or the step has nothing to say."""
        describe = getattr(importlib.import_module(f"{__name__}.{self.module}"), "describe", None)
        return list(describe(artifact)) if describe is not None else []


@dataclass(frozen=True)
class SummaryTable:
    """A table in a step's summary, without any console type: the console draws it (boxed on
    a terminal, plain when piped). Columns named in ``left`` are justified left, the others right."""

    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    left: frozenset[str] = frozenset()


Summary = str | SummaryTable  # a line, or a table


def describe(artifact: Artifact, kinds: tuple[str, ...] = ("training", "structural", "numeric")) -> list[Summary]:
    """What the steps of ``kinds`` did to ``artifact`` (each step reads its own section of the
    manifest), in chain order."""
    return [item for step in STEPS.values() if step.kind in kinds for item in step.describe(artifact)]


def duration(seconds: float) -> str:
    """'1h02m', '3m05s', '42s': a time as a summary shows it."""
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


STEPS: dict[str, Step] = {
    step.name: step
    for step in (
        Step("finetuned", "training", "finetune", ("finetune",)),
        Step("pruned", "structural", "prune", ("prune", "distill")),
        Step("dw-separable", "structural", "dwsep", ("dw_separable", "distill")),
        Step("int8", "numeric", "int8", ("int8",)),
        Step("fp16", "numeric", "fp16", ()),
    )
}
BASE = "fp32"  # the exported model itself: no step


def parse_variant(name: str) -> tuple[Step, ...]:
    """'pruned+int8' -> (pruned, int8); a one-line UsageError for unknown or illegal chains."""
    if name == BASE:
        return ()
    steps = []
    for part in name.split("+"):
        if part not in STEPS:
            close = difflib.get_close_matches(part, [BASE, *STEPS], n=1)
            raise UsageError(f"unknown step {part!r} in variant {name!r}" + (f" (did you mean {close[0]!r}?)" if close else "") + f"; steps: {', '.join(STEPS)}")
        steps.append(STEPS[part])
    order = ("training", "structural", "numeric")
    for kind in order:
        repeated = [s.name for s in steps if s.kind == kind]
        if kind == "training" and len(repeated) > 1:
            raise UsageError(f"variant {name!r}: {repeated[0]} appears twice")
    ranks = [order.index(s.kind) for s in steps]
    if "training" in [s.kind for s in steps] and ranks[0] != 0:
        raise UsageError(f"variant {name!r}: finetuned makes a new model, so it comes first")
    structural = [s for s in steps if s.kind == "structural"]
    numeric = [s for s in steps if s.kind == "numeric"]
    if len(structural) > 1:
        raise UsageError(f"variant {name!r}: {' and '.join(s.name for s in structural)} exclude each other (one structural change per artifact)")
    if len(numeric) > 1:
        raise UsageError(f"variant {name!r}: {' and '.join(s.name for s in numeric)} exclude each other (one numeric format per artifact)")
    if structural and numeric and steps.index(structural[0]) > steps.index(numeric[0]):
        raise UsageError(f"variant {name!r}: {structural[0].name} changes the float PyTorch model, so it comes before {numeric[0].name}")
    return tuple(steps)


def variant_from_settings(settings: Settings) -> str:
    """The variant the command-line flags ask for (--prune, --dw-separable, --int8, --fp16)."""
    parts = [name for name in STEPS if settings[BY_STEP[name].key] not in (None, False)]  # in chain order
    name = "+".join(parts) or BASE
    try:
        parse_variant(name)
    except UsageError:
        flags = " and ".join(STEPS[p].flag for p in parts)
        raise UsageError(f"{flags} exclude each other") from None
    return name


def build_variant(
    parent: Artifact, variant: str, settings: Settings, root: Path, progress: Progress,
    announce=lambda artifact, reused: None, parent_reused: bool = True,
) -> tuple[Artifact, bool]:
    """Apply the steps of ``variant`` to ``parent`` (reused or not: ``parent_reused``) in
    order; ``announce`` sees every artifact of the chain as soon as it exists."""
    artifact, reused = parent, parent_reused
    announce(artifact, reused)
    for step in parse_variant(variant):
        artifact, reused = step.run(artifact, settings, root, lambda stage, done, total, s=step: progress(f"{s.name}: {stage}", done, total))
        announce(artifact, reused)
    return artifact, reused
