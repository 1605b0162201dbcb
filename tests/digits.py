"""A real labelled data set and a tiny CNN trained on it in seconds, for quantization and pruning tests.

ImageNet-scale models cannot be checked against true labels in a unit test: the data is
too large and a random-init network has no accuracy to lose. scikit-learn bundles the
UCI handwritten digits (1,797 real 8x8 greyscale images, 10 classes) inside its wheel, so
no network access is needed. Upsampled to 16x16 RGB, they train a small mobile-style CNN
(depthwise-separable convs, BatchNorm, ReLU6, a residual add) to well over 95% test
accuracy in a few seconds on one CPU core. INT8 quantization or pruning of the exported
ONNX model can then be judged by the accuracy it keeps on held-out, truly labelled images.

This is a test-support module, not a test file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

NUM_CLASSES = 10
IMAGE_SIZE = 16
MEAN = 0.5
STD = 0.5


def load_digits_split(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return ``x_train, y_train, x_test, y_test`` from scikit-learn's digits, split 70/30.

    ``x`` is float32 NCHW ``(n, 3, 16, 16)``: the grey channel repeated three times,
    nearest-upsampled from 8x8, scaled to [0, 1] and normalised with mean 0.5, std 0.5
    (values in [-1, 1]). ``y`` is int64. The split is stratified and fixed by ``seed``.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = digits.images.astype(np.float32) / 16.0  # pixel values are 0..16
    scale = IMAGE_SIZE // images.shape[-1]
    images = np.kron(images, np.ones((1, scale, scale), dtype=np.float32))
    images = (images - MEAN) / STD
    x = np.repeat(images[:, None, :, :], 3, axis=1).astype(np.float32)
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.3, random_state=seed, stratify=y)
    return (
        np.ascontiguousarray(x_train),
        np.ascontiguousarray(y_train),
        np.ascontiguousarray(x_test),
        np.ascontiguousarray(y_test),
    )


def _conv_bn(in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU6(inplace=True),
    )


class DigitsNet(nn.Module):
    """A mobile-style CNN for 3x16x16 inputs: stem, depthwise-separable blocks, one residual, linear head."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.stem = _conv_bn(3, 16, 3)
        self.dw1 = _conv_bn(16, 16, 3, groups=16)
        self.pw1 = _conv_bn(16, 32, 1)
        self.down = _conv_bn(32, 32, 3, stride=2)
        self.dw2 = _conv_bn(32, 32, 3, groups=32)
        self.pw2 = _conv_bn(32, 32, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.pw1(self.dw1(x))
        x = self.down(x)
        x = x + self.pw2(self.dw2(x))
        x = torch.flatten(self.pool(x), 1)
        return self.classifier(x)


def _accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        predictions = model(torch.from_numpy(x)).argmax(dim=1).numpy()
    return float((predictions == y).mean() * 100.0)


def train_digits_net(seed: int = 0, epochs: int = 10) -> tuple[DigitsNet, float]:
    """Train a :class:`DigitsNet` on the digits training split; return it in eval mode and its test accuracy (%).

    Adam (lr 1e-2, cosine decay), batch 64. Ten epochs reach about 98.5% test accuracy in a
    few seconds. Training runs on one intra-op thread in channels-last layout: for a net this
    small, two threads made each step about 17x slower (445 ms against 26 ms) while another
    process was busy on the same two-core CPU. The caller's thread count is restored afterwards.
    Deterministic for a given ``seed`` on the same machine and torch build.
    """
    x_train, y_train, x_test, y_test = load_digits_split(seed)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        generator = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        model = DigitsNet().to(memory_format=torch.channels_last)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
        loss_fn = nn.CrossEntropyLoss()
        inputs = torch.from_numpy(x_train).contiguous(memory_format=torch.channels_last)
        targets = torch.from_numpy(y_train)
        batch_size = 64

        model.train()
        for _ in range(epochs):
            order = torch.randperm(len(inputs), generator=generator)
            for start in range(0, len(order), batch_size):
                index = order[start : start + batch_size]
                optimizer.zero_grad()
                loss = loss_fn(model(inputs[index]), targets[index])
                loss.backward()
                optimizer.step()
            scheduler.step()

        model = model.to(memory_format=torch.contiguous_format).eval()
        accuracy = _accuracy(model, x_test, y_test)
    finally:
        torch.set_num_threads(previous_threads)
    return model, accuracy


def export_digits_onnx(model: nn.Module, path: str | Path) -> None:
    """Export ``model`` to ONNX (opset 17, dynamic batch, input ``input``, output ``logits``)."""
    model.eval()
    dummy = torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE)
    torch.onnx.export(
        model,
        (dummy,),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )


def onnx_accuracy(path: str | Path, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy (%) of the ONNX model at ``path`` on ``x``/``y``, run with ONNX Runtime on CPU."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    correct = 0
    for start in range(0, len(x), 256):
        batch = np.ascontiguousarray(x[start : start + 256], dtype=np.float32)
        logits = session.run(None, {input_name: batch})[0]
        correct += int((logits.argmax(axis=1) == y[start : start + 256]).sum())
    return correct / len(x) * 100.0


DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def write_digits_folders(root: Path, size: int = 32, layout: str = "train-val", per_class: int | None = None, seed: int = 0, resample: str = "bicubic") -> Path:
    """scikit-learn's digits as RGB PNG files in class folders named zero..nine (bicubic
    upsampling from 8x8 to ``size``): ``layout`` 'train-val' writes train/ and val/ (the
    70/30 split of load_digits_split's seed), 'tree' one tree of every image.
    ``per_class`` caps the images of each class in each split (fast tests). ``resample``
    'nearest' at size 16 gives exactly the pixels load_digits_split trains on."""
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    pixels = (digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    index = np.arange(len(pixels))
    train, val = train_test_split(index, test_size=0.3, random_state=seed, stratify=digits.target)
    parts = {"train": train, "val": val} if layout == "train-val" else {"": index}
    for split, members in parts.items():
        counts: dict[int, int] = {}
        for i in sorted(members):
            label = int(digits.target[i])
            if per_class is not None and counts.get(label, 0) >= per_class:
                continue
            counts[label] = counts.get(label, 0) + 1
            folder = Path(root) / split / DIGIT_NAMES[label]
            folder.mkdir(parents=True, exist_ok=True)
            image = Image.fromarray(pixels[i], mode="L").resize((size, size), Image.Resampling[resample.upper()]).convert("RGB")
            image.save(folder / f"digit_{i:04d}.png")
    return Path(root)
