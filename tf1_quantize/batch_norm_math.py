"""The batch-norm arithmetic the folds share: statistics, corrections,
the freeze, and the gradient of a folded fused batch norm.

Notation (Jacob et al. 2018, section 3.2; Krishnamoorthi 2018, section 3.2):
``gamma``, ``beta`` the BN scale and offset; ``mu_B``, ``var_B`` the batch
statistics; ``mu_mv``, ``var_mv`` the moving ones;
``sigma = sqrt(var + eps)``.

The training fold corrects a layer whose weights use the moving sigma back
to batch statistics (Krishnamoorthi 2018, Fig. 8-9):

    y = conv(x, w * gamma / sigma_mv) * c_recip + c_offset
        + (beta - mu_B * gamma / sigma_B)

with ``c_recip = sigma_mv / sigma_B`` and ``c_offset = 0`` before the freeze
(exact batch-statistics BN), and ``c_recip = 1``,
``c_offset = gamma * (mu_B / sigma_B - mu_mv / sigma_mv)`` after it (exact
moving-statistics BN). After the freeze the moving-average updates see a
decay of zero, so the moving statistics stop changing.

A per-channel bias added between the layer and the BN (``conv + b``) only
shifts both means by ``b``; the math uses the centred means ``mu - b``.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np
import tensorflow as tf

from tf1_quantize import conditionals
from tf1_quantize import gradients
from tf1_quantize import graph_edit
from tf1_quantize import names
from tf1_quantize import shared_constants
from tf1_quantize import step_counter
from tf1_quantize.records import BatchNormRecord

FOLD_GRADIENT_NAME = 'FoldFusedBatchNormGrad'
_ONE = np.float32(1.0)  # Keeps NumPy float32 arithmetic in float32.


@dataclasses.dataclass
class Statistics:
    """The BN statistics the fold uses, means already centred."""
    mean: tf.Tensor
    variance: tf.Tensor
    moving_mean: Optional[tf.Tensor] = None
    moving_variance: Optional[tf.Tensor] = None


@dataclasses.dataclass
class Corrections:
    """The training-time correction factors (see the module docstring):
    `scale` = sigma_B / sigma_mv for the weights, and the output's `recip`
    and `offset` before and after the freeze."""
    scale: tf.Tensor
    recip: tf.Tensor
    offset: tf.Tensor


def scale(gamma, variance, epsilon) -> tf.Tensor:
    """`gamma / sqrt(variance + epsilon)` (without gamma when it is None)."""
    multiplier = tf.math.rsqrt(variance + per_channel(epsilon, variance))
    if gamma is not None:
        multiplier = tf.multiply(gamma, multiplier, name='mul')
    return multiplier


def statistics(graph, bn: BatchNormRecord, training_fold: bool) -> Statistics:
    """The statistics `bn` normalizes with (the biased batch variance of a
    training-mode fused BN), and with `training_fold` the moving ones too;
    means centred (see the module docstring)."""
    variance = bn.variance
    if bn.fused and bn.is_training:
        variance = _undo_bessel_correction(graph, bn)
    stats = Statistics(mean=bn.mean, variance=variance)
    if training_fold:
        stats.moving_mean = bn.moving_mean
        stats.moving_variance = bn.moving_variance
    _centre(graph, bn, stats)
    return stats


def _centre(graph, bn: BatchNormRecord, stats: Statistics) -> None:
    """Shifts the means by a bias added before the batch norm (see the
    module docstring)."""
    stats.mean = centred(graph, bn, stats.mean, 'centred_mean')
    if stats.moving_mean is not None:
        stats.moving_mean = centred(graph, bn, stats.moving_mean,
                                    'centred_moving_mean')


def centred(graph, bn: BatchNormRecord, mean: tf.Tensor,
            name: str) -> tf.Tensor:
    """`mean` minus the bias added before the batch norm, if any."""
    if bn.pre_bias is None:
        return mean
    with graph_edit.absolute_name_scope(graph, graph_edit.scope_of(bn.op)):
        return tf.subtract(mean, bn.pre_bias, name=name)


def _undo_bessel_correction(graph, bn: BatchNormRecord) -> tf.Tensor:
    """A training-mode fused BN outputs the unbiased batch variance
    (times n / (n - 1)); normalization used the biased one."""
    graph_edit.set_attr(bn.op, '_gradient_op_type',
                        tf.compat.v1.AttrValue(s=FOLD_GRADIENT_NAME.encode()))
    with graph_edit.absolute_name_scope(graph, graph_edit.scope_of(bn.op)):
        fraction = biased_fraction(bn.input, bn.mean)
        return tf.multiply(bn.variance, per_channel(fraction, bn.variance),
                           name='Undo_Bessel_Correction')


def biased_fraction(x: tf.Tensor, channel_vector: tf.Tensor):
    """`(n - 1) / n`, the biased over the unbiased variance of `x` per
    channel (float32 scalar; see `elements_per_channel`)."""
    n = elements_per_channel(x, channel_vector)
    return (n - _ONE) / n


def per_channel(value, channel_vector: tf.Tensor):
    """A number `value` as a float32 array shaped like `channel_vector`
    when that shape is static, else `value` unchanged.

    Adding or multiplying two tensors of one static shape takes the same
    float32 operations as broadcasting a scalar, but its gradient needs no
    shapes and reductions: five ops fewer per use, constants that would
    otherwise each carry the training script's update-op control edges.
    """
    if (isinstance(value, (float, np.floating))
            and channel_vector.shape.is_fully_defined()):
        return shared_constants.constant(
            np.full(channel_vector.shape.as_list(), value, np.float32))
    return value


def elements_per_channel(x: tf.Tensor, channel_vector: tf.Tensor):
    """How many elements of `x` share one channel, as a float32 scalar.

    With static shapes it is a NumPy float32, computed with the float32
    operations the graph would run: a constant instead of eight ops per
    batch norm (and in its gradient), with identical values.
    """
    if x.shape.is_fully_defined() and channel_vector.shape.is_fully_defined():
        return (np.float32(x.shape.num_elements())
                / np.float32(channel_vector.shape.num_elements()))
    return tf.cast(tf.size(x), tf.float32) / tf.cast(tf.size(channel_vector),
                                                     tf.float32)


def multiplier_and_bias(graph, bn: BatchNormRecord, stats: Statistics,
                        scope: str):
    """`gamma / sigma` and `beta - mean * gamma / sigma`, built in `scope`.

    An unfused BN already computes both; they are reused unless a pre-BN
    bias changes the mean.
    """
    if bn.multiplier is not None and bn.pre_bias is None:
        return bn.multiplier, bn.bias
    with graph_edit.absolute_name_scope(graph, scope):
        multiplier = bn.multiplier
        if multiplier is None:
            multiplier = scale(bn.gamma, stats.variance, bn.epsilon)
        bias = tf.subtract(bn.beta, stats.mean * multiplier, name='bias')
    return multiplier, bias


def corrections(graph, bn: BatchNormRecord, stats: Statistics,
                fold_scope: str, freeze_bn_delay) -> Corrections:
    """The training-time correction factors (see the module docstring), in
    `<fold_scope>/batch_norm_correction`."""
    correction_scope = graph_edit.join_scope(fold_scope,
                                             names.CORRECTION_SCOPE)
    with graph_edit.absolute_name_scope(graph, correction_scope):
        epsilon = per_channel(bn.epsilon, stats.variance)
        recip_sigma_mv = tf.math.rsqrt(stats.moving_variance + epsilon)
        recip_sigma = tf.math.rsqrt(stats.variance + epsilon)
        with gradients.shared_constant_gradients():
            scale = tf.math.divide(recip_sigma_mv, recip_sigma,
                                   name='scale_compute')
        scale = tf.identity(scale, name='correction_scale')
        reciprocal = tf.math.reciprocal(scale, name='reciprocal_compute')
        gamma = bn.gamma if bn.gamma is not None else tf.ones_like(stats.mean)
        offset = tf.multiply(gamma, stats.mean * recip_sigma -
                             stats.moving_mean * recip_sigma_mv,
                             name='offset_compute')
        use_moving = use_moving_average(graph, freeze_bn_delay)
        freeze_moving_average(bn.mean_decay, use_moving,
                              names.FREEZE_MOVING_MEAN)
        freeze_moving_average(bn.variance_decay, use_moving,
                              names.FREEZE_MOVING_VAR)
        recip = conditionals.choose(use_moving,
                                    lambda: _constant_like(reciprocal, 1.0),
                                    lambda: reciprocal,
                                    name='correction_recip')
        offset = conditionals.choose(use_moving, lambda: offset,
                                     lambda: _constant_like(offset, 0.0),
                                     name='correction_offset')
    return Corrections(scale=scale, recip=recip, offset=offset)


def _constant_like(tensor: tf.Tensor, value: float) -> tf.Tensor:
    """A constant shaped like `tensor`; unlike `ones_like`/`zeros_like` it
    does not make the graph compute `tensor` when its shape is static."""
    if tensor.shape.is_fully_defined():
        return shared_constants.constant(
            np.full(tensor.shape.as_list(), value), tensor.dtype)
    return tf.fill(tf.shape(tensor), tf.constant(value, tensor.dtype))


def use_moving_average(graph, freeze_bn_delay):
    """The freeze predicate (step >= freeze_bn_delay), or False for None."""
    if freeze_bn_delay is None:
        return False
    step = step_counter.delay_step(graph)
    delay = shared_constants.constant(freeze_bn_delay, step.dtype)
    return tf.greater_equal(step, delay, name='use_moving_average')


def freeze_moving_average(decay: tf.Tensor, use_moving, name: str) -> None:
    """After the freeze the moving-average update sees a decay of 0."""
    if isinstance(use_moving, bool):
        return
    readers = graph_edit.consumers(decay)
    frozen = conditionals.choose(use_moving,
                                 lambda: _constant_like(decay, 0.0),
                                 lambda: decay, name=name)
    graph_edit.reroute(frozen, decay, can_modify=readers)


@tf.RegisterGradient(FOLD_GRADIENT_NAME)
def _fold_fused_batch_norm_grad(op, *grads):
    """Gradient of a folded fused BN through its batch mean and variance.

    After folding only outputs 1 (mean) and 2 (unbiased variance) are used;
    the op's own gradient ignores them. d mean / dx = 1 / n and
    d var / dx = 2 (x - mean) / (n - 1).
    """
    x, mean = op.inputs[0], op.outputs[1]
    grad_mean, grad_var = grads[1], grads[2]
    n = elements_per_channel(x, mean)
    # Per-channel factors first: only (x - mean) * a + b touches all of x.
    offset = (grad_mean / _tensor(n) if grad_mean is not None
              else _tensor(0.0))
    # One element per channel: the variance is 0 whatever x is.
    factor = (tf.math.divide_no_nan(_tensor(2.0) * grad_var,
                                    _tensor(n - _ONE))
              if grad_var is not None else _tensor(0.0))
    with graph_edit.no_control_dependencies(op.graph):  # Forward only.
        centred_x = x - mean
    grad_x = centred_x * factor + offset
    return [grad_x] + [None] * (len(op.inputs) - 1)


def _tensor(value):
    """`value` as a tensor; a number becomes a constant without the control
    dependencies of the training script's update-op block, where gradients
    are built (see `shared_constants.constant`)."""
    if isinstance(value, tf.Tensor):
        return value
    return shared_constants.constant(value)
