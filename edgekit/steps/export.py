"""The first step of every chain: a model name (or an ONNX file, or an artifact folder)
becomes an FP32 artifact. Options: the model group (weights, input size, opset, static
batch, slimming, artifact root)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..core import Artifact, ClassSet, UsageError
from ..data import bundled_images, make_image_set
from ..onnx_export import ExportOptions, WeightsSource, export_model, import_onnx_file
from ..options import BY_KEY, Settings, declared, is_set
from ..progress import Progress

PARITY_VIEWS = 2  # views per bundled photo used for the export parity check
# The model options that make an export; an artifact folder was made already, and an ONNX
# file reads only its description (preprocessing, classes): the rest would be ignored.
EXPORT_KEYS = ("weights", "weights_key", "num_classes", "preprocessing", "classes", "random_init", "input_size", "opset", "static", "no_slim")
READ_BY_ONNX_FILE = frozenset({"preprocessing", "num_classes", "classes"})


@dataclass(frozen=True)
class ModelRequest:
    name: str
    weights_file: Optional[Path] = None
    random_init: bool = False
    input_size: Optional[int] = None  # export at another resolution than the model's own
    classes: Optional[ClassSet] = None  # --num-classes / --classes; None: the checkpoint's or the model's own
    weights_key: Optional[str] = None  # which state dict of a checkpoint that holds several

    @property
    def weights_source(self) -> WeightsSource:
        if self.weights_file is not None:
            return WeightsSource("file", str(Path(self.weights_file).resolve()), self.weights_key)
        return WeightsSource("random-init" if self.random_init else "pretrained")


@dataclass(frozen=True)
class ModelSettings:
    """The model group's options, as the export step reads them."""

    weights: Optional[Path] = declared("weights").field()
    weights_key: Optional[str] = declared("weights_key").field()
    random_init: bool = declared("random_init").field()
    input_size: Optional[int] = declared("input_size").field()
    num_classes: Optional[int] = declared("num_classes").field()
    classes: Optional[Path] = declared("classes").field()
    preprocessing: Optional[Path] = declared("preprocessing").field()
    artifacts: Path = declared("artifacts").field(convert=Path)

    def class_set(self) -> Optional[ClassSet]:
        from ..classes import resolve_class_set

        return resolve_class_set(self.num_classes, self.classes)


def model_request(name: str, settings: Settings) -> ModelRequest:
    model = settings.bind(ModelSettings)
    if model.weights is not None and model.random_init:
        raise UsageError("--weights and --random-init exclude each other")
    if model.preprocessing is not None:
        raise UsageError("--preprocessing describes an imported ONNX file; a registered model has its own")
    if model.weights_key is not None and model.weights is None:
        raise UsageError("--weights-key chooses inside a --weights checkpoint")
    return ModelRequest(name, model.weights, model.random_init, model.input_size, model.class_set(), model.weights_key)


def export_options(settings: Settings) -> ExportOptions:
    return settings.bind(ExportOptions)


def build_artifact(
    model: ModelRequest,
    options: ExportOptions = ExportOptions(),
    root: Path = Path("exported"),
    progress: Progress = lambda stage, done, total: None,
) -> tuple[Artifact, bool]:
    """Export (or reuse) the FP32 artifact of ``model``."""
    from ..models import load_model

    progress(f"loading {model.name}", None, None)
    loaded = load_model(model.name, weights_file=model.weights_file, random_init=model.random_init, classes=model.classes, weights_key=model.weights_key)
    if model.input_size is not None:
        loaded = loaded.at_input_size(model.input_size)
    parity_images = make_image_set(bundled_images(), PARITY_VIEWS, "bundled photos (parity)")
    return export_model(loaded, model.weights_source, parity_images, options, root, progress=lambda message: progress(message, None, None))


def open_target(target: str, settings: Settings, progress: Progress) -> tuple[Artifact, bool]:
    """A model name, an artifact folder or an ONNX file -> (FP32 or finished artifact, reused)."""
    from ..classes import shown

    if len(target) > 4096 or any(len(part.encode(errors="replace")) > 255 for part in Path(target).parts):  # PATH_MAX, NAME_MAX
        raise UsageError(f"{shown(target)} is not a model name, an artifact folder or an ONNX file (too long); `edgekit models` lists the names")
    path = Path(target)
    model = settings.bind(ModelSettings)
    root = model.artifacts
    if path.is_dir():
        _refuse_unread(settings, frozenset(), f"an artifact folder ({path} was exported already)")
        return Artifact.load(path).verified(), True
    if path.suffix.lower() == ".onnx" or path.is_file():
        _refuse_unread(settings, READ_BY_ONNX_FILE, f"an ONNX file ({path.name} is imported as it is)")
        return import_onnx_file(path, root, model.preprocessing, model.class_set())
    return build_artifact(model_request(target, settings), export_options(settings), root, progress)


def _refuse_unread(settings: Settings, read: frozenset, what: str) -> None:
    """An export option that this kind of target does not read is an error, not a no-op."""
    unread = [BY_KEY[key].flag for key in EXPORT_KEYS if key not in read and is_set(settings, key)]
    if unread:
        raise UsageError(f"{', '.join(unread)} {'makes' if len(unread) == 1 else 'make'} an export from a model name, not {what}; drop {' and '.join(unread)}")
