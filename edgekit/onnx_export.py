"""nn.Module -> ONNX artifact, checked with onnx.checker and against PyTorch on real images.

Artifacts are content-addressed: the folder name hashes everything that decides the
ONNX file (model, exact weights, preprocessing, export options, format version), so an
identical request finds the finished folder and reuses it. Writes go to a temporary
folder that is renamed into place only when complete.
"""

from __future__ import annotations

import json
import operator
import os
import shutil
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from .artifacts import ARTIFACT_FORMAT, build_artifact_folder
from .options import declared
from .core import ONNX_NAME, Artifact, ClassSet, ExportError, InvalidModelFileError, Preprocessing, sha256_file, stable_hash
from .data import ImageSet, load_all
from .models import LoadedModel, measure_complexity
from .static_shapes import FOLD_VERSION

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
PARITY_TOLERANCE = 1e-3  # max |logit diff| above which FP32 export is reported as drifting


@dataclass(frozen=True)
class ExportOptions:
    opset: int = declared("opset").field()
    dynamic_batch: bool = declared("static").field(convert=operator.not_)
    slim: bool = declared("no_slim").field(convert=operator.not_)  # fold shape arithmetic and constants with onnxslim


@dataclass(frozen=True)
class WeightsSource:
    """How the PyTorch baseline rebuilds the exact same module later."""

    kind: str  # "pretrained" | "random-init" | "file"
    path: Optional[str] = None
    key: Optional[str] = None  # the state dict chosen inside a checkpoint that holds several


def export_key(loaded: LoadedModel, options: ExportOptions) -> str:
    what = {
        "format": ARTIFACT_FORMAT,
        "model": loaded.spec.name,
        "weights": loaded.weights_id,
        "preprocessing": loaded.spec.preprocessing.to_dict(),
        "options": asdict(options),
    }
    if not loaded.classes.is_imagenet:  # ImageNet-1k models keep the keys they always had
        what["classes"] = loaded.classes.identity
    if options.slim:  # slimmed graphs are now checked against PyTorch; earlier ones are not reused
        what["slim_checked"] = 1
    what["static_shapes"] = FOLD_VERSION  # size arithmetic folded at export; earlier graphs are not reused
    return stable_hash(what)


def export_model(
    loaded: LoadedModel,
    weights_source: WeightsSource,
    parity_images: ImageSet,
    options: ExportOptions = ExportOptions(),
    root: Path = Path("exported"),
    progress: Callable[[str], None] = lambda message: None,
) -> tuple[Artifact, bool]:
    """Export (or reuse) the artifact. Returns (artifact, reused)."""
    key = export_key(loaded, options)

    def populate(staging: Path) -> dict[str, Any]:
        onnx_path = staging / ONNX_NAME
        progress("exporting to ONNX")
        _torch_export(loaded, onnx_path, options)
        unslimmed = staging / "model.unslimmed.onnx"
        if options.slim:
            shutil.copyfile(onnx_path, unslimmed)
            progress("simplifying the graph (onnxslim)")
            _slim(onnx_path)
        check_onnx_file(onnx_path)
        progress(f"checking parity with PyTorch on {len(parity_images)} real images")
        parity = measure_parity(loaded, onnx_path, parity_images, warn=not options.slim)
        if options.slim:
            if not parity_holds(parity):
                # onnxslim has broken graphs before (EfficientNet-Lite1/2: top-1 agreement 64%)
                progress("onnxslim changed the logits; keeping the exporter's graph")
                unslimmed_parity = measure_parity(loaded, unslimmed, parity_images)
                os.replace(unslimmed, onnx_path)
                parity = {**unslimmed_parity, "slim": f"reverted: onnxslim's graph differed from PyTorch by up to {parity['max_abs_diff']:.2e}"}
            else:
                unslimmed.unlink()
        return _manifest(loaded, weights_source, options, parity)

    return build_artifact_folder(root, loaded.spec.name, key, populate)


PREPROCESSING_KEYS = {"input_size", "resize_size", "crop_pct", "interpolation", "mean", "std", "classes"}


