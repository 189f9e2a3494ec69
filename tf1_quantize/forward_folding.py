"""Folding a standalone batch norm forward, into the layer reading it.

A batch norm that follows no layer (e.g. Conv2D -> Relu -> BN) is, per
channel, ``BN(x) = x * m + b``. When its output reaches only a MatMul or a
VALID-padded Conv2D (`find_forward_folds`), input feature ``d`` of
that layer sees channel ``c(d) = d mod C``, so with weights ``W[..., d, o]``

    layer(BN(x), W) = layer(x, W * m[c(d)]) + sum_{..., d} b[c(d)] W[..., d, o]

(without padding every output sums whole input features, whatever the
stride or dilation). The weights are scaled along their input axis and the
second term joins the layer's bias, so the quantizer sees an ordinary layer
whose weights are the `mul_fold` product.

In training the weights are scaled by ``gamma / sigma_mv`` and the input by
the correction ``sigma_mv / sigma_B`` (1 after the freeze), with the offset
switching from batch to moving statistics at the freeze
(`channel_terms`); the batch norm keeps computing the batch
statistics its moving averages read.
"""

from __future__ import annotations

import dataclasses
from typing import List, Optional, Sequence

import tensorflow as tf

from tf1_quantize import batch_norm_math as bn_math
from tf1_quantize import graph_edit
from tf1_quantize import names
from tf1_quantize import patterns
from tf1_quantize.graph_matcher import GraphMatcher
from tf1_quantize.graph_matcher import OpTypePattern as P
from tf1_quantize.records import BatchNormRecord, LayerRecord

# The layer's weights are still a variable read (not folded, not constant),
# so that scaling them per input feature is exact for every value they take.
_FORWARD_FOLD_LAYER_MATCHER = GraphMatcher(
    P('Conv2D|MatMul', name='layer', inputs=['*', patterns.WEIGHT_READ]))


@dataclasses.dataclass
class ForwardFoldRecord:
    """A standalone batch norm that folds exactly into the layer after it.

    Attributes:
        batch_norm: the batch norm.
        layer: the record of the layer that reads its output.
        path: the Reshape / Identity ops in between, first reader first.
        repeats: how often the channels repeat along the layer's input
            features (H * W after a flatten, else 1).
    """
    batch_norm: BatchNormRecord
    layer: LayerRecord
    path: List[tf.Operation]
    repeats: int

    @property
    def reader(self) -> tf.Operation:
        """The op that reads the batch norm's output."""
        return self.path[0] if self.path else self.layer.layer


def find_forward_folds(
        standalone: Sequence[BatchNormRecord],
        records: Sequence[LayerRecord]) -> List[ForwardFoldRecord]:
    """Finds the standalone batch norms that fold exactly into the next layer.

    That is exact for every value of the parameters when the batch norm's
    output only reaches input 0 of a MatMul (not `transpose_a`) or of a
    VALID-padded NHWC Conv2D whose weights are a variable read, through
    Reshape / Identity ops that nothing else reads, and the layer has no
    batch norm of its own (its backward fold needs the layer's unfolded
    output, so such batch norms stay affine). Reshapes keep the row-major
    element order and the channel is the batch norm's last axis, so input
    feature `d` of the layer always sees channel `d mod C`. Not exact, so
    not matched: a MaxPool in between (gamma may be negative), SAME or
    EXPLICIT padding (padded zeros are not BN(0)), depthwise layers.

    Args:
        standalone: the batch norms `find_standalone_batch_norms` found.
        records: the layers `find_layers` found.

    Returns:
        A `ForwardFoldRecord` per batch norm that folds forward, in order.
    """
    layers = {r.layer: r for r in records}
    found = []
    for bn in standalone:
        fold = _forward_fold(bn, layers)
        if fold is not None:
            found.append(fold)
    return found


def _forward_fold(bn: BatchNormRecord,
                  layers) -> Optional[ForwardFoldRecord]:
    path, tensor = [], bn.output
    while True:
        readers = graph_edit.consumers(tensor)
        if len(readers) != 1 or not graph_edit.same_tensor(
                readers[0].inputs[0], tensor):
            return None
        if readers[0].type not in names.VALUE_PRESERVING_TYPES:
            break
        path.append(readers[0])
        tensor = readers[0].outputs[0]
    record = layers.get(readers[0])
    if record is None or not _takes_forward_fold(record):
        return None
    repeats = _channel_repeats(bn, tensor)
    if repeats is None:
        return None
    return ForwardFoldRecord(batch_norm=bn, layer=record, path=path,
                             repeats=repeats)


