"""Folding a batch norm into the layer before it: the folded weights, the
layer clone and the output, in contrib's two-convolution form or the
one-convolution form (the math of the corrections: `batch_norm_math`).

Eval (Jacob et al. 2018, section 3.2):

    y = conv(x, w * gamma / sigma) + (beta - mu * gamma / sigma)

Training (Krishnamoorthi 2018, section 3.2.2, Fig. 8-9): the folded weights
use the moving sigma, so their quantization range moves slowly, and the
output is corrected back to batch statistics until the freeze:

    w_fold = (sigma_B / sigma_mv) * w * gamma / sigma_B = w * gamma / sigma_mv
    y = conv(x, w_fold) * c_recip + c_offset + (beta - mu_B * gamma / sigma_B)
"""

from __future__ import annotations

from typing import List, Optional

import numpy as np
import tensorflow as tf

from tf1_quantize import batch_norm_math as bn_math
from tf1_quantize import conditionals
from tf1_quantize import gradients
from tf1_quantize import graph_edit
from tf1_quantize import shared_constants
from tf1_quantize.errors import UnsupportedGraphError
from tf1_quantize.names import (BN_FOLD_SCOPE, CORRECTED_WEIGHTS, FOLD_SUFFIX,
                                FOLDED_WEIGHTS, FREEZE_MOVING_MEAN,
                                FREEZE_MOVING_VAR, ONE_CONV_FOLD)
from tf1_quantize.records import BatchNormRecord, LayerRecord


def uses_training_fold(bn: BatchNormRecord, is_training: bool) -> bool:
    """Whether a layer's batch norm gets the training fold (batch
    statistics, corrections): in a training rewrite when the batch norm
    normalizes with batch statistics. A fused batch norm whose op says
    `is_training` gets it in an eval rewrite too, never frozen, as contrib
    1.15.3 and later did (an eval graph built with is_training=True);
    unfused ones follow the rewrite's mode.
    """
    return bn.is_training and (is_training or bn.fused)


def fold(graph: tf.Graph, records: List[LayerRecord], is_training: bool,
         freeze_bn_delay: Optional[int], one_conv: bool = False) -> None:
    """Folds the batch norm of each record into its layer, in place.

    Call `validation.check_plan` first. Each folded record is updated to
    describe the new ops: `layer` becomes the `<layer>_Fold` clone,
    `weights` the `mul_fold` product and `bias_add` the `add_fold` op.

    Args:
        graph: the graph holding the records.
        records: the layers found in the graph.
        is_training: build the training fold (corrections, freeze).
        freeze_bn_delay: step from which the moving statistics are used, or
            None to keep batch statistics throughout training.
        one_conv: in training, take the batch statistics from the folded
            layer instead of running the original layer too (see
            `_one_conv_fold`).
    """
    for record in records:
        if record.batch_norm is not None:
            _fold_one(graph, record, is_training, freeze_bn_delay, one_conv)


def _fold_one(graph, record, is_training, freeze_bn_delay, one_conv):
    bn = record.batch_norm
    names = _FoldNames(record)
    training_fold = uses_training_fold(bn, is_training)
    if training_fold and one_conv and is_training:
        folded = _one_conv_fold(graph, record, names, freeze_bn_delay)
    else:
        folded = _exact_fold(graph, record, names, training_fold,
                             freeze_bn_delay)
    weights, layer, batch_to_space, output = folded
    if graph_edit.reroute(output, bn.output) == 0:
        raise UnsupportedGraphError('Folding batch norms failed, %s had no '
                                    'outputs.' % bn.output.name)
    record.layer, record.weights = layer, weights
    record.batch_to_space, record.bias_add = batch_to_space, output.op
    record.batch_norm = None


def _exact_fold(graph, record: LayerRecord, names: _FoldNames,
                training: bool, freeze_bn_delay: Optional[int]):
    """contrib's fold (see the module docstring), in its training form when
    `training`.

    Returns:
        (folded weights, clone, BatchToSpaceND clone or None, output).
    """
    bn = record.batch_norm
    stats = bn_math.statistics(graph, bn, training)
    multiplier, bias = bn_math.multiplier_and_bias(graph, bn, stats,
                                                   names.bn_fold_scope)
    corrections = None
    if training:
        corrections = bn_math.corrections(graph, bn, stats,
                                          names.bn_fold_scope, freeze_bn_delay)
    weights = _folded_weights(graph, record, names, multiplier, corrections)
    output, layer, batch_to_space = _clone_layer(graph, record, weights,
                                                 names)
    with (graph_edit.absolute_name_scope(graph, names.layer_scope),
          gradients.shared_constant_gradients()):
        if corrections is not None:
            output = tf.multiply(corrections.recip, output,
                                 name='post_conv_mul')
            output = tf.raw_ops.Add(x=output, y=corrections.offset,
                                    name='correction_add')
        output = tf.raw_ops.Add(x=output, y=bias, name='add_fold')
    return weights, layer, batch_to_space, output


