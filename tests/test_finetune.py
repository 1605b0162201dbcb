"""edgekit finetune: transfer learning from real pretrained weights (EfficientNet-Lite0) to
real labelled images (scikit-learn's digits as class folders), judged on a validation
split the training never saw."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import run_cli
from digits import DIGIT_NAMES, write_digits_folders

FAST = ["--input-size", "32", "--ft-probe-epochs", "1", "--ft-epochs", "1", "--ft-batch", "16", "--ft-augment", "no-flip"]


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    return write_digits_folders(tmp_path_factory.mktemp("finetune") / "digits", size=16, per_class=8)


@pytest.fixture(scope="module")
def finetuned(digits, tmp_path_factory) -> tuple[Path, Path, str]:
    work = tmp_path_factory.mktemp("finetune-work")
    proc = run_cli("finetune", "efficientnet_lite0", "--data", str(digits), *FAST, cwd=work)
    assert proc.returncode == 0, proc.stderr
    return work, work / proc.stdout.strip().splitlines()[-1], proc.stdout


def test_finetune_writes_a_new_model_with_the_datas_classes(finetuned):
    work, folder, stdout = finetuned
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["variant"] == "finetuned" and manifest["model"]["num_classes"] == 10
    assert manifest["model"]["classes"]["names"] == sorted(DIGIT_NAMES)
    assert manifest["output"]["shape"][-1] == 10
    step = manifest["steps"][-1]
    assert step["step"] == "finetune" and "the train split" in step["train"]["description"] and "the val split" in step["val"]["description"]
    report = manifest["finetune"]
    assert [e["phase"] for e in report["history"]] == ["probe", "full"] and report["val_images"] == 80
    assert "best: epoch" in stdout and "checkpoint:" in stdout
    checkpoint = torch.load(folder / "finetuned.pt", map_location="cpu", weights_only=True)
    assert checkpoint["edgekit"]["classes"] == sorted(DIGIT_NAMES)


def test_bench_on_the_validation_split_reproduces_the_training_runs_top1(finetuned, digits):
    """The bench's top-1 on val/ (ONNX Runtime and the PyTorch original, joined on view
    identity) is the validation top-1 the fine-tuning chose its epoch by: same images,
    same preprocessing, same labels."""
    work, folder, _ = finetuned
    out = work / "val.json"
    proc = run_cli("bench", str(folder), "--data", str(digits), "--backend", "pytorch,onnxruntime", "--iterations", "2", "--warmup", "0",
                   "--power", "off", "--json", str(out), cwd=work)
    assert proc.returncode == 0, proc.stderr
    document = json.loads(out.read_text())
    best = json.loads((folder / "manifest.json").read_text())["finetune"]["best_val_top1"]
    for row in document["results"]:
        assert row["accuracy"]["note"] is None and row["accuracy"]["images"] == 80
        assert row["accuracy"]["top1"] == pytest.approx(best, abs=1e-6)
        assert {c["name"] for c in row["accuracy"]["per_class"]} <= set(DIGIT_NAMES)
    assert "the val split" in document["images"]["description"]


def test_an_interrupted_finetune_resumes_where_it_stopped(tmp_path, digits):
    from edgekit.data import evaluation_images, training_images
    from edgekit.models import find_head, load_model, with_new_head
    from edgekit.classes import folder_class_set
    from edgekit.transforms.finetune import FinetuneOptions, finetune

    classes = folder_class_set(DIGIT_NAMES, digits)
    train = [(str(v.image.path), v.image.labels[0]) for v in training_images(digits).resolve(classes).views]
    val = [(str(v.image.path), v.image.labels[0]) for v in evaluation_images(digits).resolve(classes).views]
    options = FinetuneOptions(epochs=1, probe_epochs=1, batch_size=16, augment="none")

    def model():
        loaded = with_new_head(load_model("efficientnet_lite0").at_input_size(32), classes)
        return loaded, find_head(loaded.module, 10)

    (whole, head) = model()
    uninterrupted = finetune(whole.module, head, train, val, whole.spec.preprocessing, options)

    def stop_in_second_epoch(stage, done, total):
        if stage.startswith("epoch 2/2") and done == 1:
            raise KeyboardInterrupt

    resume = tmp_path / "resume.pt"
    first, head = model()
    with pytest.raises(KeyboardInterrupt):
        finetune(first.module, head, train, val, first.spec.preprocessing, options, stop_in_second_epoch, resume)
    second, head = model()
    resumed = finetune(second.module, head, train, val, second.spec.preprocessing, options, resume_file=resume)
    assert resumed.resumed_from_epoch == 1 and resumed.epochs_run == 2
    assert resumed.history[0].val_top1 == uninterrupted.history[0].val_top1  # epoch 1 came from the resume file
    assert resumed.history[1].val_top1 == pytest.approx(uninterrupted.history[1].val_top1, abs=10.0)  # same seeds; CPU kernels may reorder sums


@pytest.mark.parametrize("args, message", [
    ([], "fine-tuning trains on --data"),
    (["--data", "TREE"], "has no train/ and val/ folders: give --val-split"),
    (["--data", "EMPTYVAL"], "the validation split .* holds no images"),
    (["--data", "SHARED"], "the validation split shares 20 files with training"),
])
def test_finetune_refuses_data_it_cannot_split(tmp_path, args, message):
    import re

    tree = write_digits_folders(tmp_path / "tree", size=16, layout="tree", per_class=2)
    empty = write_digits_folders(tmp_path / "emptyval", size=16, per_class=2)
    for folder in (empty / "val").iterdir():
        for f in folder.iterdir():
            f.unlink()
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "train").symlink_to(tree, target_is_directory=True)
    (shared / "val").symlink_to(tree, target_is_directory=True)  # the same files under both names
    args = [{"TREE": str(tree / ""), "EMPTYVAL": str(empty), "SHARED": str(shared)}.get(a, a) for a in args]
    proc = run_cli("finetune", "efficientnet_lite0", *args, *FAST, cwd=tmp_path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    (error,) = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert re.search(message, error), error


def test_a_recipe_continues_from_the_finetuned_model(finetuned, digits):
    """[finetune] and --data in a recipe build the same artifact as the command (reused by
    its key) and bench it on the validation split."""
    work, folder, _ = finetuned
    recipe = work / "recipe.toml"
    recipe.write_text(
        'models = ["efficientnet_lite0"]\nvariants = ["finetuned"]\nbackends = ["onnxruntime"]\n'
        '[export]\ninput_size = 32\n[finetune]\nprobe_epochs = 1\nepochs = 1\nbatch = 16\naugment = "no-flip"\n'
        f'[bench]\ndata = "{digits}"\niterations = 2\nwarmup = 0\npower = "off"\n'
    )
    proc = run_cli("run", str(recipe), "--json", str(work / "recipe.json"), cwd=work)
    assert proc.returncode == 0, proc.stderr
    (row,) = json.loads((work / "recipe.json").read_text())["results"]
    assert row["variant"] == "finetuned" and row["artifact_key"] == folder.name
    assert row["accuracy"]["classes"].startswith("10 classes") and row["accuracy"]["top1"] is not None
