"""Folding a standalone batch norm forward, into the layer reading it.

A batch norm that follows no layer (e.g. Conv2D -> Relu -> BN) is, per
channel, ``BN(x) = x * m + b``. When its output reaches only a MatMul or a
VALID-padded Conv2D (`patterns.find_forward_folds`), input feature ``d`` of
that layer sees channel ``c(d) = d mod C``, so with weights ``W[..., d, o]``

    layer(BN(x), W) = layer(x, W * m[c(d)]) + sum_{..., d} b[c(d)] W[..., d, o]

(without padding every output sums whole input features, whatever the
stride or dilation). The weights are scaled along their input axis and the
second term joins the layer's bias, so the quantizer sees an ordinary layer
whose weights are the `mul_fold` product.

In training the weights are scaled by ``gamma / sigma_mv`` and the input by
the correction ``sigma_mv / sigma_B`` (1 after the freeze), with the offset
switching from batch to moving statistics at the freeze
(`folding.channel_terms`); the batch norm keeps computing the batch
statistics its moving averages read.
"""

from __future__ import annotations

from typing import List, Optional

import tensorflow as tf

from tf1_quantize import folding
from tf1_quantize import graph_edit
from tf1_quantize import names
from tf1_quantize.patterns import ForwardFoldRecord, LayerRecord


def fold_forward(graph: tf.Graph, fold: ForwardFoldRecord, is_training: bool,
                 freeze_bn_delay: Optional[int]) -> None:
    """Folds a batch norm into the layer after it, in place.

    Call `folding.validate` on the batch norm first. The layer record is
    updated: `weights` becomes the `mul_fold` product and `bias_add` the op
    adding the folded bias.

    Args:
        graph: the graph holding the ops.
        fold: the batch norm and the layer (from `find_forward_folds`).
        is_training: build the training form (corrections, freeze).
        freeze_bn_delay: step from which moving statistics are used, or None.
    """
    bn, record = fold.batch_norm, fold.layer
    scope = graph_edit.join_scope(graph_edit.scope_of(bn.op), 'forward_fold')
    terms = folding.channel_terms(graph, bn, is_training, freeze_bn_delay,
                                  scope)
    with graph_edit.absolute_name_scope(graph, scope):
        scale = _per_input_feature(terms.scale, fold, 'scale_tiled')
        offset = _per_input_feature(terms.offset, fold, 'offset_tiled')
        layer_input = bn.input
        if terms.correction is not None:
            # Not a Mul: the quantizer quantizes Mul outputs computed from
            # quantized tensors, and this training-only op (the eval graph
            # has none) must stay float. The correction is positive, so
            # MulNoNan computes the same product.
            layer_input = tf.math.multiply_no_nan(
                layer_input, terms.correction, name='corrected_input')
    weights = record.weights
    with graph_edit.absolute_name_scope(graph, record.scope):
        folded = tf.multiply(weights, scale, name=names.FOLDED_WEIGHTS)
        bias = tf.reduce_sum(weights * offset, _input_axes(record.layer),
                             name='forward_fold_bias')
    graph_edit.reroute(layer_input, bn.output, can_modify=[fold.reader])
    graph_edit.reroute(folded, weights, can_modify=[record.layer])
    _add_to_bias(graph, record, bias)
    record.weights = folded


def _per_input_feature(vector: tf.Tensor, fold: ForwardFoldRecord,
                       name: str) -> tf.Tensor:
    """Tiles a per-channel vector over the layer's input features, shaped
    to broadcast along the input axis of its weights."""
    tiled = tf.tile(tf.reshape(vector, [-1]), [fold.repeats])
    layer = fold.layer.layer
    if layer.type == 'MatMul' and layer.get_attr('transpose_b'):
        return tf.identity(tiled, name=name)  # weights [out, in]
    # Weights [in, out] or [kh, kw, in, out].
    return tf.reshape(tiled, [-1, 1], name=name)


def _input_axes(layer: tf.Operation) -> List[int]:
    """The weight axes summed over to compute one output feature."""
    if layer.type == 'MatMul':
        return [1] if layer.get_attr('transpose_b') else [0]
    return [0, 1, 2]


def _add_to_bias(graph: tf.Graph, record: LayerRecord,
                 bias: tf.Tensor) -> None:
    """Adds `bias` to the layer's bias add, or adds one (`add_fold`)."""
    output = record.layer.outputs[0]
    with graph_edit.absolute_name_scope(graph, record.scope):
        if record.bias_add is None:
            readers = graph_edit.consumers(output)
            add = tf.raw_ops.Add(x=output, y=bias, name='add_fold')
            graph_edit.reroute(add, output, can_modify=readers)
            record.bias_add = add.op
            return
        old, = [t for t in record.bias_add.inputs
                if not graph_edit.same_tensor(t, output)]
        new = tf.add(old, bias, name='forward_fold_bias_add')
    graph_edit.reroute(new, old, can_modify=[record.bias_add])
