"""The user's own classes: class files, checkpoints in the shapes people have, heads of any
width, data in class folders, train/val trees, seeded splits and CSV labels."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision

from conftest import run_cli
from digits import DIGIT_NAMES, write_digits_folders
from edgekit.classes import read_classes_file
from edgekit.core import CheckpointMismatchError, ClassSet, DataError, UsageError
from edgekit.data import class_folders_of, evaluation_images, resolve_images, training_images
from edgekit.models import load_model, read_checkpoint

TWELVE = [f"part_{i:02d}" for i in range(12)]


@pytest.fixture(scope="module")
def mnv3_12(tmp_path_factory) -> dict:
    torch.manual_seed(1)
    state = torchvision.models.mobilenet_v3_small(num_classes=12).state_dict()
    return state


# --------------------------------------------------------------------------- class files


def test_classes_files_read_lines_and_json_in_output_order(tmp_path):
    lines = tmp_path / "classes.txt"
    lines.write_text("# my parts\ncat\ndog\n\nbird\n")
    assert read_classes_file(lines).names == ("cat", "dog", "bird")
    for payload in (["cat", "dog", "bird"], {"0": "cat", "1": "dog", "2": "bird"}, {"bird": 2, "cat": 0, "dog": 1}):
        f = tmp_path / "classes.json"
        f.write_text(json.dumps(payload))
        assert read_classes_file(f).names == ("cat", "dog", "bird")


@pytest.mark.parametrize("text, message", [
    ("cat\ncat\n", "names 'cat' twice"),
    ("\n# nothing\n", "names no classes"),
    ('{"0": "cat", "2": "dog"}', "indices 0..N-1"),
    ("[1, 2", "not valid JSON"),
])
def test_bad_classes_files_are_one_line_errors(tmp_path, text, message):
    f = tmp_path / "classes.txt"
    f.write_text(text)
    with pytest.raises(DataError, match=message):
        read_classes_file(f)


# --------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("shape", ["plain", "training-dict", "ddp-prefix", "safetensors"])
def test_the_checkpoints_people_have_load_and_set_the_head(tmp_path, mnv3_12, shape):
    if shape == "plain":
        path = tmp_path / "w.pth"
        torch.save(mnv3_12, path)
    elif shape == "training-dict":
        path = tmp_path / "w.pth"
        torch.save({"model": mnv3_12, "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]}, "epoch": 7}, path)
    elif shape == "ddp-prefix":
        path = tmp_path / "w.pth"
        torch.save({"state_dict": {f"module.{k}": v for k, v in mnv3_12.items()}}, path)
    else:
        from safetensors.torch import save_file

        path = tmp_path / "w.safetensors"
        save_file({k: v.contiguous() for k, v in mnv3_12.items()}, str(path))
    loaded = load_model("mobilenet_v3_small", weights_file=path)
    assert loaded.spec.num_classes == 12 and loaded.classes.count == 12 and not loaded.classes.is_imagenet
    assert torch.equal(loaded.module.state_dict()["classifier.3.weight"], mnv3_12["classifier.3.weight"])


def test_several_state_dicts_need_a_choice(tmp_path, mnv3_12):
    path = tmp_path / "w.pth"
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in mnv3_12.items()}
    torch.save({"model": mnv3_12, "model_ema": ema}, path)
    with pytest.raises(CheckpointMismatchError, match=r"several state dicts \(model, model_ema\); choose one with --weights-key"):
        read_checkpoint(path)
    chosen = load_model("mobilenet_v3_small", weights_file=path, weights_key="model_ema")
    assert torch.equal(chosen.module.state_dict()["classifier.3.bias"], ema["classifier.3.bias"])
    with pytest.raises(CheckpointMismatchError, match="no state_dict under 'ema'; it has model, model_ema"):
        read_checkpoint(path, "ema")


def test_class_names_must_match_the_head(tmp_path, mnv3_12):
    path = tmp_path / "w.pth"
    torch.save(mnv3_12, path)
    ten = ClassSet(10, "file c.txt", tuple(DIGIT_NAMES))
    with pytest.raises(CheckpointMismatchError, match="10 classes .* asked for, but the head of checkpoint .* has 12 outputs"):
        load_model("mobilenet_v3_small", weights_file=path, classes=ten)
    named = ClassSet(12, "file c.txt", tuple(TWELVE))
    assert load_model("mobilenet_v3_small", weights_file=path, classes=named).classes.names == tuple(TWELVE)


def test_pretrained_weights_refuse_another_head_and_random_init_builds_it():
    with pytest.raises(UsageError, match="pretrained weights of efficientnet_lite0 have 1000 classes, not 5.*edgekit finetune"):
        load_model("efficientnet_lite0", classes=ClassSet(5, "--num-classes"))
    assert load_model("resnet18", random_init=True, classes=ClassSet(5, "--num-classes")).module.fc.out_features == 5


def test_export_of_a_twelve_class_checkpoint_records_its_classes(tmp_path, mnv3_12):
    weights, names = tmp_path / "mnv3_12.pth", tmp_path / "parts.txt"
    torch.save({"model": mnv3_12, "epoch": 3}, weights)
    names.write_text("\n".join(TWELVE) + "\n")
    proc = run_cli("export", "mobilenet_v3_small", "--weights", str(weights), "--classes", str(names), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((tmp_path / proc.stdout.strip().splitlines()[-1] / "manifest.json").read_text())
    assert manifest["model"]["num_classes"] == 12 and manifest["output"]["shape"][-1] == 12
    assert manifest["model"]["classes"]["names"] == TWELVE
    names.write_text("\n".join(TWELVE[:10]) + "\n")
    proc = run_cli("export", "mobilenet_v3_small", "--weights", str(weights), "--classes", str(names), cwd=tmp_path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    (error,) = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert "10 classes" in error and "12 outputs" in error


# --------------------------------------------------------------------------- data


@pytest.fixture(scope="module")
def digits_tree(tmp_path_factory) -> Path:
    return write_digits_folders(tmp_path_factory.mktemp("digits") / "data", size=16, per_class=6)


def test_own_class_folders_are_the_classes_in_sorted_order(digits_tree):
    val = evaluation_images(digits_tree).resolve()
    assert val.label_space.names == tuple(sorted(DIGIT_NAMES)) and val.labelled
    assert "the val split" in val.description and all("/val/" in str(v.image.path) for v in val.views)
    train = training_images(digits_tree).resolve()
    assert all("/train/" in str(v.image.path) for v in train.views) and len(train) == 60
    assert class_folders_of(digits_tree).names == tuple(sorted(DIGIT_NAMES))


def test_a_models_class_names_decide_the_label_indices(digits_tree):
    model = ClassSet(10, "checkpoint", tuple(DIGIT_NAMES))  # zero..nine: not sorted order
    images = evaluation_images(digits_tree).resolve(model)
    for v in images.views:
        assert DIGIT_NAMES[v.image.labels[0]] == v.image.path.parent.name
    with pytest.raises(DataError, match="class folder 'nine' .* is not one of the 9 classes"):
        evaluation_images(digits_tree).resolve(ClassSet(9, "checkpoint", tuple(DIGIT_NAMES[:9])))


def test_val_split_is_seeded_stratified_and_disjoint(tmp_path):
    tree = write_digits_folders(tmp_path / "tree", size=16, layout="tree", per_class=10)
    train = training_images(tree, val_split=0.2, seed=3).resolve()
    val = evaluation_images(tree, val_split=0.2, seed=3).resolve()
    assert len(val) == 20 and len(train) == 80
    assert not {v.image.path for v in train.views} & {v.image.path for v in val.views}
    per_class = {}
    for v in val.views:
        per_class[v.image.labels[0]] = per_class.get(v.image.labels[0], 0) + 1
    assert set(per_class.values()) == {2}
    again = evaluation_images(tree, val_split=0.2, seed=3).resolve()
    other = evaluation_images(tree, val_split=0.2, seed=4).resolve()
    assert again.identity == val.identity != other.identity
    write_digits_folders(tmp_path / "tv", size=16, per_class=2)
    with pytest.raises(UsageError, match="already has train/ and val/"):
        evaluation_images(tmp_path / "tv", val_split=0.2).resolve()


def test_csv_labels_with_class_names_and_a_header(tmp_path):
    from PIL import Image

    for i in range(4):
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(tmp_path / f"img{i}.png")
    labels = tmp_path / "labels.csv"
    labels.write_text("filename,label\nimg0.png,golden retriever\nimg1.png,cat\nimg2.png,cat\nimg3.png,golden retriever\n")
    images = resolve_images(tmp_path, labels, views_per_image=1)
    assert images.label_space.names == ("cat", "golden retriever")
    assert [v.image.labels[0] for v in images.views] == [1, 0, 0, 1]
    labels.write_text("filename,label\nimg0.png,cat\nimg1.png,cat\n")
    with pytest.raises(DataError, match="no label for 2 of 4 images"):
        resolve_images(tmp_path, labels, views_per_image=1)


def test_labels_that_do_not_fit_the_head_are_one_line(tmp_path, digits_tree):
    """A pretrained 1000-class model judged on ten own classes: an error naming both counts."""
    proc = run_cli("bench", "efficientnet_lite0", "--data", str(digits_tree), "--backend", "onnxruntime", "--iterations", "2", "--warmup", "0", "--power", "off", cwd=tmp_path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "the labels name 10 classes" in proc.stderr and "1000 outputs" in proc.stderr and "edgekit finetune" in proc.stderr


# --------------------------------------------------------------------------- imported ONNX files


@pytest.fixture(scope="module")
def digits_onnx(tmp_path_factory) -> Path:
    from digits import export_digits_onnx, train_digits_net

    torch.set_num_threads(1)
    model, _ = train_digits_net(seed=0, epochs=6)
    path = tmp_path_factory.mktemp("onnx") / "digits_cnn.onnx"
    export_digits_onnx(model, path)
    return path


def test_an_imported_onnx_takes_its_preprocessing_and_classes_from_json(tmp_path, digits_onnx):
    data = write_digits_folders(tmp_path / "digits", size=16, per_class=10, resample="nearest")  # the pixels the net trained on
    described = tmp_path / "pre.json"
    described.write_text(json.dumps({"input_size": 16, "resize_size": 16, "interpolation": "nearest", "mean": [0.5] * 3, "std": [0.5] * 3,
                                     "classes": list(DIGIT_NAMES)}))
    out = tmp_path / "r.json"
    proc = run_cli("bench", str(digits_onnx), "--preprocessing", str(described), "--data", str(data), "--backend", "onnxruntime",
                   "--iterations", "2", "--warmup", "0", "--power", "off", "--json", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    document = json.loads(out.read_text())
    (row,) = document["results"]
    assert row["accuracy"]["note"] is None and row["accuracy"]["images"] == 100 and row["accuracy"]["top1"] > 80.0
    manifest = json.loads((tmp_path / document["artifact"]["path"] / "manifest.json").read_text())
    assert manifest["preprocessing"]["mean"] == [0.5] * 3 and manifest["model"]["classes"]["names"] == list(DIGIT_NAMES)


@pytest.mark.parametrize("case, message", [
    ("twelve-names", "12 classes .* given, but digits_cnn.onnx has 10 outputs"),
    ("imagenet-data", "the labels name 1000 classes .* 10 outputs"),
    ("bad-json", "std must be three numbers"),
])
def test_an_imported_onnx_that_fits_no_label_set_is_one_line(tmp_path, digits_onnx, case, message):
    import re

    described = tmp_path / "pre.json"
    payload = {"input_size": 16, "resize_size": 16, "mean": [0.5] * 3, "std": [0.5] * 3}
    args = ["--data", str(write_digits_folders(tmp_path / "d", size=16, per_class=2))]
    if case == "twelve-names":
        payload["classes"] = TWELVE
    elif case == "imagenet-data":
        imagenet = tmp_path / "imagenet" / "n01440764"
        imagenet.mkdir(parents=True)
        from PIL import Image

        Image.new("RGB", (16, 16)).save(imagenet / "a.png")
        args = ["--data", str(tmp_path / "imagenet")]
    else:
        payload["std"] = [0.5]
    described.write_text(json.dumps(payload))
    proc = run_cli("bench", str(digits_onnx), "--preprocessing", str(described), *args, "--backend", "onnxruntime",
                   "--iterations", "2", "--warmup", "0", "--power", "off", cwd=tmp_path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    (error,) = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert re.search(message, error), error
