"""AdaRound: learned up/down rounding of INT8 weights, written back as plain QDQ weights.

Rounding each weight to the nearest integer is optimal per weight but not per layer:
the errors of a row add up in its output. AdaRound (Nagel et al., 2020) learns, for every
weight, whether to round down or up so that the layer's output on real images stays
closest to the FP32 layer's. Here, per Conv/Gemm/MatMul whose weights are quantized:

    minimise  E || W_hat x_q - W x ||^2  +  lambda * mean(1 - |2h - 1|^beta)
    W_hat = s * clip(floor(W / s) + h(V), -127, 127),   h = rectified sigmoid of V

where x is the layer's FP32 input and x_q = the layer's own input quantizer applied to x
(see layer_inputs: upstream layers' errors are left out, or every layer would also cancel
errors its upstream layers cancel themselves, which made EfficientNet-Lite0 12x worse), s
the layer's per-channel scale (unchanged), beta annealing from 20 to 2 so h ends at 0 or 1.

The expectation is over every output position of every calibration image. For a linear
layer it is a quadratic form in W_hat - W, so the Gram matrices E[x_q x_q^T] and
E[x_q e^T] (e = x_q - x; per group for grouped convs) from one pass are all the
optimisation needs: each step costs one product of the weights with a (d x d) matrix,
independent of the number of images.

The learned integers replace the weights' INT8 initializers: scales, zero points, graph
and every backend's reading of it stay as they were. A layer keeps nearest rounding when
the learned rounding does not lower its reconstruction error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .layer_inputs import InputStats, QuantizedLayer
from ..progress import Progress, quiet

ZETA, GAMMA = 1.1, -0.1  # rectified sigmoid stretch (AdaRound's values)


@dataclass(frozen=True)
class AdaRoundOptions:
    iterations: int = 100
    lr: float = 0.05
    reg: float = 0.01  # weight of the rounding regulariser (the reconstruction loss is relative)
    warmup: float = 0.2  # share of iterations without the regulariser
    beta: tuple[float, float] = (20.0, 2.0)


@dataclass(frozen=True)
class LayerRounding:
    node: str
    weights: int
    error_nearest: float  # relative output error E||W_hat x_q - W x||^2 / E||W x||^2
    error_adaround: float
    flipped: int  # weights rounded the other way than nearest
    kept: bool  # False: nearest was as good, the layer keeps it


def _h(v):
    import torch

    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def _round_layer(layer: QuantizedLayer, grams: InputStats, options: AdaRoundOptions) -> tuple[np.ndarray, LayerRounding]:
    """Integers (groups, out, d) for one layer, learned or nearest, whichever reconstructs better."""
    import torch

    w = torch.from_numpy(np.array(layer.weight)).double()
    s = torch.from_numpy(np.array(layer.scale)).double()
    a, d, f = grams.qq / grams.n, grams.qe / grams.n, grams.ee / grams.n
    # E||W_hat x_q - W x||^2 = tr(D A D^T) + 2 tr(D M) + tr(W F W^T), D = W_hat - W, M = E[x_q e^T] W^T
    m = torch.bmm(d, w.transpose(1, 2))  # (g, d, out)
    upstream = float(torch.einsum("god,gde,goe->", w, f, w))
    energy = float(torch.einsum("god,gde,goe->", w, a, w))
    qmin, qmax = -127.0, 127.0
    w_floor = torch.floor(w / s)
    nearest = torch.clamp(torch.round(w / s), qmin, qmax)

    def error(ints) -> float:
        delta = ints * s - w
        return float(torch.einsum("god,gde,goe->", delta, a, delta) + 2 * torch.einsum("god,gdo->", delta, m) + upstream) / max(energy, 1e-30)

    err_nearest = error(nearest)
    rest = (w / s - w_floor).clamp(1e-4, 1 - 1e-4)
    v = (-torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1)).float().requires_grad_(True)
    a32, mt32, s32, floor32, w32 = a.float(), m.transpose(1, 2).float(), s.float(), w_floor.float(), w.float()
    optimizer = torch.optim.Adam([v], lr=options.lr)
    warm = int(options.iterations * options.warmup)
    norm = max(err_nearest * energy, 1e-30)
    for it in range(options.iterations):
        delta = torch.clamp(floor32 + _h(v), qmin, qmax) * s32 - w32
        loss = ((torch.bmm(delta, a32) * delta).sum() + 2 * (delta * mt32).sum() + upstream) / norm
        if it >= warm:
            share = (it - warm) / max(options.iterations - warm, 1)
            beta = options.beta[1] + 0.5 * (options.beta[0] - options.beta[1]) * (1 + math.cos(math.pi * share))
            loss = loss + options.reg * (1 - (2 * _h(v) - 1).abs().pow(beta)).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        learned = torch.clamp(w_floor + (_h(v).double() >= 0.5).double(), qmin, qmax)
    err_learned = error(learned)
    kept = err_learned < err_nearest
    ints = learned if kept else nearest
    record = LayerRounding(
        layer.label, int(w.numel()), err_nearest, err_learned, int((learned != nearest).sum()), kept,
    )
    return ints.numpy().astype(np.int8), record


def adaround(layers: list[QuantizedLayer], stats: list[InputStats], options: AdaRoundOptions = AdaRoundOptions(), progress: Progress = quiet) -> list[LayerRounding]:
    """Learn every layer's rounding from its input statistics (gathered with second
    moments) and write the integers into the graph's initializers, in place."""
    records = []
    for i, (layer, stat) in enumerate(zip(layers, stats)):
        progress("AdaRound", i, len(layers))
        ints, record = _round_layer(layer, stat, options)
        records.append(record)
        if record.kept:
            layer.write_integers(ints)
    progress("AdaRound", len(layers), len(layers))
    return records
