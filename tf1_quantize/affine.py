"""A batch norm no layer folds, rewritten as a per-channel multiply and add
(quantized like weights and activations, so TFLite runs it in integers).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import tensorflow as tf

from tf1_quantize import batch_norm_math as bn_math
from tf1_quantize import conditionals
from tf1_quantize import graph_edit
from tf1_quantize import names
from tf1_quantize.records import BatchNormRecord

@dataclasses.dataclass
class AffineBatchNorm:
    """A batch norm no layer folds, rewritten as `x * multiplier + offset`.

    Attributes:
        batch_norm: the batch norm rewritten.
        scope: name scope of the new ops.
        multiplier: `gamma / sigma` per channel.
        offset: `beta - mean * gamma / sigma` per channel.
        mul: the `x * multiplier` op.
        add: the `+ offset` op; it replaced the batch norm's output.
    """
    batch_norm: BatchNormRecord
    scope: str
    multiplier: tf.Tensor
    offset: tf.Tensor
    mul: tf.Operation
    add: tf.Operation


def rewrite_as_affine(graph: tf.Graph, bn: BatchNormRecord, is_training: bool,
                      freeze_bn_delay: Optional[int]) -> AffineBatchNorm:
    """Replaces a batch norm by a per-channel multiply and add, in place.

    In training the batch statistics are used until `freeze_bn_delay`, then
    the moving ones (whose updates stop), exactly as for folded batch norms;
    the original batch norm keeps computing the statistics.

    Args:
        graph: the graph holding `bn`.
        bn: the batch norm (validated by `validate`).
        is_training: build the training form.
        freeze_bn_delay: step from which moving statistics are used, or None.

    Returns:
        The new ops, for quantization.
    """
    training = is_training and bn.is_training
    stats = bn_math.statistics(graph, bn, training)
    scope = graph_edit.join_scope(graph_edit.scope_of(bn.op), 'affine')
    with graph_edit.absolute_name_scope(graph, scope):
        mean, variance = stats.mean, stats.variance
        if training and freeze_bn_delay is not None:
            use_moving = bn_math.use_moving_average(graph, freeze_bn_delay)
            bn_math.freeze_moving_average(bn.mean_decay, use_moving,
                                          names.FREEZE_MOVING_MEAN)
            bn_math.freeze_moving_average(bn.variance_decay, use_moving,
                                          names.FREEZE_MOVING_VAR)
            mean = conditionals.choose(use_moving,
                                       lambda: stats.moving_mean,
                                       lambda: mean, name='mean')
            variance = conditionals.choose(use_moving,
                                           lambda: stats.moving_variance,
                                           lambda: variance, name='variance')
        multiplier = bn_math.scale(bn.gamma, variance, bn.epsilon)
        offset = tf.subtract(bn.beta, mean * multiplier, name='offset')
        # Only the multiply reads this copy, so its FakeQuant affects only it.
        multiplier = tf.identity(multiplier, name='multiplier')
        scaled = tf.multiply(bn.input, multiplier, name='scaled')
        output = tf.raw_ops.Add(x=scaled, y=offset, name='shifted')
    graph_edit.reroute(output, bn.output)
    return AffineBatchNorm(batch_norm=bn, scope=scope, multiplier=multiplier,
                           offset=offset, mul=scaled.op, add=output.op)
