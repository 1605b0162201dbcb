"""The graph rules INT8 speed rests on, each checked on the graph a runtime is given:
what the input's fixed size decides is folded at export (EfficientNet-Lite1/2 ran their
INT8 convolutions in float because of it), Q/DQ sit only where integer regions stay whole
(a transformer's GELU was cut into islands), calibration histograms stay bounded
(random-init RegNet asked for 750 GiB), and the fallback search buys accuracy where the
target backends say it is cheapest."""

from __future__ import annotations

import numpy as np
import onnx
import pytest


def _same_padding_net():
    """Convolutions with timm's TF-style 'same' padding (pads computed from the input's size
    at run time) and ReLU6, as in EfficientNet-Lite."""
    import torch
    from timm.layers import Conv2dSame

    torch.manual_seed(0)
    return torch.nn.Sequential(
        Conv2dSame(3, 16, 3, stride=2), torch.nn.ReLU6(),
        Conv2dSame(16, 16, 3, stride=2, groups=16), torch.nn.ReLU6(),
        torch.nn.Conv2d(16, 24, 1), torch.nn.ReLU6(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(24, 10),
    ).eval()


def _ort_kernels(path) -> list[str]:
    """The kernels ONNX Runtime's CPU provider runs for ``path`` (its optimized graph)."""
    import tempfile
    from pathlib import Path

    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        return [n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node]


def test_size_arithmetic_is_folded_at_export_and_every_int8_conv_runs_as_an_integer_kernel(tmp_path):
    import torch

    from edgekit.backends.int8_cpu_form import lower_qdq_for_cpu
    from edgekit.onnx_export import ExportOptions, torch_export_module
    from edgekit.static_shapes import fold_static_shapes
    from edgekit.transforms.quantize import Budget, QuantizeOptions, quantize_onnx

    net = _same_padding_net()
    x = np.random.default_rng(0).uniform(-1, 1, size=(16, 3, 64, 64)).astype(np.float32)
    folded = tmp_path / "folded.onnx"
    torch_export_module(net, 64, folded, ExportOptions(slim=False), "same-padding net")
    graph = onnx.load(str(folded))
    assert not {"Shape", "Ceil", "Cast", "Constant"} & {n.op_type for n in graph.graph.node}
    pads = [n for n in graph.graph.node if n.op_type == "Pad"]
    assert pads and all(n.input[1] in {i.name for i in graph.graph.initializer} for n in pads)
    import onnxruntime as ort

    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    got = ort.InferenceSession(str(folded), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert np.allclose(got, expected, atol=1e-4)  # the batch axis stays dynamic: 16 images through a batch-1 export

    # the graph as the exporter wrote it (what Lite1/Lite2 shipped): folding is what makes it fast
    raw = tmp_path / "raw.onnx"
    torch.onnx.export(net, (torch.zeros(1, 3, 64, 64),), str(raw), dynamo=False, opset_version=17, input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    fast = QuantizeOptions(method="minmax", fallback=False, bias_correction=False, budget=Budget(max_kl=None))
    for source, folded_ok in ((raw, False), (folded, True)):
        int8 = tmp_path / f"{source.stem}.int8.onnx"
        quantize_onnx(source, int8, x, options=fast)
        model = onnx.load(str(int8))
        lower_qdq_for_cpu(model, "u8s8")
        lowered = tmp_path / f"{source.stem}.cpu.onnx"
        onnx.save(model, str(lowered))
        kernels = _ort_kernels(lowered)
        float_convs = [k for k in kernels if k in ("Conv", "FusedConv")]
        assert (not float_convs) == folded_ok, (source.name, kernels)
    assert fold_static_shapes(onnx.load(str(raw)), 64) > 0


def test_a_transformer_block_gets_no_qdq_islands(tmp_path):
    """Matrix products read INT8; GELU's Div/Erf/Add/Mul and Softmax read float; every
    DequantizeLinear feeds a quantized node."""
    import torch
    from timm.models.vision_transformer import VisionTransformer

    from edgekit.core import Preprocessing
    from edgekit.data import ImageRequest, load_all
    from edgekit.onnx_export import ExportOptions, torch_export_module
    from edgekit.transforms.placement import COMPUTE, FOLLOWERS
    from edgekit.transforms.qdq_graph import consumers, producers
    from edgekit.transforms.quantize import quantize_onnx

    torch.manual_seed(0)
    net = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, num_classes=10).eval()
    fp32, int8 = tmp_path / "vit.onnx", tmp_path / "vit.int8.onnx"
    torch_export_module(net, 32, fp32, ExportOptions(), "vit")
    x, _ = load_all(ImageRequest(views_per_image=2).resolve(), Preprocessing(input_size=32, resize_size=32))
    quantize_onnx(fp32, int8, x, random_weights=True)
    model = onnx.load(str(int8))
    made_by, readers = producers(model), consumers(model)
    matmuls = [n for n in model.graph.node if n.op_type == "MatMul"]
    assert matmuls and all(getattr(made_by.get(n.input[0]), "op_type", None) == "DequantizeLinear" for n in matmuls)
    for node in model.graph.node:
        if node.op_type in ("Erf", "Div", "Softmax", "LayerNormalization"):
            assert all(getattr(made_by.get(i), "op_type", None) != "DequantizeLinear" for i in node.input), node.name
    for dq in (n for n in model.graph.node if n.op_type == "DequantizeLinear"):
        for reader in readers.get(dq.output[0], []):
            assert reader.op_type in COMPUTE | FOLLOWERS or reader.op_type == "QuantizeLinear", (dq.name, reader.op_type)


def test_histograms_stay_bounded_when_later_batches_reach_far_further():
    from edgekit.transforms.calibration import MAX_BINS, AbsHistogram

    h = AbsHistogram()
    h.add(np.zeros(1000, dtype=np.float32))  # a gate that is closed on the first images
    h.add(np.full(10, 1e-9, dtype=np.float32))
    h.add(np.array([5.0e4, -3.0, 0.5], dtype=np.float32))
    assert len(h.counts) <= MAX_BINS and h.counts.sum() == 1013
    assert h.max_abs == pytest.approx(5.0e4)
    assert h.threshold("percentile", 99.0) <= h.max_abs and h.threshold("minmax", 99.0) == pytest.approx(5.0e4)
    assert h.threshold("percentile", 99.95) == pytest.approx(5.0e4, rel=1e-3)  # the one far value is the last 0.1%
    assert h.threshold("entropy", 99.0) <= h.max_abs and h.threshold("mse", 99.0) <= h.max_abs


def test_the_fallback_search_buys_accuracy_where_it_is_cheapest(digits, tmp_path):
    """The same budget, reachable by either of two layers: told that the one KL alone would
    pick first is dear, the search takes the cheap one, and the report says what it costs."""
    from edgekit.profiling import FloatLayerPrices
    from edgekit.transforms.quantize import Budget, QuantizeOptions, quantize_onnx

    path, x_train, _, _, _ = digits
    x = x_train[:64]
    plain = quantize_onnx(path, tmp_path / "plain.onnx", x, None, QuantizeOptions(method="minmax", max_fallback_nodes=0, budget=Budget(max_kl=None)))
    by_kl = quantize_onnx(path, tmp_path / "kl.onnx", x, None, QuantizeOptions(method="minmax", budget=Budget(max_kl=plain.final.mean_kl * 0.9)))
    assert by_kl.budget_met and by_kl.fallback
    first = by_kl.fallback[0].node
    ranked = [s.node for s in by_kl.sensitivity if s.kl_if_float is not None]

    def price(int8_path, float_path, nodes):
        return FloatLayerPrices({"cpu": {n: (5.0 if n == first else 0.01) for n in ranked}}, {"cpu": 10.0})

    priced = quantize_onnx(path, tmp_path / "priced.onnx", x, None, QuantizeOptions(method="minmax", budget=Budget(max_kl=plain.final.mean_kl * 0.9)), price=price)
    assert priced.budget_met and priced.fallback
    assert first not in {f.node for f in priced.fallback}, [f.node for f in priced.fallback]
    assert all(f.price_ms == {"cpu": 0.01} for f in priced.fallback)


def test_float_layers_are_priced_by_each_backends_own_profiler(digits, tmp_path):
    from edgekit.backends import BackendOptions
    from edgekit.profiling import price_float_layers
    from edgekit.transforms.qdq_graph import bypass_quantization, compute_nodes, node_label
    from edgekit.transforms.quantize import Budget, QuantizeOptions, quantize_onnx

    path, x_train, _, _, _ = digits
    int8 = tmp_path / "int8.onnx"
    quantize_onnx(path, int8, x_train[:64], None, QuantizeOptions(method="minmax", fallback=False, budget=Budget(max_kl=None)))
    model = onnx.load(str(int8))
    labels = [node_label(n) for n in compute_nodes(model)][:2]
    floated = tmp_path / "float.onnx"
    onnx.save(bypass_quantization(model, onnx.load(str(path)), labels), str(floated))
    prices = price_float_layers(int8, floated, ("onnxruntime", "openvino"), BackendOptions(), x_train[:1], iterations=5, warmup=1, float_nodes=labels)
    assert set(prices.ms) == {"onnxruntime", "openvino"} and all(t > 0 for t in prices.totals.values())
    for backend, ms in prices.ms.items():
        assert set(labels) <= set(ms), (backend, sorted(ms))


def test_folded_sizes_keep_their_rank_and_the_batch_stays_dynamic(tmp_path):
    """A scalar computed from the input's size (torchvision's ViT multiplies the batch by one)
    must fold to a scalar: a 1-element vector broke vit_b_16 and swin_t exports."""
    import onnxruntime as ort
    import torch

    from edgekit.onnx_export import ExportOptions, torch_export_module

    class Reshaping(torch.nn.Module):
        def forward(self, x):
            n, c, h, w = x.shape
            tokens = x.reshape(n * c, h * w // 4, 4)  # n * c: the batch times a folded scalar
            return tokens.sum(-1).reshape(n, -1)[:, :10]

    path = tmp_path / "reshaping.onnx"
    torch_export_module(Reshaping().eval(), 16, path, ExportOptions(slim=False), "reshaping")
    graph = onnx.load(str(path))
    assert "Shape" in {n.op_type for n in graph.graph.node}  # the batch is still read at run time
    x = np.random.default_rng(0).normal(size=(3, 3, 16, 16)).astype(np.float32)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    with torch.no_grad():
        assert np.allclose(got, Reshaping()(torch.from_numpy(x)).numpy(), atol=1e-5)


def test_a_budget_out_of_reach_is_said_and_not_searched(digits, tmp_path):
    """When even the most helpful layers, read in float one by one, cannot add up to the gap,
    no search is made (EfficientNet-Lite2 spent 38 s on one) and the note says why."""
    from edgekit.transforms.quantize import Budget, QuantizeOptions, quantize_onnx

    path, x_train, _, _, _ = digits
    options = QuantizeOptions(method="minmax", max_fallback_nodes=1, budget=Budget(max_kl=1e-9))
    report = quantize_onnx(path, tmp_path / "int8.onnx", x_train[:64], None, options)
    assert not report.budget_met and not report.fallback
    assert any("out of reach" in n for n in report.notes), report.notes
    assert report.stages[-1].name.startswith("fallback search (budget out of reach")