def _folded_weights(graph, record: LayerRecord, names, multiplier,
                    corrections: Optional[bn_math.Corrections]) -> tf.Tensor:
    """`w * gamma / sigma`, times `sigma_B / sigma_mv` in training."""
    weights = record.weights
    with graph_edit.absolute_name_scope(graph, names.bn_fold_scope):
        if corrections is not None:
            correction = _per_output_channel(corrections.scale, record,
                                             'correction_reshape')
        multiplier = _per_output_channel(multiplier, record, 'scale_reshape')
    with (graph_edit.absolute_name_scope(graph, names.layer_scope),
          gradients.shared_constant_gradients()):
        if corrections is not None:
            weights = tf.multiply(correction, weights,
                                  name=CORRECTED_WEIGHTS)
        return tf.multiply(weights, multiplier, name=FOLDED_WEIGHTS)


def _one_conv_fold(graph, record: LayerRecord, names: _FoldNames,
                   freeze_bn_delay: Optional[int]):
    """The training fold with one convolution per layer (opt-in).

    contrib runs the original layer for the batch statistics and the folded
    one for the output. Here the folded weights `w * s` (`s = gamma /
    sigma_mv`, what the exact fold quantizes too) are divided by `s` again
    after the quantizer, and the layer runs once with them: per output
    channel that is `conv(x, w)` with quantized weights, and a training-mode
    fused batch norm of it is the batch-statistics BN, computed (forward and
    backward) by one fused kernel, as PyTorch's ConvBn QAT modules do. The
    division works on the weights, not on the layer's much larger output.
    The BN's batch statistics feed the moving-average updates, so the
    original layer and batch norm no longer run. After the freeze a v1 cond
    runs the layer with `w * s` instead and adds `beta - mu_mv * s`, the
    moving-statistics BN; only one of the two layer clones runs per step.

    Before the freeze `s` reaches the output only as `(w * s) / s`, whose
    gradient w.r.t. `s` is 0 up to the weights' rounding error, so without a
    freeze no gradient flows through `s` (nothing to compute). With a freeze
    it flows, as in PyTorch: after the freeze it gives gamma the gradient of
    the moving-statistics BN.

    Returns:
        (folded weights, the batch-statistics clone, its BatchToSpaceND clone
        or None, output).
    """
    bn = record.batch_norm
    with graph_edit.absolute_name_scope(graph, names.bn_fold_scope):
        scale = bn_math.scale(bn.gamma, bn.moving_variance, bn.epsilon)
        scale = (tf.stop_gradient(scale, name='scale')
                 if freeze_bn_delay is None else
                 tf.identity(scale, name='scale'))
        multiplier = _per_output_channel(scale, record, 'scale_reshape')
    with (graph_edit.absolute_name_scope(graph, names.layer_scope),
          gradients.shared_constant_gradients()):
        weights = tf.multiply(record.weights, multiplier,
                              name=FOLDED_WEIGHTS)
    use_moving = bn_math.use_moving_average(graph, freeze_bn_delay)
    bn_math.freeze_moving_average(bn.mean_decay, use_moving,
                                  FREEZE_MOVING_MEAN)
    bn_math.freeze_moving_average(bn.variance_decay, use_moving,
                                  FREEZE_MOVING_VAR)
    moving_mean = bn_math.centred(graph, bn, bn.moving_mean,
                                  'centred_moving_mean')
    batch_clone = []

    def clone_layer(layer_weights):
        layer_input = None
        if freeze_bn_delay is not None:  # Then the clones are in a cond.
            # Read here, in the cond's name scope, the input gets a Switch
            # named as the fold's own (the clone is named in the layer's
            # scope), which a second rewrite recognises.
            layer_input = tf.identity(record.layer.inputs[0],
                                      name='layer_input')
        return _clone_layer(graph, record, layer_weights, names, layer_input)

    def batch_statistics():
        with gradients.shared_constant_gradients():
            unscaled = tf.raw_ops.RealDiv(x=weights, y=multiplier,
                                          name='unscaled_weights')
        output, layer, batch_to_space = clone_layer(unscaled)
        batch_clone.extend((layer, batch_to_space))
        return _normalize_with_batch_statistics(output, bn)

    def moving_statistics():
        folded, _, _ = clone_layer(weights)
        bias = tf.subtract(bn.beta, moving_mean * scale, name='bias')
        return (tf.add(folded, bias, name='add_fold'), bn.moving_mean,
                bn.moving_variance)

    with graph_edit.absolute_name_scope(graph, names.bn_fold_scope):
        output, mean, variance = conditionals.smart_cond(
            use_moving, moving_statistics, batch_statistics,
            name=ONE_CONV_FOLD)
    graph_edit.reroute(mean, bn.mean_update.inputs[1],
                       can_modify=[bn.mean_update])
    graph_edit.reroute(variance, bn.variance_update.inputs[1],
                       can_modify=[bn.variance_update])
    layer, batch_to_space = batch_clone
    return weights, layer, batch_to_space, output


