"""Image requests: which images evaluation, training and calibration use, before they are listed."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..core import ClassSet, DataError, UsageError
from ..options import declared
from .images import EVEN_VIEWS, MAX_VIEWS, ODD_VIEWS, ImageSet
from .overlap import _overlap
from .splits import TRAIN, VAL, resolve_images, split_folders


@dataclass(frozen=True)
class ImageRequest:
    """Which images, before they are listed: resolve() lists them (and fails on a bad folder)."""

    data_dir: Optional[Path] = None
    labels_file: Optional[Path] = None
    views_per_image: int = 1
    limit: Optional[int] = None
    view_offset: int = 0
    view_stride: int = 1
    seed: int = 0
    split: Optional[str] = None  # TRAIN or VAL where the folder has splits
    val_split: Optional[float] = None
    held_out: Optional["ImageRequest"] = None  # calibration images: the evaluation images they must not share content with

    def resolve(self, classes: Optional[ClassSet] = None) -> ImageSet:
        """List the images; their labels index ``classes`` (the model's) when given."""
        images = resolve_images(
            self.data_dir, self.labels_file, self.views_per_image, self.limit, self.view_offset, self.view_stride, self.seed,
            self.split, self.val_split, classes,
        )
        if self.held_out is not None and self.data_dir is not None:
            try:
                evaluated = self.held_out.resolve(classes)
            except DataError:  # said when evaluation itself lists them
                return images
            note = _overlap(sorted({v.image.path for v in evaluated.views}), sorted({v.image.path for v in images.views}),
                            f"evaluation (--data {self.held_out.data_dir})", f"calibration (--calib {self.data_dir})", Path(self.data_dir))
            if note:
                images = dataclasses.replace(images, description=f"{images.description}; {note}")
        return images

    @property
    def has_training_split(self) -> bool:
        return self.data_dir is not None and (self.val_split is not None or split_folders(Path(self.data_dir)) is not None)


HELD_OUT_VIEWS = len(range(EVEN_VIEWS[0], MAX_VIEWS, EVEN_VIEWS[1]))  # 11


def evaluation_images(
    data_dir: Optional[Path] = None, labels_file: Optional[Path] = None, views: Optional[int] = None, limit: Optional[int] = None, seed: int = 0,
    val_split: Optional[float] = None,
) -> ImageRequest:
    """The images bench, recipes and bundles evaluate on. A folder: ``views`` consecutive
    views per file (default 1, the standard centre crop), of its validation split where it
    has one. The bundled photos: their held-out (even) views, which INT8 calibration never
    sees (default all 11)."""
    if data_dir is not None:
        return ImageRequest(data_dir, labels_file, views or 1, limit, seed=seed, split=VAL, val_split=val_split)
    if labels_file is not None:
        raise UsageError("a label file goes with an image folder (--labels with --data)")
    if val_split is not None:
        raise UsageError("--val-split splits a --data folder")
    return ImageRequest(views_per_image=views or HELD_OUT_VIEWS, limit=limit, view_offset=EVEN_VIEWS[0], view_stride=EVEN_VIEWS[1], seed=seed)


HELD_OUT_EVALUATION = evaluation_images()


def training_images(data_dir: Path, labels_file: Optional[Path] = None, val_split: Optional[float] = None, seed: int = 0, limit: Optional[int] = None) -> ImageRequest:
    """The training split of a --data folder (train/, or the part --val-split leaves)."""
    return ImageRequest(data_dir, labels_file, 1, limit, seed=seed, split=TRAIN, val_split=val_split)


def default_calibration(data_dir: Optional[Path] = None, labels_file: Optional[Path] = None, limit: int = 200, seed: int = 0) -> ImageRequest:
    """Bundled photos: their odd views (evaluation holds out the even ones). A folder: one
    centre crop per image (of its training split where it has train/ and val/), a seeded
    sample of at most ``limit`` files."""
    if data_dir is None:
        return ImageRequest(views_per_image=HELD_OUT_VIEWS, view_offset=ODD_VIEWS[0], view_stride=ODD_VIEWS[1])
    split = TRAIN if split_folders(Path(data_dir)) is not None else None
    return ImageRequest(data_dir, labels_file, views_per_image=1, limit=limit, seed=seed, split=split)


@dataclass(frozen=True)
class ImageSettings:
    """The image options (evaluation, training, calibration, distillation), as a command or
    recipe gave them; each request below is made from these."""

    data: Optional[Path] = declared("data").field()
    labels: Optional[Path] = declared("labels").field()
    val_split: Optional[float] = declared("val_split").field()
    views: Optional[int] = declared("views").field()
    limit: Optional[int] = declared("limit").field()
    seed: int = declared("seed").field()
    calib: Optional[Path] = declared("calib").field()
    calib_labels: Optional[Path] = declared("calib_labels").field()
    calib_limit: int = declared("calib_limit").field()
    distill_data: Optional[Path] = declared("distill_data").field()

    def evaluation(self) -> ImageRequest:
        """The images a bench evaluates."""
        return evaluation_images(self.data, self.labels, self.views, self.limit, self.seed, self.val_split)

    def training(self) -> ImageRequest:
        return training_images(self.data, self.labels, self.val_split, self.seed)

    def calibration(self) -> ImageRequest:
        """Calibration (and distillation) images: --calib, else the training split of --data
        where it has one (never the images evaluation uses), else the bundled photos' odd views."""
        if self.calib is not None:
            request = default_calibration(self.calib, self.calib_labels, self.calib_limit, self.seed)
            if self.data is not None:  # the same photo in both is found by content, said and recorded
                held_out = evaluation_images(self.data, self.labels, val_split=self.val_split)
                request = dataclasses.replace(request, held_out=held_out)
            return request
        if evaluation_images(self.data, self.labels, val_split=self.val_split).has_training_split:
            return training_images(self.data, self.labels, self.val_split, self.seed, self.calib_limit)
        return default_calibration(None)

    def distillation(self) -> ImageRequest:
        """--distill-data, else the calibration images."""
        if self.distill_data is not None:
            return default_calibration(self.distill_data, None, self.calib_limit, self.seed)
        return self.calibration()


def calibration_request(settings) -> ImageRequest:
    """Calibration (and distillation) images from a Settings (ImageSettings.calibration)."""
    return settings.bind(ImageSettings).calibration()
