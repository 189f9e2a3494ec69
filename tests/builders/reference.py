"""numpy references of what the rewritten graphs compute: activations,
batch norms, FakeQuant, the ranges the quantizers learn and their moving
averages."""

from __future__ import annotations

from typing import Optional

import numpy as np

EMA_DECAY = 0.999  # The decay every activation quantizer uses (spec 4.6).


def numpy_activation(x: np.ndarray, activation: Optional[str]) -> np.ndarray:
    """Applies 'relu', 'relu6' or no activation to `x`."""
    if activation is None:
        return x
    if activation == 'relu':
        return np.maximum(x, 0.0)
    if activation == 'relu6':
        return np.clip(x, 0.0, 6.0)
    raise ValueError(f'unknown activation {activation!r}')


def numpy_bn_block(pre_bn, mean, variance, gamma, beta, epsilon,
                   residual=None, activation=None):
    """``act(gamma * (pre_bn - mean) / sqrt(variance + eps) + beta [+ res])``.

    `gamma` None means no scale.
    """
    gamma = 1.0 if gamma is None else gamma
    y = gamma * (pre_bn - mean) / np.sqrt(variance + epsilon) + beta
    if residual is not None:
        y = y + residual
    return numpy_activation(y, activation)


def numpy_fake_quant(x, range_min, range_max, num_bits: int,
                     narrow_range: bool) -> np.ndarray:
    """FakeQuantWithMinMaxVars as the TF kernel computes it (spec 4.3).

    The nudged range follows the spec; the quantization step is computed in
    float32 with the kernel's multiply-by-inverse-scale so rounding ties
    land where TensorFlow puts them.
    """
    x = np.asarray(x, np.float32)
    range_min = np.float32(range_min)
    range_max = np.float32(range_max)
    quant_min = np.float32(1 if narrow_range else 0)
    quant_max = np.float32(2**num_bits - 1)
    scale = np.float32((range_max - range_min) / (quant_max - quant_min))
    inv_scale = np.float32(np.float32(1.0) / scale)
    zero_point_from_min = np.float32(quant_min - range_min / scale)
    if zero_point_from_min < quant_min:
        zero_point = quant_min
    elif zero_point_from_min > quant_max:
        zero_point = quant_max
    else:
        zero_point = np.float32(np.round(zero_point_from_min))
    nudged_min = np.float32((quant_min - zero_point) * scale)
    nudged_max = np.float32((quant_max - zero_point) * scale)
    clamped = np.minimum(np.maximum(x, nudged_min), nudged_max)
    shifted = (clamped - nudged_min).astype(np.float32)
    steps = np.floor(shifted * inv_scale + np.float32(0.5)).astype(np.float32)
    return (steps * scale + nudged_min).astype(np.float32)


def batch_range(x, num_bits: int, narrow_range: bool, symmetric: bool):
    """The per-batch (min, max) the quantizers learn from (spec 4)."""
    batch_min = float(np.min(x))
    batch_max = float(np.max(x))
    if not symmetric:
        return min(batch_min, 0.0), max(batch_max, 0.0)
    ratio = -1.0 if narrow_range else -(2**num_bits - 2) / 2**num_bits
    return (min(batch_min, batch_max / ratio),
            max(batch_max, batch_min * ratio))


class EmaReference:
    """Zero-debiased moving average of TF's assign_moving_average (spec 4.2).

    `biased` and `local_step` start from the given (checkpointed) values.
    """

    def __init__(self, decay: float = EMA_DECAY, biased: float = 0.0,
                 local_step: float = 0.0):
        # TensorFlow holds the decay as a float32 tensor; with hundreds of
        # steps, decay**step is visibly off if 0.999 is taken exactly.
        self.decay = float(np.float32(decay))
        self.biased = biased
        self.local_step = local_step

    def update(self, value: float) -> float:
        self.biased -= (self.biased - value) * (1.0 - self.decay)
        self.local_step += 1.0
        return self.value

    @property
    def value(self) -> float:
        return self.biased / (1.0 - self.decay**self.local_step)