def read_preprocessing_file(path: Path) -> dict[str, Any]:
    """A small JSON describing how an imported ONNX model wants its images: input_size,
    resize_size (or crop_pct), interpolation, mean, std, and optionally classes (a list of
    names). Unknown keys and bad values are one-line errors."""
    import math

    from .core import DataError

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"preprocessing file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"preprocessing file {path} is not readable JSON ({getattr(e, 'msg', None) or type(e).__name__})") from None
    if not isinstance(data, dict) or set(data) - PREPROCESSING_KEYS:
        unknown = sorted(set(data) - PREPROCESSING_KEYS) if isinstance(data, dict) else []
        raise DataError(f"preprocessing file {path}: expected an object with {', '.join(sorted(PREPROCESSING_KEYS))}" + (f"; unknown: {', '.join(unknown)}" if unknown else ""))
    for key in ("mean", "std"):
        value = data.get(key)
        if value is not None and not (isinstance(value, list) and len(value) == 3 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
            raise DataError(f"preprocessing file {path}: {key} must be three numbers, got {value!r}")
        if value is not None and not all(math.isfinite(v) for v in value):  # json reads NaN and Infinity
            raise DataError(f"preprocessing file {path}: {key} must be finite numbers, got {value!r}")
    if data.get("std") and any(v <= 0 for v in data["std"]):
        raise DataError(f"preprocessing file {path}: std must be positive")
    for key in ("input_size", "resize_size"):
        value = data.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or not 8 <= value <= 4096):
            raise DataError(f"preprocessing file {path}: {key} must be a whole number of pixels, got {value!r}")
    if data.get("crop_pct") is not None and not (isinstance(data["crop_pct"], (int, float)) and 0 < data["crop_pct"] <= 1):
        raise DataError(f"preprocessing file {path}: crop_pct must be in (0, 1], got {data['crop_pct']!r}")
    if data.get("interpolation") is not None and data["interpolation"] not in ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming"):
        raise DataError(f"preprocessing file {path}: unknown interpolation {data['interpolation']!r}")
    if data.get("classes") is not None and not (isinstance(data["classes"], list) and data["classes"] and all(isinstance(n, str) for n in data["classes"])):
        raise DataError(f"preprocessing file {path}: classes must be a list of names")
    return data


def _imported_preprocessing(size: int, described: Optional[dict[str, Any]]) -> Preprocessing:
    d = described or {}
    size = int(d.get("input_size") or size)
    base = Preprocessing().with_input_size(size)
    resize = d.get("resize_size") or (int(size / d["crop_pct"]) if d.get("crop_pct") else base.resize_size)
    return Preprocessing(
        input_size=size, resize_size=int(resize), interpolation=d.get("interpolation", base.interpolation),
        mean=tuple(d.get("mean", base.mean)), std=tuple(d.get("std", base.std)),
    )


def import_onnx_file(path: Path, root: Path = Path("exported"), preprocessing_file: Optional[Path] = None, classes: Optional[ClassSet] = None) -> tuple[Artifact, bool]:
    """Wrap a foreign ONNX classifier as an artifact (no PyTorch original to compare with).

    Preprocessing comes from ``preprocessing_file`` (see read_preprocessing_file), else
    ImageNet's at the graph's input size; classes from ``classes`` or that file, else
    ImageNet-1k for 1000 outputs. Accuracy is judged on labels only.
    """
    import onnx

    from .core import DataError, imagenet_class_set

    path = Path(path)
    external = external_data_files(path)  # before the checker: its message for a missing .bin is poor
    check_onnx_file(path)
    described = read_preprocessing_file(preprocessing_file) if preprocessing_file is not None else None
    if classes is None and described and described.get("classes"):
        names = tuple(described["classes"])
        classes = ClassSet(len(names), f"preprocessing file {preprocessing_file}", names)
    digest = sha256_file(path)
    if external:  # the weights are part of what the model is: another .bin is another artifact
        digest = stable_hash({"onnx": digest, "external_data": {name: sha256_file(file) for name, file in external.items()}})
    name = path.stem
    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise InvalidModelFileError(f"{path}: expected one image input, found {len(inputs)}")
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "batch") for d in inputs[0].type.tensor_type.shape.dim]
    if len(dims) != 4 or dims[1] != 3 or not isinstance(dims[2], int) or dims[2] != dims[3]:
        raise InvalidModelFileError(f"{path}: input {inputs[0].name} has shape {dims}; expected [N, 3, S, S]")
    prep = _imported_preprocessing(dims[2], described)
    if prep.input_size != dims[2]:
        raise DataError(f"{preprocessing_file} says input_size {prep.input_size}, but {path.name} takes {dims[2]}x{dims[3]} images")
    output = graph.output[0] if graph.output else None
    out_dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in output.type.tensor_type.shape.dim] if output is not None else []
    if output is None or (output.type.tensor_type.HasField("shape") and len(out_dims) != 2):
        raise InvalidModelFileError(
            f"{path}: first output {output.name if output is not None else '(none)'} has shape {out_dims}; "
            "edgekit measures classifiers whose first output is [N, classes] logits"
        )
    width = out_dims[1] if isinstance(out_dims[1], int) and out_dims[1] > 0 else None
    if classes is not None and width is not None and classes.count != width:
        raise DataError(f"{classes.describe()} given, but {path.name} has {width} outputs")
    if classes is None:
        classes = imagenet_class_set() if width in (None, 1000) else ClassSet(width, f"outputs of {path.name}")
    key = stable_hash({"format": ARTIFACT_FORMAT, "onnx": digest, **({"preprocessing": prep.to_dict()} if described else {}),
                       **({"classes": classes.identity} if not classes.is_imagenet else {})})

    def populate(staging: Path) -> dict[str, Any]:
        if external:  # inlined: the artifact stays one sealed model.onnx that every step and bundle carries
            onnx.save(onnx.load(str(path), load_external_data=True), str(staging / ONNX_NAME))
        else:
            shutil.copyfile(path, staging / ONNX_NAME)
        return {
            "model": {"name": name, "source": "onnx-file", "origin": str(path.resolve()), "weights_source": None,
                      "num_classes": classes.count, "classes": classes.to_dict()},
            "preprocessing": prep.to_dict(),
            "input": {"name": inputs[0].name, "shape": dims, "dtype": "float32"},
            "output": {"name": output.name, "shape": out_dims},
            "variant": "fp32",
            "files": {"onnx": ONNX_NAME},
            "steps": [{"step": "import", "parent": None, "origin": str(path.resolve()),
                       **({"external_data_inlined": sorted(external)} if external else {})}],
            "tools": tool_versions(),
        }

    return build_artifact_folder(root, name, key, populate)


