"""Hostile and huge images (issue 28), for benchmarks/reliability.py: one decode budget for
every path that reads images; the offending file named and skipped wherever images are
used; peak resident memory measured (the largest process of the run, workers included)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import faults_images as fi  # tests/ is on the path (reliability.py puts it there)
from reliability import QUICK, edgekit, shown

SQ = ("squeezenet1_1", "--random-init")


def _mb(peak: int) -> str:
    return f"{peak / 2**20:,.0f} MB"


def _warning(proc, name: str) -> str:
    lines = [line for line in proc.stderr.splitlines() if name in line]
    return lines[0] if lines else "(no line names it)"


def cases(t, w: Path, art: dict[str, Path]) -> None:
    tiny = art["tiny"]
    root = w / "images28"
    thin = fi.photo_folder(root / "thin")
    for name in ("chelsea.png", "rocket.jpg"):  # calibration wants 8 or more readable images
        shutil.copyfile(thin / name, thin / f"again-{name}")
    fi.thin_png(thin / "thin.png")
    clean = root / "clean"
    shutil.copytree(thin, clean, ignore=shutil.ignore_patterns("thin.png"))

    # --- a 317-byte PNG that resized is 256 x 15.4 M pixels (~11.8 GB per decode, in every worker)
    args = ("bench", *SQ, *QUICK, "--views", "1", "--data", str(thin), "--json", "thin.json")

    def bench_thin():
        (root / "bench").mkdir(exist_ok=True)
        proc, peak = fi.run_capped(*args, cwd=root / "bench")
        if proc.returncode != 0:
            return False, f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1][:200]}; peak {_mb(peak)}"
        images = json.loads((root / "bench" / "thin.json").read_text())["images"]
        ok = images["images_skipped"] == 1 and "thin.png (decoding it would take" in proc.stderr and peak < fi.GB
        return ok, f"exit 0; peak resident {_mb(peak)} (was a MemoryError at an 8 GB cap); {_warning(proc, 'thin.png')}"[:400]
    t.case("1 x 60,000 PNG (317 bytes) in bench --data", shown(args).replace(str(thin), "DIR"),
           "completes; the file named and skipped (decode budget); peak resident < 1 GB", bench_thin)

    # --- the same file in INT8 calibration: skipped there too, memory as without it
    def calib(folder: Path, where: str):
        (root / where).mkdir(exist_ok=True)
        return fi.run_capped("bench", str(tiny), "--int8", "--calib", str(folder), "--backend", "onnxruntime", *QUICK, "--views", "1", cwd=root / where)

    def calibration_thin():
        base, base_peak = calib(clean, "calib-clean")
        proc, peak = calib(thin, "calib-thin")
        if proc.returncode != 0 or base.returncode != 0:
            return False, f"exit {proc.returncode}/{base.returncode}: {(proc.stderr or base.stderr).strip().splitlines()[-1][:200]}"
        line = _warning(proc, "thin.png")
        ok = line.startswith("warning: 1 unreadable image skipped: thin.png") and "left out of" in line and peak < max(fi.GB, base_peak + 128 * 2**20)
        return ok, f"exit 0; peak {_mb(peak)} ({_mb(base_peak)} without the file); {line}"[:400]
    t.case("1 x 60,000 PNG in INT8 calibration", "edgekit bench TINY --int8 --calib DIR --backend onnxruntime",
           "skipped and named in a warning; peak as without it (< 1 GB or + the 128 MB budget)", calibration_thin)

    # --- bundles leave it out; a bundle holding one anyway: the device runner skips and names it
    def bundle_and_runner():
        folder = fi.photo_folder(root / "bundle-data", ("chelsea.png", "coffee.png"))
        fi.thin_png(folder / "thin.png")
        proc = edgekit("bundle", str(tiny), "--backend", "onnxruntime", "--views", "1", "--data", str(folder), "-o", "b", cwd=root)
        if proc.returncode != 0 or "not bundled" not in _warning(proc, "thin.png"):
            return False, f"bundle: exit {proc.returncode}: {_warning(proc, 'thin.png')}"[:400]
        name = Path(fi.swap_bundled_image(root / "b", fi.thin_png(root / "t.png"))).name
        run, peak = fi.run_capped("bench", "--iterations", "3", "--warmup", "1", "--power", "off", cwd=root / "b", runner=True)
        line = _warning(run, name)
        ok = run.returncode == 0 and line.startswith("warning: 1 unreadable image skipped") and "Traceback" not in run.stderr and peak < fi.GB
        return ok, f"bundle: not bundled; runner: exit {run.returncode}, peak {_mb(peak)}; {line}"[:400]
    t.case("1 x 60,000 PNG in a bundle, and in a bundle's images on the device", "edgekit bundle TINY --data DIR; python3 -m edgekit.device_runner bench",
           "left out of the bundle with a warning; the runner skips and names it on one line, < 1 GB", bundle_and_runner)

    # --- fine-tuning used to drop it from every batch without a word, counting it
    def finetune_thin():
        from digits import write_digits_folders

        data = write_digits_folders(root / "digits", size=16, per_class=4)
        fi.thin_png(sorted((data / "train").iterdir())[0] / "thin.png")
        proc = edgekit("finetune", *SQ, "--data", str(data), "--input-size", "32", "--ft-probe-epochs", "1", "--ft-epochs", "1",
                       "--ft-batch", "16", "--ft-augment", "no-flip", cwd=root)
        line = _warning(proc, "thin.png")
        ok = proc.returncode == 0 and "left out of fine-tuning (40 of 41 training" in line and "40 training images" in " ".join(proc.stdout.split())
        return ok, f"exit {proc.returncode}; {line}"[:400]
    t.case("unreadable training image in fine-tuning", "edgekit finetune squeezenet1_1 --data DIR (a 1 x 60,000 PNG in train/)",
           "named in one warning; the training count excludes it", finetune_thin)

    # --- formats: GIF read (first frame), HEIC named
    def formats():
        folder = fi.photo_folder(root / "formats", ("chelsea.png", "coffee.png"))
        fi.animated_gif(folder / "anim.gif")
        fi.unreadable_formats(folder)
        proc = edgekit("bench", str(tiny), "--backend", "onnxruntime", *QUICK, "--views", "1", "--data", str(folder), "--json", "formats.json", cwd=root)
        if proc.returncode != 0:
            return False, f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1][:200]}"
        images = json.loads((root / "formats.json").read_text())["images"]
        line = _warning(proc, ".heic")
        ok = images["images_evaluated"] == 3 and "not read (1 .heic, 1 .heif)" in line
        return ok, f"exit 0; {images['images_evaluated']} images evaluated (GIF included); {line}"[:400]
    t.case(".gif, .heic and .heif files in an image folder", "edgekit bench TINY --data DIR",
           "GIF read (first frame); one warning naming how many files of which formats were not read", formats)

    # --- a 42-megapixel JPEG of under 1 MB: over the budget in full, read at a reduced DCT scale
    def big_jpeg():
        from edgekit import data
        from edgekit.core import Preprocessing

        jpeg = fi.big_jpeg(root / "big.jpg")
        x = data.preprocess(data.ImageView(data.LabelledImage(jpeg, None), 0), Preprocessing())
        return x.shape == (3, 224, 224), f"{jpeg.stat().st_size:,} bytes, 7000 x 6000: view {tuple(x.shape)} decoded at a reduced scale"
    t.case("42-megapixel JPEG (under 1 MB)", "edgekit.data.preprocess(view of big.jpg)",
           "read (libjpeg's reduced DCT scale keeps the short side >= the resize size), not skipped", big_jpeg)