def _takes_forward_fold(record: LayerRecord) -> bool:
    layer = record.layer
    if (record.batch_norm is not None or record.batch_to_space is not None
            or record.is_separable_inner
            or _FORWARD_FOLD_LAYER_MATCHER.match_op(layer) is None
            or not _has_separate_bias(record)):
        return False
    if layer.type == 'MatMul':
        return not layer.get_attr('transpose_a')
    return (_string_attr(layer, 'padding') == 'VALID'
            and _string_attr(layer, 'data_format') == 'NHWC')


def _has_separate_bias(record: LayerRecord) -> bool:
    """No bias add, or one that alone reads the layer's output and adds a
    per-channel vector, which can take the folded bias as another term.

    The patterns call any Add after a layer its bias add (as contrib did);
    a residual sum of two activations is not a place for the bias.
    """
    add = record.bias_add
    if add is None:
        return True
    output = record.layer.outputs[0]
    others = [t for t in add.inputs if not graph_edit.same_tensor(t, output)]
    return (len(others) == 1 and graph_edit.consumers(output) == [add]
            and _is_channel_vector(others[0], output.shape[-1])
            and (add.type != 'BiasAdd'
                 or _string_attr(add, 'data_format') == 'NHWC'))


def _string_attr(op: tf.Operation, name: str) -> str:
    """A string attribute; NHWC when a `data_format` was left out."""
    if name not in op.node_def.attr:
        return 'NHWC'
    value = op.get_attr(name)
    return value.decode() if isinstance(value, bytes) else value


def _channel_repeats(bn: BatchNormRecord,
                     features: tf.Tensor) -> Optional[int]:
    """How often the channels tile the layer's input features, or None
    when the shapes do not say statically."""
    if bn.input.shape.rank is None or features.shape.rank is None:
        return None
    channels = bn.input.shape[-1]
    width = features.shape[-1]
    if channels is None or width is None or width % channels:
        return None
    vectors = (bn.gamma, bn.beta, bn.mean, bn.variance, bn.moving_mean,
               bn.moving_variance)
    if not all(v is None or _is_channel_vector(v, channels)
               for v in vectors):
        return None
    return width // channels


def _is_channel_vector(tensor: tf.Tensor, channels: int) -> bool:
    shape = tensor.shape
    return (shape.is_fully_defined() and shape.rank >= 1
            and shape[-1] == channels and shape.num_elements() == channels)


def fold_forward(graph: tf.Graph, fold: ForwardFoldRecord, is_training: bool,
                 freeze_bn_delay: Optional[int]) -> None:
    """Folds a batch norm into the layer after it, in place.

    Call `validation.check_plan` first. The layer record is
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
    terms = channel_terms(graph, bn, is_training, freeze_bn_delay,
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


@dataclasses.dataclass
class ChannelTerms:
    """A batch norm as ``(x * correction) * scale + offset`` per channel.

    Folding it forward scales the next layer's weights by `scale` along their
    input axis and adds the layer's response to `offset` to its bias (see
    `forward_folding`).

    Attributes:
        scale: `gamma / sigma` (eval) or `gamma / sigma_mv` (training).
        offset: `beta - mu * gamma / sigma` with the statistics in use: in
            training the batch ones until the freeze, then the moving ones.
        correction: training only, `sigma_mv / sigma_B` until the freeze,
            then 1; None in eval.
    """
    scale: tf.Tensor
    offset: tf.Tensor
    correction: Optional[tf.Tensor] = None


def channel_terms(graph: tf.Graph, bn: BatchNormRecord, is_training: bool,
                  freeze_bn_delay: Optional[int], scope: str) -> ChannelTerms:
    """Builds the per-channel terms of a batch norm folded forward.

    The training terms use the corrections of the module docstring, so the
    weights they scale move with the moving sigma only, the batch norm's
    output is exact before and after the freeze, and the moving averages
    stop at the freeze, as for backward folds.

    Args:
        graph: the graph holding `bn`.
        bn: the batch norm (validated by `validate`).
        is_training: build the training form.
        freeze_bn_delay: step from which moving statistics are used, or None.
        scope: name scope of the new ops.

    Returns:
        The `ChannelTerms`.
    """
    training = is_training and bn.is_training
    stats = bn_math.statistics(graph, bn, training)
    multiplier, bias = bn_math.multiplier_and_bias(graph, bn, stats, scope)
    if not training:
        return ChannelTerms(scale=multiplier, offset=bias)
    corrections = bn_math.corrections(graph, bn, stats, scope, freeze_bn_delay)
    with graph_edit.absolute_name_scope(graph, scope):
        scale = bn_math.scale(bn.gamma, stats.moving_variance, bn.epsilon)
        offset = tf.add(bias, corrections.offset, name='offset')
    return ChannelTerms(scale=scale, offset=offset,
                        correction=corrections.recip)
