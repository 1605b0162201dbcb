"""Every architecture kind through INT8 on both CPU backends: a calibration or placement
change cannot drop a family silently again (the last INT8 rewrite broke ViT, DeiT, PVT-v2
and RegNet, and no test noticed).

One small random-init member of each kind, built from timm's own classes at a reduced depth
and width (the same graph patterns as the full models: a class token broadcast by Expand,
attention scales computed from shapes, shifted windows, token-mixing MLPs, depthwise
convolutions, squeeze-excite, TF-style padding), exported the way artifacts are, then
quantized by edgekit's default procedure and run in each CPU runtime's INT8 form.
"""

from __future__ import annotations

import numpy as np
import pytest

FAMILIES = {
    # kind: (timm class path or model name, constructor arguments, input size)
    "class-token ViT (DeiT)": ("timm.models.vision_transformer.VisionTransformer", dict(img_size=64, patch_size=16, embed_dim=64, depth=2, num_heads=2), 64),
    "pyramid ViT (PVT-v2)": ("timm.models.pvt_v2.PyramidVisionTransformerV2", dict(depths=(1, 1, 1, 1), embed_dims=(16, 32, 64, 128), num_heads=(1, 1, 2, 4)), 64),
    "windowed attention (Swin)": ("timm.models.swin_transformer.SwinTransformer", dict(img_size=112, depths=(1, 1, 2), num_heads=(1, 2, 4), embed_dim=24), 112),
    "window + grid attention (MaxViT)": ("test_maxvit", {}, 160),
    "MLP mixer": ("timm.models.mlp_mixer.MlpMixer", dict(img_size=64, patch_size=16, num_blocks=2, embed_dim=64), 64),
    "ConvNeXt": ("test_convnext", {}, 64),
    "depthwise CNN, squeeze-excite (EfficientNet)": ("test_efficientnet", {}, 64),
    "TF-same padding, ReLU6 (EfficientNet-Lite)": ("tf_efficientnet_lite0", {}, 64),
    "RegNet (grouped convs, squeeze-excite)": ("regnety_002", {}, 64),
}


def _module(path: str, kwargs: dict):
    import importlib

    import timm
    import torch

    torch.manual_seed(0)
    if "." in path:
        module_name, class_name = path.rsplit(".", 1)
        model = getattr(importlib.import_module(module_name), class_name)(num_classes=10, **kwargs)
    else:
        model = timm.create_model(path, pretrained=False, num_classes=10, **kwargs)
    for parameter in model.get_classifier().parameters():  # timm starts some heads at zero: every logit 0
        torch.nn.init.normal_(parameter, std=0.1)
    return model.eval()


@pytest.fixture(scope="module")
def photos():
    from edgekit.data import ImageRequest

    return ImageRequest(views_per_image=2).resolve()


@pytest.mark.parametrize("kind", list(FAMILIES))
def test_every_architecture_kind_quantizes_and_runs_on_both_cpu_backends(kind, photos, tmp_path):
    import onnx
    import onnxruntime as ort
    from edgekit.backends.openvino import shared_core

    from edgekit.backends.int8_cpu_form import lower_qdq_for_cpu
    from edgekit.core import Preprocessing
    from edgekit.data import load_all
    from edgekit.onnx_export import ExportOptions, torch_export_module
    from edgekit.transforms.qdq_graph import quantized_node_labels, run_logits
    from edgekit.transforms.quantize import quantize_onnx

    path, kwargs, size = FAMILIES[kind]
    fp32_path, int8_path = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    torch_export_module(_module(path, kwargs), size, fp32_path, ExportOptions(), kind)
    x, _ = load_all(photos, Preprocessing(input_size=size, resize_size=size))
    report = quantize_onnx(fp32_path, int8_path, x, random_weights=True)  # what `--random-init --int8` runs

    int8 = onnx.load(str(int8_path))
    quantized = quantized_node_labels(int8)
    assert len(quantized) >= 3, f"{kind}: only {sorted(quantized)} quantized"
    exact = run_logits(int8, x)
    reference = run_logits(fp32_path, x, optimize=True)
    assert np.isfinite(exact).all()
    error = np.linalg.norm(exact - reference) / np.linalg.norm(reference)
    assert error < 0.5, f"{kind}: INT8 logits {error:.2f} away from FP32 (relative L2)"
    assert report.final.mean_kl is not None

    for runtime in ("onnxruntime", "openvino"):
        form = onnx.load(str(int8_path))
        lower_qdq_for_cpu(form, widen_clamped=runtime == "onnxruntime")
        lowered = tmp_path / f"{runtime}.onnx"
        onnx.save(form, str(lowered))
        if runtime == "onnxruntime":
            so = ort.SessionOptions()
            so.log_severity_level = 3
            got = ort.InferenceSession(str(lowered), so, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
        else:
            got = shared_core().compile_model(str(lowered), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})(x)[0]
        assert got.shape == exact.shape and np.isfinite(got).all(), f"{kind} on {runtime}"
        drift = np.linalg.norm(got - exact) / np.linalg.norm(exact)
        assert drift < 0.25, f"{kind}: {runtime}'s INT8 form {drift:.2f} away from the exact QDQ graph (relative L2)"