SINGLE_FILE_LIMIT = 2**31 - 2**24  # protobuf's 2 GB, less room for the graph around the weights


def external_data_files(path: Path) -> dict[str, Path]:
    """{location: file} for the external data an ONNX file keeps beside it
    (``onnx.save(model, path, save_as_external_data=True)``), checked: every location a
    file in the model's own folder (not absolute, no '..', no link out), present, long
    enough for its tensors, and all of it small enough to inline into one file. Each
    problem is one InvalidModelFileError naming the .onnx and the data file. Empty when
    the weights are inside the .onnx (or it is not ONNX at all: check_onnx_file says so)."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # not ONNX, truncated, missing: the checker's one line
        return {}
    folder = path.resolve().parent
    files: dict[str, Path] = {}
    need: dict[str, int] = {}
    for tensor in _get_all_tensors(model):
        if not uses_external_data(tensor):
            continue
        info = ExternalDataInfo(tensor)
        location = info.location or ""
        if not location or location.startswith(("/", "\\")) or "\\" in location or ".." in Path(location).parts or (len(location) > 1 and location[1] == ":"):
            raise InvalidModelFileError(f"{path}: tensor {tensor.name} keeps its data at {location!r}, not a file beside the model; "
                                        "edgekit reads external data only from the .onnx file's own folder")
        file = path.parent / location
        if not file.is_file():
            raise InvalidModelFileError(f"{path}: its weights are in the external data file {file} (tensor {tensor.name}), which is "
                                        f"{'not a regular file' if file.exists() else 'missing'}; put it beside {path.name}, where onnx.save(..., save_as_external_data=True) wrote it")
        if folder not in file.resolve().parents:
            raise InvalidModelFileError(f"{path}: external data file {location} leads outside the model's folder (to {file.resolve()})")
        offset, size = info.offset or 0, file.stat().st_size
        end = offset + (info.length if info.length else max(size - offset, 0))
        if end > size:
            raise InvalidModelFileError(f"{path}: external data file {file} has {size} bytes, but tensor {tensor.name} needs {end}; "
                                        "it is truncated or belongs to another model")
        files[location] = file
        need[location] = max(need.get(location, 0), end)
    total = path.stat().st_size + sum(need.values()) if files else 0
    if total > SINGLE_FILE_LIMIT:
        raise InvalidModelFileError(f"{path}: with its external data ({', '.join(sorted(files))}) the model is {total / 2**30:.1f} GiB, "
                                    "above ONNX's 2 GiB single-file limit; edgekit artifacts keep the graph and its weights in one model.onnx")
    return files


def _torch_export(loaded: LoadedModel, path: Path, options: ExportOptions) -> None:
    _export_module(loaded.module, loaded.spec.preprocessing.input_size, path, options, loaded.spec.name)


def torch_export_module(module: Any, size: int, path: Path, options: ExportOptions, name: str) -> None:
    """Export a module (e.g. a pruned one) the way artifacts are exported, slimmed if asked."""
    _export_module(module, size, path, options, name)
    if options.slim:
        _slim(path)


def _export_module(module: Any, size: int, path: Path, options: ExportOptions, name: str) -> None:
    import torch

    dummy = torch.zeros(1, 3, size, size)
    dynamic_axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if options.dynamic_batch else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python control flow are expected
        try:
            # The TorchScript exporter gives opset-17 graphs that every backend reads; the
            # dynamo exporter cannot lower some models (e.g. timm's same-padding) to 17.
            torch.onnx.export(
                module,
                (dummy,),
                str(path),
                dynamo=False,
                opset_version=options.opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes=dynamic_axes,
                do_constant_folding=True,
            )
        except OSError:  # a full or read-only disk, not the model: the artifact store names the folder
            raise
        except Exception as e:  # the exporter raises many types; all mean "cannot export"
            message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ExportError(f"{name} cannot be exported to ONNX opset {options.opset}: {message}") from None
    _fold_sizes(path, size)


def _fold_sizes(path: Path, size: int) -> None:
    """What the fixed input size decides, folded into constants (see static_shapes)."""
    import onnx

    from .static_shapes import fold_static_shapes

    model = onnx.load(str(path))
    if fold_static_shapes(model, size):
        onnx.save(model, str(path))


def _slim(path: Path) -> None:
    import onnx
    import onnxslim

    slimmed = onnxslim.slim(onnx.load(str(path)))
    onnx.save(slimmed, str(path))


def check_onnx_file(path: Path) -> None:
    """Raise InvalidModelFileError unless ``path`` is a well-formed ONNX model."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise InvalidModelFileError(f"{path} does not exist")
    try:
        onnx.checker.check_model(str(path))
    except (onnx.checker.ValidationError, onnx.onnx_cpp2py_export.checker.ValidationError) as e:  # type: ignore[attr-defined]
        raise InvalidModelFileError(f"{path} is not a valid ONNX model: {str(e).splitlines()[0]}") from None
    except Exception as e:  # protobuf DecodeError and friends for truncated or foreign files
        raise InvalidModelFileError(f"{path} is not a valid ONNX model ({type(e).__name__})") from None


