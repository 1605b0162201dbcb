"""Per-class top-1 and confusions: counted on view identity, stored in results rows,
named on screen and in the report site."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from edgekit.core import AccuracyStats, Artifact, BenchResult, DataError, LatencyStats
from edgekit.data import ImageSet, ImageView, LabelledImage, imagenet_classes
from edgekit.evaluation import FULL_CONFUSION_CLASSES, LogitsFile, LogitsWriter, ViewTable, evaluate
from edgekit.judging import judge
from edgekit.results.document import dumps_results, load_results_document, results_document
from edgekit.results.site import write_report
from edgekit.results.tables import class_notes, screen_notes, text_table
from edgekit.worker import WorkerOutput

NAMES = ("cat", "dog", "bird", "fish", "horse")  # "horse" has no image
PRIMARY = [0, 0, 0, 0, 1, 1, 1, 2, 2, 3]
# view 9 is a fish that is also acceptable as a dog: predicting dog is right, not a confusion
LABELS = np.array([[c, -1] for c in PRIMARY[:-1]] + [[3, 1]])
# backend b could not read view 2; its predictions for the other views, by view index
B_PREDICTED = {0: 0, 1: 1, 3: 0, 4: 1, 5: 0, 6: 1, 7: 2, 8: 0, 9: 1}


def _write(tmp_path, name, rows, logits):
    writer = LogitsWriter(tmp_path / f"{name}.f32", tmp_path / f"{name}.rows.npy")
    for start in range(0, len(rows), 3):  # several appends, as a worker streams batches
        writer.append(rows[start : start + 3], logits[start : start + 3])
    return LogitsFile.from_worker(writer.close())


def _one_hot(classes, width=len(NAMES)):
    logits = np.full((len(classes), width), -5.0, np.float32)
    logits[np.arange(len(classes)), classes] = 5.0
    return logits


@pytest.fixture()
def evaluated(tmp_path):
    views = ViewTable(files=np.arange(10), labels=LABELS, file_names=tuple(f"{i}.jpg" for i in range(10)))
    a = _write(tmp_path, "a", list(range(10)), _one_hot(PRIMARY))  # right on every view
    rows = sorted(B_PREDICTED)
    b = _write(tmp_path, "b", rows, _one_hot([B_PREDICTED[i] for i in rows]))
    return evaluate({"a": a, "b": b}, views, baseline="a", class_names=NAMES)


def test_per_class_top1_and_confusions_are_exact_on_view_identity(evaluated):
    """View 2 (a cat) counts for neither backend; b's rows are not shifted onto the next
    view's label, so every class's count and every confusion cell is the one by identity."""
    b = evaluated.accuracy["b"]
    assert evaluated.evaluated == 9
    assert [(c["class"], c["name"], c["images"], c["correct"]) for c in b.per_class] == [
        (0, "cat", 3, 2), (1, "dog", 3, 2), (2, "bird", 2, 1), (3, "fish", 1, 1),
    ]  # no row for "horse": it has no image
    assert [c["top1"] for c in b.per_class] == pytest.approx([200 / 3, 200 / 3, 50.0, 100.0])
    assert sum(c["correct"] for c in b.per_class) == pytest.approx(b.top1 * b.images / 100)  # the row's own top-1
    assert b.top_confusions == (
        {"true": 0, "true_name": "cat", "predicted": 1, "predicted_name": "dog", "count": 1},
        {"true": 1, "true_name": "dog", "predicted": 0, "predicted_name": "cat", "count": 1},
        {"true": 2, "true_name": "bird", "predicted": 0, "predicted_name": "cat", "count": 1},
    )  # fish -> dog is an acceptable label, not a confusion
    assert sorted(b.confusion) == [(0, 0, 2), (0, 1, 1), (1, 0, 1), (1, 1, 2), (2, 0, 1), (2, 2, 1), (3, 1, 1)]
    a = evaluated.accuracy["a"]
    assert [(c["images"], c["top1"]) for c in a.per_class] == [(3, 100.0), (3, 100.0), (2, 100.0), (1, 100.0)]
    assert a.top_confusions == () and sorted(a.confusion) == [(0, 0, 3), (1, 1, 3), (2, 2, 2), (3, 3, 1)]


def test_confusions_rank_by_count_and_many_classes_keep_no_full_matrix(tmp_path):
    classes = FULL_CONFUSION_CLASSES + 1
    truth = [5] * 4 + [7] * 3 + [9] * 12
    predicted = [6, 6, 6, 5] + [8, 8, 7] + list(range(12))  # 9 -> 0..8, 10, 11 once each
    views = ViewTable(files=np.arange(len(truth)), labels=np.array(truth)[:, None], file_names=tuple(map(str, truth)))
    out = _write(tmp_path, "x", list(range(len(truth))), _one_hot(predicted, classes))
    acc = evaluate({"x": out}, views).accuracy["x"]
    assert acc.confusion is None  # over FULL_CONFUSION_CLASSES: per class and the top confusions only
    assert [(c["class"], c["images"], c["correct"]) for c in acc.per_class] == [(5, 4, 1), (7, 3, 1), (9, 12, 1)]
    assert len(acc.top_confusions) == 10
    assert [(c["true"], c["predicted"], c["count"]) for c in acc.top_confusions[:3]] == [(5, 6, 3), (7, 8, 2), (9, 0, 1)]
    assert acc.top_confusions[0]["true_name"] == "5"  # no names given: the index


def test_no_per_class_where_top1_does_not_apply(tmp_path):
    labelled = ViewTable(files=np.arange(3), labels=np.array([[0], [1], [2]]), file_names=("a", "b", "c"))
    out = _write(tmp_path, "x", [0, 1, 2], _one_hot([0, 1, 1]))
    noted = evaluate({"x": out}, labelled, note="not applicable: random-init weights", class_names=NAMES).accuracy["x"]
    unlabelled = evaluate({"x": out}, dataclasses.replace(labelled, labels=None)).accuracy["x"]
    for acc in (noted, unlabelled):
        assert acc.per_class is None and acc.top_confusions is None and acc.confusion is None


def _artifact(tmp_path) -> Artifact:
    return Artifact(tmp_path, {"model": {"name": "tiny"}, "key": "k1", "variant": "fp32"})


def _raw() -> dict:
    return {"precision": "fp32", "providers": [], "threads": None, "latency": [], "peak_rss_mb": None, "size_mb": None, "environment": {}}


@pytest.mark.parametrize("names", [None, tuple(f"class {i}" for i in range(1000))])
def test_judge_names_classes_from_the_image_set(tmp_path, names):
    """ImageNet-1k names when the set has no names of its own; the set's names otherwise."""
    truth, predicted = [1, 1, 2], [1, 3, 2]
    images = ImageSet(tuple(ImageView(LabelledImage(Path(f"{i}.jpg"), (c,)), 0) for i, c in enumerate(truth)), "three", class_names=names)
    logits = _write(tmp_path, "ort", [0, 1, 2], _one_hot(predicted, 1000))
    judged = judge(_artifact(tmp_path), images, ["onnxruntime"], {"onnxruntime": WorkerOutput(_raw(), logits, ())}, {})
    acc = judged.results[0].accuracy
    expected = names or imagenet_classes()[1]
    assert [(c["name"], c["images"], c["top1"]) for c in acc.per_class] == [(expected[1], 2, 50.0), (expected[2], 1, 100.0)]
    assert acc.top_confusions == ({"true": 1, "true_name": expected[1], "predicted": 3, "predicted_name": expected[3], "count": 1},)
    assert acc.confusion is None  # 1000 classes: the results row stays small


