"""Label, class and folder faults made on purpose (issue 28, "hostile and huge inputs"):
BOMs, files labelled twice, symlink loops, special files, duplicated photos across splits,
a single class, control characters in class names, absurdly long model names. Shared by
tests/test_faults_labels.py and benchmarks/reliability_labels.py."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "edgekit" / "samples"
BOM = "\ufeff"
PHOTOS = ("chelsea.png", "coffee.png", "camera.png", "rocket.jpg")


def _photo(name: str) -> Path:
    return SAMPLES / name


def flat_folder(root: Path, photos: tuple[str, ...] = PHOTOS[:2]) -> Path:
    """A flat folder of a few real photos (for --labels)."""
    root.mkdir(parents=True, exist_ok=True)
    for name in photos:
        shutil.copyfile(_photo(name), root / name)
    return root


def with_bom(path: Path, text: str) -> Path:
    """``text`` written as Windows Notepad saves UTF-8: a byte-order mark first."""
    path.write_bytes((BOM + text).encode("utf-8"))
    return path


def labelled_twice(path: Path, name: str, first: str, second: str, others: tuple[tuple[str, str], ...] = ()) -> Path:
    """A label file naming ``name`` on line 1 and again, with another label, on the last line."""
    lines = [f"{name} {first}", *(f"{n} {label}" for n, label in others), f"{name} {second}"]
    path.write_text("\n".join(lines) + "\n")
    return path


def class_tree(root: Path, classes: dict[str, tuple[str, ...]]) -> Path:
    """root/<class>/<photo> for each class and its photos."""
    for cls, photos in classes.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for name in photos:
            shutil.copyfile(_photo(name), root / cls / name)
    return root


def symlink_loops(root: Path) -> list[Path]:
    """A class folder that links to itself and an image that links to itself."""
    folder = next(p for p in sorted(root.iterdir()) if p.is_dir())
    loops = [root / "loop", folder / "loop.jpg"]
    os.symlink("loop", loops[0])
    os.symlink("loop.jpg", loops[1])
    return loops


IMAGENET_FOLDERS = ("n02123045", "n07920052")  # tabby cat, espresso: ImageNet-labelled class folders


def split_tree(root: Path, shared: bool = True, imagenet: bool = False) -> Path:
    """train/ and val/ with two classes (named "cats" and "cups", or ImageNet synsets);
    with ``shared``, one photo of val/ is a renamed copy of a training photo (the same
    bytes under another name)."""
    cats, cups = IMAGENET_FOLDERS if imagenet else ("cats", "cups")
    class_tree(root / "train", {cats: ("chelsea.png",), cups: ("coffee.png",)})
    class_tree(root / "val", {cats: ("camera.png",), cups: ("rocket.jpg",)})
    if shared:
        shutil.copyfile(_photo("chelsea.png"), root / "val" / cats / "copy-of-train-photo.png")
    return root


def single_class_tree(root: Path) -> Path:
    """train/ and val/ with one class only."""
    class_tree(root / "train", {"cats": ("chelsea.png", "coffee.png")})
    class_tree(root / "val", {"cats": ("camera.png",)})
    return root


def calibration_folder(root: Path, copy_of: Path, count: int = 9) -> Path:
    """``count`` distinct real photos (the samples, then re-encoded copies of them) plus
    ``copy_of`` under another name: a --calib folder that shares one photo with --data."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    others = [p for p in sorted(SAMPLES.iterdir()) if p.suffix in (".png", ".jpg") and p.name not in ("chelsea.png", "coffee.png")]
    for i in range(count - 1):
        source = others[i % len(others)]
        if i < len(others):
            shutil.copyfile(source, root / source.name)
        else:
            with Image.open(source) as im:
                im.convert("RGB").resize((200 + i, 150 + i)).save(root / f"resized-{i}-{source.stem}.png")
    shutil.copyfile(copy_of, root / "calib-copy.png")
    return root


ESCAPE_NAMES = ("cat\n| injected | row |", "dog\x1b[2J\x1b[31mred", "bird\u202eevil")


def classes_with_control_characters(path: Path) -> Path:
    """A classes file (JSON, the only way to put a newline inside a name) whose names hold a
    newline, an ANSI escape sequence and a bidi override."""
    import json

    path.write_text(json.dumps(list(ESCAPE_NAMES)))
    return path


def huge_name(chars: int = 20_000_000) -> str:
    return "m" * chars