def parity_holds(parity: dict[str, Any]) -> bool:
    # relative to the logits' size: random-init networks can produce logits of 1e8, where
    # float32 reordering alone moves them by more than any absolute tolerance
    return parity["max_abs_diff"] <= PARITY_TOLERANCE * max(1.0, parity["max_abs_logit"])


def measure_parity(loaded: LoadedModel, onnx_path: Path, images: ImageSet, warn: bool = True) -> dict[str, Any]:
    """Max |logit diff| and top-1 agreement of ONNX Runtime vs PyTorch on real images."""
    import onnxruntime as ort
    import torch

    x, _ = load_all(images, loaded.spec.preprocessing)
    with torch.no_grad():
        reference = loaded.module(torch.from_numpy(x)).numpy()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    dynamic = not isinstance(session.get_inputs()[0].shape[0], int)
    if dynamic:
        exported = session.run(None, {INPUT_NAME: x})[0]
    else:
        exported = np.concatenate([session.run(None, {INPUT_NAME: x[i : i + 1]})[0] for i in range(len(x))])
    diff = float(np.abs(exported - reference).max())
    scale = float(np.abs(reference).max())
    agreement = float((exported.argmax(1) == reference.argmax(1)).mean() * 100)
    if warn and diff > PARITY_TOLERANCE * max(1.0, scale):
        warnings.warn(f"ONNX logits differ from PyTorch by up to {diff:.2e} (largest logit {scale:.2e})", stacklevel=2)
    return {
        "images": int(len(x)),
        "image_set": images.identity,
        "max_abs_diff": diff,
        "max_abs_logit": scale,
        "top1_agreement": agreement,
        "backend": f"onnxruntime {ort.__version__} CPUExecutionProvider",
    }


def tool_versions() -> dict[str, str]:
    import platform
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for dist in ("edgekit", "torch", "torchvision", "timm", "onnx", "onnxruntime", "onnxslim"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _manifest(
    loaded: LoadedModel,
    weights_source: WeightsSource,
    options: ExportOptions,
    parity: dict[str, Any],
) -> dict[str, Any]:
    spec = loaded.spec
    size = spec.preprocessing.input_size
    params_m, gmacs = measure_complexity(loaded.module, size)
    return {
        "model": {
            "name": spec.name,
            "family": spec.family,
            "source": spec.source,
            "num_classes": spec.num_classes,
            "classes": loaded.classes.to_dict(),
            "weights_id": loaded.weights_id,
            "weights": loaded.weights_desc,
            "weights_source": asdict(weights_source),
            "reference": asdict(spec.reference),
            "params_m": params_m,
            "gmacs": gmacs,
        },
        "preprocessing": spec.preprocessing.to_dict(),
        "input": {"name": INPUT_NAME, "shape": ["batch" if options.dynamic_batch else 1, 3, size, size], "dtype": "float32"},
        "output": {"name": OUTPUT_NAME, "shape": ["batch" if options.dynamic_batch else 1, spec.num_classes]},
        "variant": "fp32",
        "files": {"onnx": ONNX_NAME},
        "steps": [
            {
                "step": "export",
                "parent": None,
                "exporter": "torch.onnx (TorchScript)",
                **asdict(options),
            }
        ],
        "parity": parity,
        "tools": tool_versions(),
    }
