"""Image sets: labelled images, their deterministic views (crop, position, flip), the views file workers stream."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional, Sequence

from ..core import ClassSet, DataError

if TYPE_CHECKING:
    from ..evaluation import ViewTable

SAMPLES_DIR = Path(__file__).parent.parent / "samples"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".jpe", ".gif", ".avif"}  # GIF: its first frame

# Image files edgekit does not read: listed in one warning per folder, never silently dropped.
UNREAD_IMAGE_SUFFIXES = {".heic", ".heif", ".jxl", ".svg", ".dng", ".cr2", ".nef", ".arw", ".raw", ".psd", ".ico", ".jp2"}
VIEWS_FORMAT = "edgekit-views/1"

# A view is a crop of the photo (fraction of each side, where it sits) with an optional
# horizontal flip, taken before the model's own resize + centre crop. View 0 is exactly
# the standard evaluation preprocessing. The order spreads the first few views out.
_VIEW_SCALES = (1.0, 0.85, 0.7)
_VIEW_POSITIONS = ((0.5, 0.5), (0.0, 0.0), (1.0, 1.0), (1.0, 0.0), (0.0, 1.0))
VIEW_GRID: tuple[tuple[float, float, float, bool], ...] = tuple(
    (scale, fx, fy, flip)
    for flip in (False, True)
    for scale in _VIEW_SCALES
    for (fx, fy) in _VIEW_POSITIONS
    if not (scale == 1.0 and (fx, fy) != (0.5, 0.5))  # at full scale every position is the same
)
MAX_VIEWS = len(VIEW_GRID)


@dataclass(frozen=True)
class LabelledImage:
    path: Path
    labels: Optional[tuple[int, ...]]  # acceptable class indices (ImageNet's, or the set's), first is primary; None if unlabelled


@dataclass(frozen=True)
class ImageView:
    image: LabelledImage
    view: int  # index into VIEW_GRID

    @property
    def key(self) -> str:
        return f"{self.image.path}#{self.view}"


@dataclass(frozen=True)
class IndexedView:
    """A view and its index in its image set: the identity results are joined on."""

    index: int
    file: int  # index of its photo among the set's distinct files
    view: ImageView


@dataclass(frozen=True)
class ImageSet:
    """An ordered list of views; ``identity`` hashes which files and views it holds."""

    views: tuple[ImageView, ...]
    description: str
    class_names: Optional[tuple[str, ...]] = None  # what label indices mean; None: ImageNet-1k's classes
    label_space: Optional[ClassSet] = None  # the labels' class set when it is not ImageNet-1k

    @property
    def labelled(self) -> bool:
        return all(v.image.labels is not None for v in self.views)

    @property
    def identity(self) -> str:
        h = hashlib.sha256()
        for v in self.views:
            h.update(f"{v.image.path.name}:{v.view};".encode())
        return h.hexdigest()[:16]

    def __len__(self) -> int:
        return len(self.views)

    def indexed(self) -> Iterator[IndexedView]:
        files: dict[Path, int] = {}
        for i, v in enumerate(self.views):
            yield IndexedView(i, files.setdefault(v.image.path, len(files)), v)

    @property
    def file_count(self) -> int:
        return len({v.image.path for v in self.views})

    def view_table(self) -> "ViewTable":
        """Photo index and acceptable labels of every view, for joining results."""
        import numpy as np

        from ..evaluation import ViewTable, label_matrix

        names: dict[Path, int] = {}
        files = np.fromiter((names.setdefault(v.image.path, len(names)) for v in self.views), dtype=np.int64, count=len(self.views))
        labels = label_matrix([v.image.labels for v in self.views])
        return ViewTable(files=files, labels=labels, file_names=tuple(str(p) for p in names))

    def write_views_file(self, path: Path) -> Path:
        """One JSON line per view (after a header): what every worker of a run streams."""
        with open(path, "w") as f:
            f.write(json.dumps({"format": VIEWS_FORMAT, "description": self.description, "count": len(self.views)}) + "\n")
            for v in self.indexed():
                labels = list(v.view.image.labels) if v.view.image.labels is not None else None
                f.write(json.dumps([v.index, v.file, str(v.view.image.path), v.view.view, labels]) + "\n")
        return Path(path)


def read_views_file(path: Path) -> tuple[dict, Iterator[IndexedView]]:
    """(header, the views one by one) of a file written by ImageSet.write_views_file."""
    f = open(path)
    header = json.loads(f.readline())
    if header.get("format") != VIEWS_FORMAT:
        f.close()
        raise DataError(f"{path}: not an edgekit views file")

    def views() -> Iterator[IndexedView]:
        with f:
            for line in f:
                index, file, name, view, labels = json.loads(line)
                yield IndexedView(index, file, ImageView(LabelledImage(Path(name), tuple(labels) if labels is not None else None), view))

    return header, views()


# Calibration and held-out evaluation on the same photos use disjoint views.
EVEN_VIEWS = (0, 2)  # (offset, stride): views 0, 2, 4...
ODD_VIEWS = (1, 2)


def make_image_set(
    images: Sequence[LabelledImage],
    views_per_image: int,
    description: str,
    view_offset: int = 0,
    view_stride: int = 1,
    label_space: Optional[ClassSet] = None,
) -> ImageSet:
    """Views ``offset, offset + stride, ...`` of every image (at most ``views_per_image``)."""
    available = len(range(view_offset, MAX_VIEWS, view_stride))
    if not 1 <= views_per_image <= available:
        raise DataError(f"views per image must be between 1 and {available}, got {views_per_image}")
    indices = range(view_offset, view_offset + views_per_image * view_stride, view_stride)
    views = tuple(ImageView(img, v) for img in images for v in indices)
    if label_space is not None and label_space.is_imagenet:
        label_space = None
    names = None
    if label_space is not None:
        names = label_space.names or tuple(f"class {i}" for i in range(label_space.count))
    return ImageSet(views=views, description=description, class_names=names, label_space=label_space)