def _normalize_with_batch_statistics(x: tf.Tensor, bn: BatchNormRecord):
    """A training-mode FusedBatchNormV3 of `x` with the parameters of `bn`.

    Returns:
        (output shaped like `x`, batch mean and batch variance in the form the
        moving-average updates of `bn` read them).
    """
    channels = x.shape[-1]
    inputs = x if x.shape.rank == 4 else tf.reshape(x, [-1, 1, 1, channels])
    gamma = bn.gamma if bn.gamma is not None else tf.ones_like(bn.beta)
    # Training mode takes no statistics: the empty tensors TF would build.
    empty = shared_constants.constant(np.zeros([0]))
    output, mean, variance = tf.compat.v1.nn.fused_batch_norm(
        inputs, gamma, bn.beta, mean=empty, variance=empty,
        epsilon=_static_epsilon(bn), is_training=True, name='batch_norm')
    if x.shape.rank != 4:
        output = tf.reshape(output, tf.shape(x), name='batch_norm_output')
    if bn.pre_bias is not None:  # `x` lacks it; only the mean notices.
        mean = tf.add(mean, bn.pre_bias, name='mean_with_pre_bias')
    if not bn.fused:  # Output 2 carries Bessel's correction; undo it.
        variance = tf.multiply(variance, bn_math.biased_fraction(inputs, mean),
                               name='biased_variance')
    return output, mean, variance


def _static_epsilon(bn: BatchNormRecord) -> float:
    if bn.fused:
        return bn.epsilon
    return float(tf.get_static_value(bn.epsilon))


class _FoldNames:
    """Where the ops of one fold are created (contrib's naming, spec §2)."""

    def __init__(self, record: LayerRecord):
        bn = record.batch_norm
        self.fused = bn.fused
        self.layer = record.layer
        if bn.fused:
            self.layer_scope = record.scope
            self.bn_fold_scope = graph_edit.join_scope(record.scope,
                                                       BN_FOLD_SCOPE)
        else:
            # contrib-style unfused BNs live in '<C>BatchNorm/...' and the fold
            # is named after C; other BNs are named after the layer scope.
            context, found, _ = bn.op.name.rpartition('BatchNorm/')
            self.layer_scope = (context.rstrip('/')
                                if found else record.scope)
            self.bn_fold_scope = self.layer_scope

    def clone_name(self, op: tf.Operation) -> str:
        """`Conv2D_Fold` inside the layer scope; unfused BatchToSpaceND keep
        their full name (`<scope>/depthwise/BatchToSpaceND_Fold`)."""
        if not self.fused and op is not self.layer:
            return op.name + FOLD_SUFFIX
        return graph_edit.join_scope(self.layer_scope,
                                     op.name.rpartition('/')[2] + FOLD_SUFFIX)


def _per_output_channel(vector: tf.Tensor, record: LayerRecord,
                        name: str) -> tf.Tensor:
    """Shapes a per-output-channel vector to broadcast over the weights."""
    layer = record.layer
    if layer.type == 'DepthwiseConv2dNative':
        in_channels, multiplier = record.weights.shape.as_list()[2:]
        return tf.reshape(vector, [in_channels, multiplier], name=name)
    if layer.type == 'MatMul' and layer.get_attr('transpose_b'):
        return tf.reshape(vector, [-1, 1], name=name)
    return vector


def _clone_layer(graph, record: LayerRecord, weights: tf.Tensor,
                 names: _FoldNames, layer_input: Optional[tf.Tensor] = None):
    """Copies the layer op (all its attributes) to read the folded weights
    (and `layer_input`, if given, instead of the layer's input).

    Returns:
        (output tensor, clone op, BatchToSpaceND clone or None).
    """
    layer = record.layer
    if layer_input is None:
        layer_input = layer.inputs[0]
    clone = _copy_op(graph, layer, [layer_input, weights],
                     names.clone_name(layer))
    if record.batch_to_space is None:
        return clone.outputs[0], clone, None
    b2s = record.batch_to_space
    b2s_clone = _copy_op(graph, b2s, [clone.outputs[0]] + list(b2s.inputs[1:]),
                         names.clone_name(b2s))
    return b2s_clone.outputs[0], clone, b2s_clone


def _copy_op(graph, op: tf.Operation, inputs, name: str) -> tf.Operation:
    attrs = {
        key: value
        for key, value in op.node_def.attr.items()
        if not key.startswith('_')
    }
    with graph_edit.absolute_name_scope(graph, graph_edit.scope_of(name)):
        return graph.create_op(op.type,
                               inputs, [t.dtype for t in op.outputs],
                               name=name.rpartition('/')[2],
                               attrs=attrs)


