"""Hostile and huge label, class and folder inputs (issue 28; faults in tests/faults_labels.py):
each is a correct result or one error line naming what is wrong, never a traceback, a hang
or a quietly wrong label."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import faults_labels as fl
import pytest

from edgekit.options import Settings
from conftest import assert_one_line_error, run_cli

from edgekit.classes import display_name, read_classes_file, read_text_file, shown
from edgekit.core import DataError
from edgekit.data import (
    calibration_request,
    class_folders_of,
    labelled_folder,
    resolve_images,
    same_content,
)
from edgekit.data.labels import _read_label_file

SQ = ("squeezenet1_1", "--random-init")
Q = ("--iterations", "3", "--warmup", "1", "--power", "off", "--views", "1")


# --------------------------------------------------------------------------- byte-order marks


def test_bom_is_dropped_from_label_and_classes_files(tmp_path):
    files = [tmp_path / "chelsea.png", tmp_path / "coffee.png"]
    labels = fl.with_bom(tmp_path / "labels.txt", "chelsea.png cat\ncoffee.png cup\n")
    table, classes = _read_label_file(labels, files)
    assert table == {"chelsea.png": 0, "coffee.png": 1} and classes.names == ("cat", "cup")

    assert read_classes_file(fl.with_bom(tmp_path / "classes.txt", "cat\ncup\n")).names == ("cat", "cup")
    assert read_classes_file(fl.with_bom(tmp_path / "classes.json", '["cat", "cup"]')).names == ("cat", "cup")
    synsets = fl.with_bom(tmp_path / "synsets.csv", "filename,label\nchelsea.png,n02123045\n")
    assert _read_label_file(synsets, files[:1]) == ({"chelsea.png": 281}, None)


# --------------------------------------------------------------------------- labelled twice


def test_a_file_labelled_twice_differently_is_one_error_naming_both_lines(tmp_path):
    path = fl.labelled_twice(tmp_path / "labels.txt", "chelsea.png", "cat", "dog", (("coffee.png", "cup"),))
    with pytest.raises(DataError) as e:
        _read_label_file(path, [tmp_path / "chelsea.png", tmp_path / "coffee.png"])
    message = str(e.value)
    assert "labels.txt" in message and "'chelsea.png' twice" in message and "line 1 says 'cat'" in message and "line 3 says 'dog'" in message
    assert "\n" not in message

    imagenet = fl.labelled_twice(tmp_path / "imagenet.txt", "chelsea.png", "281", "n02123159")  # two different ImageNet classes
    with pytest.raises(DataError, match="line 1 says '281', line 2 says 'n02123159'"):
        _read_label_file(imagenet, [tmp_path / "chelsea.png"])


def test_a_file_labelled_twice_alike_is_accepted(tmp_path):
    same = fl.labelled_twice(tmp_path / "same.txt", "chelsea.png", "cat", "cat", (("coffee.png", "cup"),))
    assert _read_label_file(same, [])[0] == {"chelsea.png": 0, "coffee.png": 1}
    spelled = fl.labelled_twice(tmp_path / "spelled.txt", "chelsea.png", "281", "n02123045")  # index and synset of one class
    assert _read_label_file(spelled, []) == ({"chelsea.png": 281}, None)


# --------------------------------------------------------------------------- symlink loops


def test_symlink_loops_in_a_class_tree_are_skipped_with_a_warning(tmp_path):
    root = fl.class_tree(tmp_path / "tree", {"cats": ("chelsea.png",), "cups": ("coffee.png",)})
    loops = fl.symlink_loops(root)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        images, space = labelled_folder(root)
    assert sorted(i.path.name for i in images) == ["chelsea.png", "coffee.png"] and space.names == ("cats", "cups")
    said = " ".join(str(w.message) for w in caught)
    assert all(f"skipped {loop}: it cannot be followed" in said for loop in loops), said
    assert class_folders_of(root).names == ("cats", "cups")


# --------------------------------------------------------------------------- special and huge files


@pytest.mark.parametrize("special", ["/dev/zero", "/dev/urandom", "fifo", "folder"])
def test_special_files_as_labels_or_classes_are_refused_without_reading(tmp_path, special):
    if special == "fifo":
        path = tmp_path / "fifo"
        os.mkfifo(path)  # opening it would wait for a writer forever
    elif special == "folder":
        path = tmp_path
    else:
        path = Path(special)
    for read in (lambda: read_classes_file(path), lambda: _read_label_file(path, [])):
        with pytest.raises(DataError, match="not a regular file|is a folder"):
            read()


def test_a_huge_label_file_is_refused_by_its_size(tmp_path):
    huge = tmp_path / "huge.txt"
    with open(huge, "wb") as f:
        f.truncate(600 * 1024 * 1024)  # sparse: no disk used
    with pytest.raises(DataError, match=r"is 629,145,600 bytes; at most 536,870,912 are read"):
        _read_label_file(huge, [])
    with pytest.raises(DataError, match="classes file .* bytes; at most"):
        read_classes_file(huge)
    with pytest.raises(DataError, match="not UTF-8 text"):
        read_text_file(_write(tmp_path / "bin", bytes(range(256))), "label file", 1000)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# --------------------------------------------------------------------------- the same photo in two sets


def test_same_content_hashes_only_files_whose_size_is_shared(tmp_path):
    a = [fl.flat_folder(tmp_path / "a", ("chelsea.png", "coffee.png"))]
    b = fl.flat_folder(tmp_path / "b", ("rocket.jpg",))
    (b / "renamed.png").write_bytes((a[0] / "coffee.png").read_bytes())
    pairs = same_content(sorted(b.iterdir()), sorted(a[0].iterdir()))
    assert pairs == [(b / "renamed.png", a[0] / "coffee.png")]
    assert same_content([b / "rocket.jpg"], [a[0] / "chelsea.png"]) == []


def test_a_photo_in_train_and_val_is_said_and_recorded(tmp_path):
    root = fl.split_tree(tmp_path / "data")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        val = resolve_images(root, views_per_image=1, split="val")
        train = resolve_images(root, views_per_image=1, split="train")
    said = [str(w.message) for w in caught]
    assert "1 of the 3 images of val/ is byte-identical to images of train/ (e.g. val/cats/copy-of-train-photo.png = train/cats/chelsea.png)" in said[0]
    assert "1 image of val/ byte-identical to images of train/" in val.description and "byte-identical" in train.description
    clean = resolve_images(fl.split_tree(tmp_path / "clean", shared=False), views_per_image=1, split="val")
    assert "byte-identical" not in clean.description


def test_a_photo_in_calib_and_data_is_said_and_recorded(tmp_path):
    data = fl.flat_folder(tmp_path / "data", ("chelsea.png", "coffee.png"))
    calib = fl.flat_folder(tmp_path / "calib", ("rocket.jpg", "coffee.png"))
    settings = Settings(calib=calib, data=data)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        images = calibration_request(settings).resolve()
    assert any("1 of the 2 images of evaluation (--data" in str(w.message) and "coffee.png" in str(w.message) for w in caught)
    assert "1 image of evaluation (--data" in images.description and "byte-identical to images of calibration (--calib" in images.description


# --------------------------------------------------------------------------- one class


def test_finetuning_on_a_single_class_is_refused(tmp_path):
    from edgekit.steps.finetune import training_split

    settings = Settings(data=fl.single_class_tree(tmp_path / "one"))
    with pytest.raises(DataError, match="has 1 class; fine-tuning a classifier needs at least 2 classes"):
        training_split(settings)
    two = fl.split_tree(tmp_path / "two", shared=False)
    train, _, space = training_split(settings.replace(data=two))
    assert space.count == 2 and len(train) == 2
    import shutil

    shutil.rmtree(two / "train" / "cups")  # classes named, but training images of one of them only
    with pytest.raises(DataError, match="has images of 1 of its 2 classes"):
        training_split(settings.replace(data=two))


# --------------------------------------------------------------------------- control characters in class names


def test_control_characters_in_class_names_are_refused_where_names_are_read(tmp_path):
    with pytest.raises(DataError, match=r"contains the control character U\+000A; rename the class") as e:
        read_classes_file(fl.classes_with_control_characters(tmp_path / "classes.json"))
    assert "\n" not in str(e.value) and "\x1b" not in str(e.value)

    root = fl.class_tree(tmp_path / "tree", {"cats": ("chelsea.png",), "dog\x1b[31mred": ("coffee.png",)})
    with pytest.raises(DataError, match=r"U\+001B") as e:
        labelled_folder(root)
    assert "\x1b" not in str(e.value)

    (tmp_path / "labels.txt").write_text("chelsea.png cat\u202e\ncoffee.png cup\n")
    with pytest.raises(DataError, match=r"U\+202E"):
        _read_label_file(tmp_path / "labels.txt", [])


def test_class_names_are_escaped_on_screen_markdown_and_html(tmp_path):
    from edgekit.results import site, tables

    assert [display_name(n) for n in fl.ESCAPE_NAMES] == ["cat\\n| injected | row |", "dog\\x1b[2J\\x1b[31mred", "bird\\u202eevil"]
    assert display_name("chat noir é") == "chat noir é"
    per_class = [{"class": i, "name": n, "images": 1, "correct": 0, "top1": 0.0} for i, n in enumerate(fl.ESCAPE_NAMES)]
    confusion = {"true": 0, "predicted": 1, "true_name": fl.ESCAPE_NAMES[0], "predicted_name": fl.ESCAPE_NAMES[1], "count": 1}
    screen = " ".join(tables._short_name(c["name"], 200) for c in per_class)
    markdown = " ".join(site._markdown_cell(x) for c in per_class for x in site._per_class_cells(c)) + site._confusion_text(confusion)
    for text in (screen, markdown):
        assert not any(ch in text for ch in "\n\x1b\u202e"), text
    assert "cat\\n" in screen and "dog\\x1b[2J" in markdown and "->" in site._confusion_text(confusion)


# --------------------------------------------------------------------------- huge model names


def test_a_20_mb_model_name_is_one_short_error(tmp_path):
    name = fl.huge_name()
    for args in (("export", name, "--random-init"), ("bench", name, "--random-init", *Q), ("models", name)):
        proc = run_cli(*args, cwd=tmp_path)
        assert_one_line_error(proc, "(20,000,000 characters)", code=2)
        assert len(proc.stderr) < 1000, len(proc.stderr)
    assert shown("x" * 81).endswith("... (81 characters)") and shown("short") == "'short'"


# --------------------------------------------------------------------------- through the real command line


def test_cli_bench_says_and_records_a_photo_shared_by_train_and_val(tmp_path):
    root = fl.split_tree(tmp_path / "data", imagenet=True)
    proc = run_cli("bench", *SQ, "--input-size", "64", "--data", str(root), "--backend", "onnxruntime", *Q, "--json", "r.json",
                   "--artifacts", str(tmp_path / "exported"), cwd=tmp_path, process=True)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "warning: 1 of the 3 images of val/ is byte-identical to images of train/" in proc.stderr
    images = json.loads((tmp_path / "r.json").read_text())["images"]
    assert "1 image of val/ byte-identical to images of train/" in images["description"]


def test_cli_labels_dev_zero_and_single_class_finetune_are_one_line(tmp_path):
    flat = fl.flat_folder(tmp_path / "flat")
    assert_one_line_error(run_cli("bench", *SQ, "--data", str(flat), "--labels", "/dev/zero", *Q, cwd=tmp_path), "/dev/zero", "not a regular file", code=2)
    assert_one_line_error(run_cli("bench", *SQ, "--classes", "/dev/zero", *Q, cwd=tmp_path), "/dev/zero", "not a regular file", code=2)
    one = fl.single_class_tree(tmp_path / "one")
    assert_one_line_error(run_cli("finetune", *SQ, "--data", str(one), cwd=tmp_path), "at least 2 classes", code=2)


def test_too_many_same_size_files_are_not_compared_and_it_is_said(tmp_path, monkeypatch):
    from edgekit.data import overlap

    monkeypatch.setattr(overlap, "MAX_COMPARED_FILES", 1)
    root = fl.split_tree(tmp_path / "data")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        val = resolve_images(root, views_per_image=1, split="val")
    assert any("did not look for photos shared by val/ and train/" in str(w.message) for w in caught)
    assert "not compared with train/" in val.description