# --------------------------------------------------------------------------- results rows and documents


def _row(backend: str, accuracy: AccuracyStats, model: str = "tiny") -> BenchResult:
    return BenchResult(
        model=model, backend=backend, variant="fp32", artifact_key="k1", precision="fp32", providers=(), threads=None,
        latency=(LatencyStats(1, 20, 2.0, 2.2, 2.5, 2.1, 476.0),), peak_rss_mb=300.0, size_mb=1.0, accuracy=accuracy,
        environment={"host": "here", "run": "r1"},
    )


def _rows(evaluated) -> list[BenchResult]:
    return [_row("pytorch", evaluated.accuracy["a"]), _row("onnxruntime", evaluated.accuracy["b"])]


def test_per_class_fields_survive_the_results_file(tmp_path, evaluated):
    path = tmp_path / "results.json"
    path.write_text(dumps_results(results_document(_rows(evaluated), command="edgekit bench tiny")))
    raw = json.loads(path.read_text())["results"][1]["accuracy"]
    assert raw["per_class"][0] == {"class": 0, "name": "cat", "images": 3, "correct": 2, "top1": pytest.approx(200 / 3)}
    assert [0, 1, 1] in raw["confusion"]
    loaded = [BenchResult.from_dict(r) for r in load_results_document(path)["results"]]
    assert loaded[1].accuracy == evaluated.accuracy["b"]


def test_results_files_without_per_class_still_load_and_bad_cells_are_refused(tmp_path, evaluated):
    document = json.loads(dumps_results(results_document(_rows(evaluated))))
    for row in document["results"]:
        for name in ("per_class", "top_confusions", "confusion"):
            del row["accuracy"][name]
    old = tmp_path / "old.json"
    old.write_text(json.dumps(document))
    assert all(BenchResult.from_dict(r).accuracy.per_class is None for r in load_results_document(old)["results"])
    document["results"][1]["accuracy"]["confusion"] = [[0, 1, -2]]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(document))
    with pytest.raises(DataError, match=r"results\[1\]\.accuracy\.confusion\[0\] must be a \[true, predicted, count\]"):
        load_results_document(bad)
    document["results"][1]["accuracy"]["confusion"] = None
    document["results"][1]["accuracy"]["per_class"] = [{"class": 0, "name": "cat", "images": 3, "top1": 250.0}]
    bad.write_text(json.dumps(document))
    with pytest.raises(DataError, match=r"results\[1\]\.accuracy\.per_class\[0\]\.top1 must be a percentage"):
        load_results_document(bad)


