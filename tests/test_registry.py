"""The model registry: names, suggestions, preprocessing, reference facts, every family exports."""

import pytest
import torch

from edgekit import models
from edgekit.core import UnknownModelError
from edgekit.registry import Registry

# One or two per torchvision family, small enough to export at a small input size.
FAMILIES = [
    "resnet18",
    "resnext50_32x4d",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "efficientnet_b0",
    "efficientnet_v2_s",
    "squeezenet1_1",
    "shufflenet_v2_x0_5",
    "mnasnet0_5",
    "densenet121",
    "regnet_x_400mf",
    "googlenet",
    "convnext_tiny",
    "efficientnet_lite0",
]


def test_registry_refuses_duplicates_and_suggests():
    reg = Registry("thing", UnknownModelError)
    reg.register("alpha", 1)
    with pytest.raises(ValueError):
        reg.register("alpha", 2)
    with pytest.raises(UnknownModelError, match="did you mean alpha"):
        reg.get("alpah")


def test_every_torchvision_classifier_is_registered():
    import torchvision.models as tvm

    names = set(models.list_model_names())
    assert set(tvm.list_models(module=tvm)) <= names
    assert {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"} <= names


def test_unknown_model_suggests_close_names():
    with pytest.raises(UnknownModelError, match="did you mean.*mobilenet_v2"):
        models.get_spec("mobilenet_v")
    with pytest.raises(UnknownModelError, match="timm/poolformer_s12"):
        models.get_spec("timm/poolformer_s13")


def test_preprocessing_comes_from_the_weights():
    lite = models.get_spec("efficientnet_lite1").preprocessing
    assert (lite.input_size, lite.resize_size, lite.interpolation, lite.mean) == (240, 272, "bicubic", (0.5, 0.5, 0.5))
    inception = models.get_spec("inception_v3").preprocessing
    assert (inception.input_size, inception.resize_size) == (299, 342)
    assert models.get_spec("vit_h_14").preprocessing.input_size == 518


def test_timm_models_resolve_with_their_own_preprocessing():
    spec = models.get_spec("timm/poolformer_s12")
    assert spec.source == "timm" and spec.preprocessing.input_size == 224
    assert spec.preprocessing.resize_size == int(224 / 0.9)


# Counting is on the meta device, so even the largest models are cheap; these cover every
# builder path (meta, CPU fallback for RegNet, image_size override for ViT-H).
@pytest.mark.parametrize("name", FAMILIES[:-1] + ["vit_b_16", "vit_h_14", "inception_v3", "swin_t", "maxvit_t", "alexnet", "vgg16"])
def test_params_and_gmacs_reproduce_torchvision_metadata(name):
    spec = models.get_spec(name)
    params_m, gmacs = models.complexity_of(name)
    assert params_m == pytest.approx(spec.reference.params_m, rel=1e-4)
    assert gmacs == pytest.approx(spec.reference.gflops, rel=0.01, abs=5e-4)  # metadata keeps 3 decimals


def test_efficientnet_lite_matches_its_published_size():
    params_m, gmacs = models.complexity_of("efficientnet_lite0")
    assert params_m == pytest.approx(4.7, abs=0.05)  # published figures are rounded
    assert gmacs == pytest.approx(0.4, abs=0.05)


def test_random_init_is_reproducible():
    a = models.load_model("resnet18", random_init=True).module
    b = models.load_model("resnet18", random_init=True).module
    for (ka, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(va, vb), ka


@pytest.mark.parametrize("name", FAMILIES)
def test_family_exports_with_parity(name, tmp_path):
    """Each family builds, exports to ONNX at 64-96 px and matches PyTorch in ONNX Runtime."""
    from edgekit.data import bundled_images, make_image_set
    from edgekit.onnx_export import ExportOptions, WeightsSource, export_model

    loaded = models.load_model(name, random_init=True).at_input_size(96 if name == "googlenet" else 64)
    images = make_image_set(bundled_images()[:3], 1, "parity")
    artifact, reused = export_model(loaded, WeightsSource("random-init"), images, ExportOptions(), tmp_path)
    assert not reused
    parity = artifact.manifest["parity"]
    assert parity["top1_agreement"] == 100.0
    assert parity["max_abs_diff"] < 1e-3
