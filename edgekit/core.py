"""Types that cross module boundaries: specs, artifacts, results, and error types.

Nothing here imports torch, onnx or any backend: the on-device runner and the CLI's
``--help`` both rely on that.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

MANIFEST_NAME = "manifest.json"
ONNX_NAME = "model.onnx"


# --------------------------------------------------------------------------- errors


class EdgekitError(Exception):
    """A failure the user can act on: the CLI prints it as one line and exits non-zero."""

    exit_code = 1


class UsageError(EdgekitError):
    """The request itself is wrong (unknown name, bad value)."""

    exit_code = 2


class UnknownModelError(UsageError):
    pass


class WeightsUnavailableError(EdgekitError):
    pass


class CheckpointMismatchError(EdgekitError):
    pass


class DataError(EdgekitError):
    """Images or labels that cannot be used (empty folder, unreadable file...)."""


class InvalidModelFileError(EdgekitError):
    """A model file that is not a valid ONNX graph (corrupt, truncated, wrong format)."""


class BackendUnavailableError(EdgekitError):
    """A backend whose runtime is not installed; the message names the pip extra."""


class ExportError(EdgekitError):
    pass


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
    return manifest.get("variant", "fp32").split("+")[-1].replace("pruned", "fp32").replace("dw-separable", "fp32")


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


@dataclass(frozen=True)
class Artifact:
    """A folder under exported/ holding model files and the manifest that describes them."""

    path: Path
    manifest: dict[str, Any]

    @property
    def onnx_path(self) -> Path:
        return self.path / self.manifest.get("files", {}).get("onnx", ONNX_NAME)

    @property
    def model_name(self) -> str:
        return str(self.manifest["model"]["name"])

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
            manifest = json.loads(manifest_path.read_text())
        except FileNotFoundError:
            raise InvalidModelFileError(f"{path}: no {MANIFEST_NAME}; not an edgekit artifact") from None
        except json.JSONDecodeError as e:
            raise InvalidModelFileError(f"{manifest_path}: not valid JSON ({e.msg})") from None
        return cls(path=path, manifest=manifest)

    def verify_files(self) -> list[str]:
        """Names of files whose SHA-256 no longer matches the manifest (empty when intact)."""
        bad = []
        for name, digest in self.manifest.get("sha256", {}).items():
            p = self.path / name
            if not p.is_file() or sha256_file(p) != digest:
                bad.append(name)
        return bad


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    tmp = folder / (MANIFEST_NAME + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(tmp, folder / MANIFEST_NAME)


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
        return cls(**{**d, "p50_rounds": tuple(d.get("p50_rounds", ()))})


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
    images: int
    top1: Optional[float]  # percent, None without labels
    top5: Optional[float]
    top1_drop: Optional[float]  # points vs the baseline on the same images
    agreement: Optional[float]  # percent of images whose top-1 equals the baseline's
    mean_kl: Optional[float]  # mean KL(baseline || this) of softmax outputs
    max_abs_diff: Optional[float]  # max |logit - baseline logit|


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
    peak_rss_mb: float
    size_mb: Optional[float]
    accuracy: Optional[AccuracyStats]
    environment: dict[str, Any] = field(default_factory=dict)
    throughput: tuple[ThroughputStats, ...] = ()  # asynchronous-request mode, where the backend has one
    power: tuple[PowerStats, ...] = ()  # per timed batch size, where a power source was read
    gpu_memory_mb: Optional[float] = None  # this process's GPU memory after the runs (NVML), on NVIDIA GPUs

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BenchResult":
        acc = d.get("accuracy")
        return cls(
            model=d["model"],
            backend=d["backend"],
            variant=d["variant"],
            artifact_key=d["artifact_key"],
            precision=d["precision"],
            providers=tuple(d.get("providers", ())),
            threads=d.get("threads"),
            latency=tuple(LatencyStats.from_dict(x) for x in d["latency"]),
            peak_rss_mb=d["peak_rss_mb"],
            size_mb=d.get("size_mb"),
            accuracy=AccuracyStats(**acc) if acc else None,
            environment=d.get("environment", {}),
            throughput=tuple(ThroughputStats(**x) for x in d.get("throughput", ())),
            power=tuple(PowerStats(**x) for x in d.get("power", ())),
            gpu_memory_mb=d.get("gpu_memory_mb"),
        )