# --------------------------------------------------------------------------- on screen


def test_screen_notes_name_the_worst_classes_and_confusions_of_the_first_other_backend(evaluated):
    notes = class_notes(_rows(evaluated))
    assert notes == [
        "worst classes (onnxruntime): bird 50.0% (2), cat 66.7% (3), dog 66.7% (3)",
        "top confusions: cat->dog 1, dog->cat 1, bird->cat 1",
    ]
    assert screen_notes(_rows(evaluated))[-2:] == notes
    table = text_table(_rows(evaluated), "tiny fp32")
    assert "worst classes (onnxruntime)" in table and "cat->dog 1" in table
    alone = class_notes(_rows(evaluated)[:1])  # the baseline alone: every class right
    assert alone == ["per class (pytorch): all 4 classes 100% top-1"]


def test_screen_notes_stay_within_80_columns(evaluated):
    b = evaluated.accuracy["b"]
    long = dataclasses.replace(
        b,
        per_class=tuple({**c, "name": f"American Staffordshire terrier {c['class']}"} for c in b.per_class) * 4,
        top_confusions=tuple({**c, "true_name": "black and gold garden spider", "predicted_name": "great white shark"} for c in b.top_confusions) * 3,
    )
    notes = class_notes([_row("onnxruntime", long)])
    assert len(notes) == 2 and all(len(line) <= 80 for line in notes)
    assert notes[0].startswith("worst classes (onnxruntime): American Staffordsh~ 50.0% (2)") and notes[0].endswith(", ...")
    assert notes[1].startswith("top confusions: black and gold gard~->great white shark 1")


# --------------------------------------------------------------------------- the report site


def test_report_site_has_per_class_tables_and_confusion_pictures(tmp_path, evaluated):
    paths = write_report([results_document(_rows(evaluated), command="edgekit bench tiny")], tmp_path)
    names = {p.name for p in paths}
    assert {"confusion_tiny_fp32_pytorch.png", "confusion_tiny_fp32_onnxruntime.png", "per_class.csv"} <= names
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in paths if p.name.startswith("confusion_"))
    markdown, page = (tmp_path / "report.md").read_text(), (tmp_path / "report.html").read_text()
    assert "## Per-class accuracy" in markdown and "| 2 | bird | 2 | 1 | 50.0 |" in markdown
    assert "cat -> dog: 1" in markdown and "](confusion_tiny_fp32_onnxruntime.png)" in markdown
    assert '<table class="per-class">' in page and "<td>bird</td>" in page and '<img src="confusion_tiny_fp32_onnxruntime.png"' in page
    with open(tmp_path / "per_class.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["backend"], r["name"], r["images"], r["correct"]) for r in rows if r["backend"] == "onnxruntime"] == [
        ("onnxruntime", "cat", "3", "2"), ("onnxruntime", "dog", "3", "2"), ("onnxruntime", "bird", "2", "1"), ("onnxruntime", "fish", "1", "1"),
    ]


def test_report_site_for_many_classes_lists_the_worst_and_draws_no_names(tmp_path):
    classes = 40
    per_class = tuple({"class": c, "name": f"class {c}", "images": 2, "correct": 2 if c else 1, "top1": 100.0 if c else 50.0} for c in range(classes)) * 2
    per_class = tuple({**c, "class": i, "name": f"class {i}"} for i, c in enumerate(per_class))  # 80 classes
    confusion = tuple((c["class"], c["class"] if c["correct"] == 2 else 1, 2 if c["correct"] == 2 else 1) for c in per_class)
    acc = AccuracyStats(160, 99.4, 100.0, None, None, None, None, per_class=per_class, top_confusions=(), confusion=confusion)
    imagenet = AccuracyStats(160, 99.4, 100.0, None, None, None, None, per_class=per_class, top_confusions=())
    paths = write_report([results_document([_row("onnxruntime", acc), _row("openvino", imagenet)])], tmp_path)
    names = {p.name for p in paths}
    assert "confusion_tiny_fp32_onnxruntime.png" in names
    assert "confusion_tiny_fp32_openvino.png" not in names  # no full matrix stored: no picture
    markdown = (tmp_path / "report.md").read_text()
    assert "the 50 worst of 80 classes" in markdown
    assert markdown.count("| class 40 |") == 2 and "| class 79 |" not in markdown  # worst first, once per row
