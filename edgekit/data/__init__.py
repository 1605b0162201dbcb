"""Images in, model inputs out: bundled photos, image folders, deterministic views, batches.

Only numpy and Pillow are used here (no torch), so a process that runs one backend, and
the on-device runner, can load images without PyTorch. For PIL images the result equals
torchvision's Resize + CenterCrop + Normalize.

Every view has an identity: its index in the image set (which names its file, crop and
labels). Workers stream views from a views file, decode them in a small thread pool a
few batches ahead, and report each view they could not read by that index, so results
are joined on identity and memory stays flat however many images there are.

One job per module, from the bottom up: ``images`` (image sets and their views),
``labels`` (ImageNet ids, label files), ``folders`` (bundled photos, image folders),
``overlap`` (byte-identical photos in two sets), ``splits`` (train/val, listing a
request's images), ``requests`` (evaluation, training and calibration images),
``decode`` (one view under the decode budget), ``batches`` (streaming batches). This
package re-exports their public names; a test that patches a module constant
(``MAX_COMPARED_FILES``, the decode budget) patches it in its own module.
"""

from .images import (
    EVEN_VIEWS, IMAGE_SUFFIXES, MAX_VIEWS, ODD_VIEWS, SAMPLES_DIR, UNREAD_IMAGE_SUFFIXES, VIEWS_FORMAT, VIEW_GRID,
    ImageSet, ImageView, IndexedView, LabelledImage, make_image_set, read_views_file,
)
from .labels import imagenet_classes, parse_label
from .folders import bundled_images, folder_images, labelled_folder
from .overlap import same_content
from .splits import TRAIN, VAL, class_folders_of, resolve_images, split_folders, split_images
from .requests import HELD_OUT_EVALUATION, HELD_OUT_VIEWS, ImageRequest, ImageSettings, calibration_request, default_calibration, evaluation_images, training_images
from .decode import DECODE_BUDGET_MB, UnreadableImage, decode_cost, decoded_rgb, preprocess
from .batches import DECODE_THREADS, PREFETCH_BATCHES, Batch, iter_batches, load_all, skipped_summary, stream_batches

__all__ = [
    "EVEN_VIEWS",
    "IMAGE_SUFFIXES",
    "MAX_VIEWS",
    "ODD_VIEWS",
    "SAMPLES_DIR",
    "UNREAD_IMAGE_SUFFIXES",
    "VIEWS_FORMAT",
    "VIEW_GRID",
    "ImageSet",
    "ImageView",
    "IndexedView",
    "LabelledImage",
    "make_image_set",
    "read_views_file",
    "imagenet_classes",
    "parse_label",
    "bundled_images",
    "folder_images",
    "labelled_folder",
    "same_content",
    "TRAIN",
    "VAL",
    "class_folders_of",
    "resolve_images",
    "split_folders",
    "split_images",
    "HELD_OUT_EVALUATION",
    "HELD_OUT_VIEWS",
    "ImageRequest",
    "calibration_request",
    "ImageSettings",
    "default_calibration",
    "evaluation_images",
    "training_images",
    "DECODE_BUDGET_MB",
    "UnreadableImage",
    "decode_cost",
    "decoded_rgb",
    "preprocess",
    "DECODE_THREADS",
    "PREFETCH_BATCHES",
    "Batch",
    "iter_batches",
    "load_all",
    "skipped_summary",
    "stream_batches",
]
