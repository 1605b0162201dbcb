"""Reliability rows for label, class and folder inputs (issue 28, "hostile and huge inputs"):
BOMs, a file labelled twice, symlink loops, /dev/zero as a label or classes file, the same
photo in train/ and val/ or in --calib and --data, a single class, control characters in
class names, a 20 MB model name. Each runs through the real `edgekit` command line; the
faults come from tests/faults_labels.py. Called by benchmarks/reliability.py:

    cases(table, work_folder, artifacts)   # artifacts: "tiny", "lite0", "int8" folders
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import faults_labels as fl
from reliability import QUICK, edgekit, one_line

SQ = ("squeezenet1_1", "--random-init")
Q = (*QUICK, "--views", "1")
TINY_MODEL = ("mobilenet_v3_small", "--random-init", "--input-size", "64")


def cases(t, w: Path, art: dict[str, Path]) -> None:
    tiny = art["tiny"]
    base = w / "labels"
    base.mkdir(exist_ok=True)
    flat = fl.flat_folder(base / "flat", ("chelsea.png", "coffee.png"))

    # --- a byte-order mark kept in the first name
    fl.with_bom(base / "bom-labels.txt", "chelsea.png n02123045\ncoffee.png n07920052\n")

    def bom():
        args = ("bench", str(tiny), "--data", str(flat), "--labels", str(base / "bom-labels.txt"), "--backend", "onnxruntime", *Q, "--json", str(base / "bom.json"))
        proc = edgekit(*args, cwd=w)
        if proc.returncode != 0:
            return False, f"exit {proc.returncode}: {(proc.stderr.strip().splitlines() or [''])[-1][:200]}"
        images = json.loads((base / "bom.json").read_text())["images"]
        return images["labelled"] and images["count"] == 2, f"exit 0; {images['count']} images, labelled {images['labelled']} (the BOM was not part of 'chelsea.png')"
    t.case("label file saved with a UTF-8 BOM", "edgekit bench TINY --data FLAT --labels bom-labels.txt", "the BOM is dropped: both images labelled, exit 0", bom)

    fl.with_bom(base / "bom-classes.txt", "cats\ncups\n")
    cats = fl.class_tree(base / "cats-cups", {"cats": ("chelsea.png",), "cups": ("coffee.png",)})

    def bom_classes():
        proc = edgekit("bench", *TINY_MODEL, "--classes", str(base / "bom-classes.txt"), "--data", str(cats), "--backend", "onnxruntime", *Q,
                       "--json", str(base / "bom-classes.json"), "--artifacts", str(base / "exported"), cwd=w)
        if proc.returncode != 0:
            return False, f"exit {proc.returncode}: {(proc.stderr.strip().splitlines() or [''])[-1][:200]}"
        images = json.loads((base / "bom-classes.json").read_text())["images"]
        names = (images.get("classes") or {}).get("names")
        return names == ["cats", "cups"], f"exit 0; classes {names}"
    t.case("classes file saved with a UTF-8 BOM", "edgekit bench mobilenet_v3_small --random-init --classes bom-classes.txt --data DIR",
           "the BOM is dropped: class folder 'cats' matches the first name, exit 0", bom_classes)

    # --- a file labelled twice
    fl.labelled_twice(base / "twice.txt", "chelsea.png", "n02123045", "n02123159", (("coffee.png", "n07920052"),))
    t.error_case("a file labelled twice with two labels", ("bench", str(tiny), "--data", str(flat), "--labels", str(base / "twice.txt"), *Q), 2,
                 "twice.txt", "'chelsea.png' twice", "line 1", "line 3")
    fl.labelled_twice(base / "twice-same.txt", "chelsea.png", "n02123045", "281", (("coffee.png", "n07920052"),))

    def twice_same():
        proc = edgekit("bench", str(tiny), "--data", str(flat), "--labels", str(base / "twice-same.txt"), "--backend", "onnxruntime", *Q, cwd=w)
        return proc.returncode == 0, f"exit {proc.returncode}" + ("" if proc.returncode == 0 else f": {proc.stderr.strip().splitlines()[-1][:200]}")
    t.case("a file labelled twice with the same class (synset, then index)", "edgekit bench TINY --data FLAT --labels twice-same.txt", "accepted, exit 0", twice_same)

    # --- symlink loops
    loops = fl.class_tree(base / "loops", {fl.IMAGENET_FOLDERS[0]: ("chelsea.png",), fl.IMAGENET_FOLDERS[1]: ("coffee.png",)})
    made = fl.symlink_loops(loops)

    def symlink_loop():
        proc = edgekit("bench", str(tiny), "--data", str(loops), "--backend", "onnxruntime", *Q, "--json", str(base / "loops.json"), cwd=w)
        said = [line for line in proc.stderr.splitlines() if "cannot be followed" in line]
        ok = proc.returncode == 0 and len(said) == len(made) and "Traceback" not in proc.stderr
        return ok, f"exit {proc.returncode}; " + (said[0][:200] if said else "no warning") + f" ({len(said)} warnings)"
    t.case("symlink loops in a class tree (a folder and an image linking to themselves)", "edgekit bench TINY --data LOOPS",
           "each loop skipped with a warning naming it; the run completes", symlink_loop)

    # --- special and huge files
    t.error_case("/dev/zero as --labels", ("bench", str(tiny), "--data", str(flat), "--labels", "/dev/zero", *Q), 2, "/dev/zero", "not a regular file")
    t.error_case("/dev/zero as --classes", ("export", *SQ, "--classes", "/dev/zero", "--artifacts", str(base / "exported")), 2, "/dev/zero", "not a regular file")
    huge = base / "huge-labels.txt"
    with open(huge, "wb") as f:
        f.truncate(600 * 1024 * 1024)  # sparse
    t.error_case("a 600 MB label file", ("bench", str(tiny), "--data", str(flat), "--labels", str(huge), *Q), 2, "huge-labels.txt", "at most")

    # --- the same photo in two sets
    split = fl.split_tree(base / "split", imagenet=True)

    def train_val():
        proc = edgekit("bench", str(tiny), "--data", str(split), "--backend", "onnxruntime", *Q, "--json", str(base / "split.json"), cwd=w)
        said = next((line for line in proc.stderr.splitlines() if "byte-identical" in line), "no warning")
        recorded = proc.returncode == 0 and "byte-identical" in json.loads((base / "split.json").read_text())["images"]["description"]
        return proc.returncode == 0 and said.startswith("warning: 1 of the 3 images of val/") and recorded, f"exit {proc.returncode}; {said[:200]}; recorded in images.description: {recorded}"
    t.case("the same photo in train/ and val/ (renamed copy)", "edgekit bench TINY --data SPLIT",
           "a warning naming how many and an example; recorded in the results' images.description; evaluation not refused", train_val)

    calib = fl.calibration_folder(base / "calib", flat / "coffee.png")  # 9 photos, one of them a renamed copy of coffee.png

    def calib_data():
        proc = edgekit("bench", *TINY_MODEL, "--int8", "--calib-method", "minmax", "--max-fallback", "0", "--no-bias-correction", "--calib", str(calib),
                       "--data", str(flat), "--labels", str(base / "bom-labels.txt"), "--backend", "onnxruntime", *Q, "--json", str(base / "calib.json"),
                       "--artifacts", str(base / "exported"), cwd=w)
        said = next((line for line in proc.stderr.splitlines() if "byte-identical" in line), "no warning")
        recorded = proc.returncode == 0 and "byte-identical" in (json.loads((base / "calib.json").read_text())["images"].get("calibration") or "")
        return proc.returncode == 0 and said.startswith("warning: 1 of the 2 images of evaluation") and recorded, f"exit {proc.returncode}; {said[:200]}; recorded in images.calibration: {recorded}"
    t.case("the same photo in --calib and --data", "edgekit bench mobilenet_v3_small --random-init --int8 --calib CALIB --data FLAT",
           "a warning naming how many and an example; recorded in the results' images.calibration", calib_data)

    # --- one class
    one = fl.single_class_tree(base / "one")
    t.error_case("fine-tuning on a single class", ("finetune", *SQ, "--data", str(one), "--artifacts", str(base / "exported")), 2, "at least 2 classes")

    # --- control characters in class names
    fl.classes_with_control_characters(base / "escapes.json")
    t.error_case("class names with a newline, an ANSI escape and a bidi override (--classes)",
                 ("export", *SQ, "--classes", str(base / "escapes.json"), "--artifacts", str(base / "exported")), 2, "control character U+000A")
    escaped = fl.class_tree(base / "escaped", {"cats": ("chelsea.png",), "dog\x1b[31mred": ("coffee.png",)})

    def escape_folder():
        proc = edgekit("bench", str(tiny), "--data", str(escaped), *Q, cwd=w)
        ok, text = one_line(proc, 2, "control character U+001B")
        return ok and "\x1b" not in proc.stderr, text.replace("\x1b", "<ESC>") + ("; raw ESC on stderr!" if "\x1b" in proc.stderr else "; no raw ESC reached stderr")
    t.case("a class folder named with an ANSI escape sequence", "edgekit bench TINY --data DIR (folder 'dog\\x1b[31mred')",
           "refused, one error line with the name escaped, exit 2", escape_folder)

    # --- a huge model name
    long_name = fl.huge_name(120_000)  # the longest one argument can be (Linux: 128 KiB)
    t.case("a 120,000-character model name (command line)", "edgekit export mmm...(120,000 characters) --random-init", "one error line, the name quoted in part, exit 2",
           lambda: one_line(edgekit("export", long_name, "--random-init", cwd=w), 2, "(120,000 characters)"))

    def twenty_mb():
        code = ("import sys, edgekit\nfrom edgekit.core import EdgekitError\n"
                "try:\n    edgekit.export('m' * 20_000_000, random_init=True)\nexcept EdgekitError as e:\n    print(f'error: {e}', file=sys.stderr); sys.exit(e.exit_code)\n")
        proc = subprocess.run([sys.executable, "-c", code], cwd=w, capture_output=True, text=True, timeout=300, check=False,
                              env={**__import__("os").environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
        ok, text = one_line(proc, 2, "(20,000,000 characters)")
        return ok and len(proc.stderr) < 1000, text + f"; {len(proc.stderr)} bytes on stderr"
    t.case("a 20 MB model name (Python API; argv cannot carry it)", "edgekit.export('m' * 20_000_000)", "one EdgekitError, the name quoted in part", twenty_mb)
