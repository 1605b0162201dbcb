"""Images -> model inputs: equal to torchvision's transforms, folders, labels, bad input."""

import numpy as np
import pytest
from PIL import Image

from edgekit import data
from edgekit.core import DataError, Preprocessing


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_preprocessing_equals_torchvision(interpolation):
    from torchvision import transforms as T

    prep = Preprocessing(input_size=224, resize_size=256, interpolation=interpolation, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    mode = {"bilinear": T.InterpolationMode.BILINEAR, "bicubic": T.InterpolationMode.BICUBIC}[interpolation]
    reference = T.Compose([T.Resize(256, interpolation=mode), T.CenterCrop(224), T.ToTensor(), T.Normalize(prep.mean, prep.std)])
    for image in data.bundled_images():
        ours = data.preprocess(data.ImageView(image, 0), prep)
        theirs = reference(Image.open(image.path).convert("RGB")).numpy()
        np.testing.assert_allclose(ours, theirs, atol=1e-6)


def test_bundled_photos_have_labels_and_licences():
    images = data.bundled_images()
    assert len(images) >= 7
    licences = (data.SAMPLES_DIR / "LICENCES.md").read_text()
    for image in images:
        assert image.path.is_file() and image.labels
        assert image.path.name in licences
        assert all(0 <= label < 1000 for label in image.labels)


def test_views_are_deterministic_and_distinct():
    prep = Preprocessing()
    image = data.bundled_images()[0]
    views = [data.preprocess(data.ImageView(image, v), prep) for v in range(data.MAX_VIEWS)]
    again = data.preprocess(data.ImageView(image, 5), prep)
    np.testing.assert_array_equal(views[5], again)
    distinct = {v.tobytes() for v in views}
    assert len(distinct) == data.MAX_VIEWS


def _write_png(path, colour=(200, 30, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 30), colour).save(path)


def test_class_folder_tree_with_synsets(tmp_path):
    _write_png(tmp_path / "n01440764" / "a.png")  # tench = 0
    _write_png(tmp_path / "n15075141" / "b.jpg".replace(".jpg", ".png"))  # toilet tissue = 999
    images = data.folder_images(tmp_path)
    assert [img.labels for img in images] == [(0,), (999,)]


def test_flat_folder_with_label_file(tmp_path):
    _write_png(tmp_path / "ILSVRC2012_val_00000001.png")
    _write_png(tmp_path / "ILSVRC2012_val_00000002.png")
    labels = tmp_path.parent / "labels.txt"
    labels.write_text("ILSVRC2012_val_00000001.png 65\nILSVRC2012_val_00000002 n01440764\n")
    images = data.folder_images(tmp_path, labels)
    assert [img.labels for img in images] == [(65,), (0,)]


def test_flat_folder_with_kaggle_val_solution(tmp_path):
    _write_png(tmp_path / "ILSVRC2012_val_00008726.png")
    solution = tmp_path.parent / "LOC_val_solution.csv"
    solution.write_text("ImageId,PredictionString\nILSVRC2012_val_00008726,n02119789 255 142 454 329 n02119789 44 21 322 295 \n")
    assert [img.labels for img in data.folder_images(tmp_path, solution)] == [(data.parse_label("n02119789"),)]


def test_flat_folder_missing_label_is_an_error(tmp_path):
    _write_png(tmp_path / "x.png")
    labels = tmp_path.parent / "labels2.txt"
    labels.write_text("y.png 1\n")
    with pytest.raises(DataError, match=r"no label for 1 of 1 images \(e.g. x.png\)"):
        data.folder_images(tmp_path, labels)


def test_empty_folder_is_an_error(tmp_path):
    with pytest.raises(DataError, match="no images"):
        data.folder_images(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        data.folder_images(tmp_path / "nope")


def test_unreadable_images_are_skipped_then_refused(tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    _write_png(tmp_path / "good.png")
    image_set = data.resolve_images(tmp_path, views_per_image=1)
    with pytest.warns(UserWarning, match="broken.jpg"):
        x, _ = data.load_all(image_set, Preprocessing(input_size=32, resize_size=36))
    assert x.shape == (1, 3, 32, 32)

    (tmp_path / "good.png").unlink()
    image_set = data.resolve_images(tmp_path, views_per_image=1)
    with pytest.warns(UserWarning), pytest.raises(DataError, match="could be read"):
        data.load_all(image_set, Preprocessing(input_size=32, resize_size=36))


def test_batches_stream_in_order():
    image_set = data.resolve_images(views_per_image=2, limit=3)
    batches = list(data.iter_batches(image_set, Preprocessing(input_size=32, resize_size=36), batch_size=4))
    assert [b[0].shape[0] for b in batches] == [4, 2]
    assert batches[0][0].dtype == np.float32


def test_label_parsing():
    assert data.parse_label("n01440764") == 0
    assert data.parse_label("999") == 999
    with pytest.raises(DataError):
        data.parse_label("cat")


def _devkit_meta(path, ids_to_wnids):
    """A meta.mat shaped like the ILSVRC2012 devkit's: a struct array 'synsets' (leaf ids
    1-1000 in the devkit's own order, then higher ids for inner nodes)."""
    from scipy.io import savemat

    entries = list(ids_to_wnids.items()) + [(1001, "n00001740")]  # an inner node ('entity'), as in the real file
    synsets = np.zeros((len(entries),), dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O")])
    for i, (class_id, wnid) in enumerate(entries):
        synsets[i] = (class_id, wnid, "")
    savemat(path, {"synsets": synsets})


def test_flat_folder_with_devkit_ground_truth(tmp_path):
    """ILSVRC2012_validation_ground_truth.txt numbers classes by the devkit's ids, whose
    order is not ImageNet's index order: meta.mat beside it maps them."""
    wnids = data.imagenet_classes()[0]
    rng = np.random.default_rng(0)
    devkit_order = [wnids[i] for i in rng.permutation(1000)]  # id k+1 -> devkit_order[k]
    devkit = tmp_path / "devkit"
    devkit.mkdir()
    _devkit_meta(devkit / "meta.mat", {k + 1: w for k, w in enumerate(devkit_order)})
    ids = [17, 250, 999]
    (devkit / "ILSVRC2012_validation_ground_truth.txt").write_text("".join(f"{i}\n" for i in ids))
    folder = tmp_path / "val"
    for n in (1, 2, 3):
        _write_png(folder / f"ILSVRC2012_val_{n:08d}.png")
    images = data.folder_images(folder, devkit / "ILSVRC2012_validation_ground_truth.txt")
    assert [img.labels for img in images] == [(wnids.index(devkit_order[i - 1]),) for i in ids]

    (devkit / "meta.mat").unlink()
    with pytest.raises(DataError, match="devkit's data/meta.mat"):
        data.folder_images(folder, devkit / "ILSVRC2012_validation_ground_truth.txt")


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    from faults import sixteen_bit_png

    path = sixteen_bit_png(tmp_path / "ramp16.png", size=64)
    rgb = np.asarray(data.decode._open_rgb(path))
    assert rgb.min() == 0 and rgb.max() == 255  # the whole ramp, not white from 1/255 of the way
    assert 100 < rgb[:, 32, 0].mean() < 160 and (np.diff(rgb[0, :, 0].astype(int)) >= 0).all()


def test_unreadable_views_are_reported_with_identity(tmp_path):
    (tmp_path / "a-broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    _write_png(tmp_path / "b.png")
    _write_png(tmp_path / "c.png")
    image_set = data.resolve_images(tmp_path, views_per_image=2)
    batches = list(data.stream_batches(image_set.indexed(), Preprocessing(input_size=16, resize_size=18), batch_size=3, threads=2))
    read = [i for b in batches for i in b.indices]
    skipped = [s for b in batches for s in b.skipped]
    assert read == [2, 3, 4, 5] and [s[0] for s in skipped] == [0, 1]
    assert all(s[1].endswith("a-broken.jpg") for s in skipped)
