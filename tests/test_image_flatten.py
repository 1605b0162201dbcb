"""The flattening rule (edgekit.data.decode.FLATTEN_RULE): how alpha, palette transparency,
16-bit, 32-bit and CMYK files become 8-bit RGB, on real files written by Pillow; Pillow's
warnings kept off the screen; and a fine-tuning run that names an unreadable training
image once and leaves it out of its counts."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgekit import data
from edgekit.data import decode


def _rgb(path: Path) -> np.ndarray:
    return np.asarray(decode._open_rgb(path)).astype(int)


def _rgba_png(path: Path) -> Path:
    pixels = np.zeros((4, 4, 4), np.uint8)
    pixels[:, :2] = (200, 10, 20, 0)  # transparent, a colour stored under it
    pixels[:, 2:] = (10, 20, 30, 255)
    Image.fromarray(pixels, "RGBA").save(path)
    return path


def _palette_png(path: Path) -> Path:
    image = Image.new("P", (4, 4), 0)
    image.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 759)
    image.putpixel((1, 0), 1)
    image.putpixel((2, 0), 2)
    image.save(path, transparency=bytes([0, 128, 255]))  # per-entry alpha: Pillow's "transparency expressed in bytes"
    return path


def test_alpha_is_dropped_keeping_the_colour_under_it(tmp_path):
    rgb = _rgb(_rgba_png(tmp_path / "rgba.png"))
    assert rgb[0, 0].tolist() == [200, 10, 20] and rgb[0, 3].tolist() == [10, 20, 30]  # not composited onto white or black
    Image.fromarray(np.stack([np.full((4, 4), 100, np.uint8), np.zeros((4, 4), np.uint8)], -1), "LA").save(tmp_path / "la.png")
    assert _rgb(tmp_path / "la.png")[0, 0].tolist() == [100, 100, 100]


def test_palette_transparency_keeps_the_palette_colours_without_a_warning(tmp_path):
    path = _palette_png(tmp_path / "p.png")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        with pytest.warns(UserWarning, match="Palette images with Transparency"):
            Image.open(path).convert("RGB")  # what Pillow's plain convert says, every time
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        rgb = _rgb(path)
    assert rgb[0, :3].tolist() == [[255, 0, 0], [0, 255, 0], [0, 0, 255]]
    assert not [w for w in seen if "PIL" in (w.filename or "")], [str(w.message) for w in seen]


def test_sixteen_and_thirty_two_bit_greyscale_keep_the_high_byte(tmp_path):
    Image.fromarray(np.array([[0x0000, 0x00FF, 0x80FF, 0xFFFF]], np.uint16)).save(tmp_path / "g16.png")
    assert _rgb(tmp_path / "g16.png")[0, :, 0].tolist() == [0, 0, 128, 255]  # v >> 8, as Pillow reads 16-bit colour
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32), "F").save(tmp_path / "f.tiff")
    assert _rgb(tmp_path / "f.tiff")[0, :, 1].tolist() == [0, 128, 255]


def test_cmyk_jpeg_is_converted_by_pillow(tmp_path):
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "red.jpg", quality=100)
    Image.new("CMYK", (8, 8), (128, 0, 0, 128)).save(tmp_path / "k.jpg", quality=100)
    assert np.abs(_rgb(tmp_path / "red.jpg")[4, 4] - [255, 0, 0]).max() <= 3
    assert np.abs(_rgb(tmp_path / "k.jpg")[4, 4] - [63, 127, 127]).max() <= 3  # (255 - C)(255 - K) / 255


def test_census_counts_each_kind_and_names_the_unreadable(tmp_path):
    from faults import decompression_bomb, sixteen_bit_png

    files = [
        _rgba_png(tmp_path / "a.png"), _palette_png(tmp_path / "p.png"), sixteen_bit_png(tmp_path / "g16.png", size=8),
        decompression_bomb(tmp_path / "bomb.png"),
    ]
    Image.new("CMYK", (8, 8)).save(tmp_path / "c.jpg")
    Image.new("RGB", (8, 8)).save(tmp_path / "plain.png")
    Image.new("L", (8, 8)).save(tmp_path / "grey.png")
    found = data.decode.census([*files, tmp_path / "c.jpg", tmp_path / "plain.png", tmp_path / "grey.png"])
    assert found.counts() == {"alpha": 1, "palette transparency": 1, "16-bit": 1, "CMYK": 1}
    assert [Path(f).name for f, _ in found.unreadable] == ["bomb.png"] and "pixel limit" in found.unreadable[0][1]
    assert found.summary().startswith("4 images flattened to RGB by edgekit-rgb/1") and "1 alpha (a.png)" in found.summary()
    assert found.to_dict()["rule"] == data.decode.FLATTEN_RULE


def test_pillows_decode_warnings_do_not_reach_the_screen(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # a 40 x 40 file is then over Pillow's warning limit (not its 2x error)
    Image.new("RGB", (40, 40), (1, 2, 3)).save(tmp_path / "big.png")
    path = _palette_png(tmp_path / "p.png")
    with warnings.catch_warnings(record=True) as plain:
        warnings.simplefilter("always")
        Image.open(tmp_path / "big.png")
    assert [w for w in plain if issubclass(w.category, Image.DecompressionBombWarning)]  # Pillow does warn
    with warnings.catch_warnings(record=True) as seen:  # the process's filters as they stand: what a user would see
        for _ in range(2):
            _rgb(tmp_path / "big.png"), _rgb(path)
            data.decode.census([tmp_path / "big.png", path])
    assert not seen, [str(w.message) for w in seen]


def test_finetune_names_an_unreadable_training_image_once_and_counts_without_it(tmp_path):
    from digits import DIGIT_NAMES, write_digits_folders
    from faults import decompression_bomb

    from edgekit.classes import folder_class_set
    from edgekit.data import evaluation_images, training_images
    from edgekit.models import find_head, load_model, with_new_head
    from edgekit.transforms.finetune import FinetuneOptions, finetune

    digits = write_digits_folders(tmp_path / "digits", size=16, per_class=2)
    for name in DIGIT_NAMES[2:]:  # two classes keep it to a few seconds
        for split in ("train", "val"):
            for f in (digits / split / name).iterdir():
                f.unlink()
            (digits / split / name).rmdir()
    bomb = decompression_bomb(digits / "train" / DIGIT_NAMES[0] / "huge.png")
    clear = next((digits / "train" / DIGIT_NAMES[1]).iterdir())
    Image.open(clear).convert("RGBA").save(clear)  # an RGBA training image: flattened, counted
    classes = folder_class_set(DIGIT_NAMES[:2], digits)
    train = [(str(v.image.path), v.image.labels[0]) for v in training_images(digits).resolve(classes).views]
    val = [(str(v.image.path), v.image.labels[0]) for v in evaluation_images(digits).resolve(classes).views]
    assert str(bomb) in {p for p, _ in train} and len(train) == 5 and len(val) == 4
    loaded = with_new_head(load_model("efficientnet_lite0").at_input_size(32), classes)
    lines: list[str] = []
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        report = finetune(
            loaded.module, find_head(loaded.module, 2), train, val, loaded.spec.preprocessing,
            FinetuneOptions(epochs=1, probe_epochs=1, batch_size=4, augment="none"), lambda stage, done, total: lines.append(stage),
        )
    said = [str(w.message) for w in seen if "unreadable" in str(w.message)]
    assert len(said) == 1 and "huge.png" in said[0] and "pixel limit" in said[0], said  # once, not per epoch
    assert "4 of 5 training" in said[0]
    assert not [w for w in seen if "PIL" in (w.filename or "")], [str(w.message) for w in seen]
    assert report.epochs_run == 2 and report.train_images == 4 and report.val_images == 4
    assert report.skipped == [{"file": str(bomb), "split": "train", "reason": report.skipped[0]["reason"]}]
    assert report.flattening["counts"] == {"alpha": 1} and report.flattening["examples"] == {"alpha": [clear.name]}
    assert sum("flattened to RGB" in line for line in lines) == 1


def test_the_finetune_summary_names_skipped_and_flattened_files_once():
    from edgekit.steps.finetune import _image_facts

    report = {
        "skipped": [{"file": "/d/train/a/huge.png", "split": "train", "reason": "larger than Pillow's pixel limit"}],
        "flattening": {"rule": "edgekit-rgb/1: drop alpha", "counts": {"alpha": 5, "CMYK": 1}, "examples": {"alpha": ["a.png", "b.png", "c.png"], "CMYK": ["k.jpg"]}},
    }
    assert _image_facts(report) == [
        "training: 1 unreadable image skipped: huge.png (larger than Pillow's pixel limit)",
        "flattened to RGB by edgekit-rgb/1: drop alpha: 5 alpha (a.png, b.png, c.png, ...); 1 CMYK (k.jpg)",
    ]
    assert _image_facts({"skipped": [], "flattening": {}}) == []  # an older manifest, or nothing to say
