"""Batch-norm folding: the math, for fused and unfused batch norms alike.

Notation (Jacob et al. 2018, section 3.2; Krishnamoorthi 2018, section 3.2):
``gamma``, ``beta`` the BN scale and offset; ``mu_B``, ``var_B`` the batch
statistics; ``mu_mv``, ``var_mv`` the moving ones;
``sigma = sqrt(var + eps)``.

Eval:      y = conv(x, w * gamma / sigma) + (beta - mu * gamma / sigma)

Training (the folded weights use the moving sigma, so their quantization
range moves slowly; the output is corrected back to batch statistics):

    w_fold = (sigma_B / sigma_mv) * w * gamma / sigma_B = w * gamma / sigma_mv
    y = conv(x, w_fold) * c_recip + c_offset + (beta - mu_B * gamma / sigma_B)

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
from typing import List, Optional

import tensorflow as tf

from tf1_quantize import conditionals
from tf1_quantize import graph_edit
from tf1_quantize.names import CORRECTED_WEIGHTS, FOLDED_WEIGHTS, ONE_CONV_FOLD
from tf1_quantize import step_counter
from tf1_quantize.errors import UnsupportedGraphError
from tf1_quantize.patterns import BatchNormRecord, LayerRecord

FOLD_GRADIENT_NAME = 'FoldFusedBatchNormGrad'


@dataclasses.dataclass
class _Statistics:
    """The BN statistics the fold uses, means already centred."""
    mean: tf.Tensor
    variance: tf.Tensor
    moving_mean: Optional[tf.Tensor] = None
    moving_variance: Optional[tf.Tensor] = None


@dataclasses.dataclass
class _Corrections:
    scale: tf.Tensor
    recip: tf.Tensor
    offset: tf.Tensor


def validate(records: List[LayerRecord],
             standalone: List[BatchNormRecord], is_training: bool,
             one_conv: bool = False) -> None:
    """Checks that every batch norm can be rewritten correctly.

    Args:
        records: the layers found in the graph.
        standalone: the batch norms no layer folds (rewritten as affine ops).
        is_training: whether the training rewrite is requested.
        one_conv: whether training folds take the one-convolution form.

    Raises:
        UnsupportedGraphError: naming the op that cannot be rewritten and why.
    """
    for record in records:
        if record.batch_norm is not None:
            _validate_layer(record)
            _validate_batch_norm(
                record.batch_norm,
                uses_training_fold(record.batch_norm, is_training))
            if one_conv and is_training:
                _validate_one_conv_epsilon(record.batch_norm)
    for bn in standalone:
        _validate_batch_norm(bn, is_training)


def uses_training_fold(bn: BatchNormRecord, is_training: bool) -> bool:
    """Whether a layer's batch norm gets the training fold (batch
    statistics, corrections): in a training rewrite when the batch norm
    normalizes with batch statistics. A fused batch norm whose op says
    `is_training` gets it in an eval rewrite too, never frozen, as contrib
    1.15.3 and later did (an eval graph built with is_training=True);
    unfused ones follow the rewrite's mode.
    """
    return bn.is_training and (is_training or bn.fused)


def _validate_layer(record: LayerRecord) -> None:
    layer_output = (record.batch_to_space or record.layer).outputs[0]
    bn_output = record.batch_norm.output
    if not layer_output.shape.is_compatible_with(bn_output.shape):
        raise UnsupportedGraphError(
            "Batch norm '%s' outputs shape %s but layer '%s' outputs %s; the "
            'folded layer could not replace it.' %
            (record.batch_norm.op.name, bn_output.shape, record.layer.name,
             layer_output.shape))
    if _is_nchw(record.layer):
        raise UnsupportedGraphError(
            "Op '%s' uses data_format NCHW; only NHWC layers can be folded. "
            'Build the model with NHWC (channels last).' % record.layer.name)
    if record.layer.type == 'DepthwiseConv2dNative' and not (
            record.weights.shape.is_fully_defined()):
        raise UnsupportedGraphError(
            "Depthwise layer '%s' has weights of unknown shape %s; folding "
            'needs the [kh, kw, in, multiplier] shape.' %
            (record.layer.name, record.weights.shape))


def _validate_batch_norm(bn: BatchNormRecord, is_training: bool) -> None:
    name = bn.op.name
    if _is_nchw(bn.op):
        raise UnsupportedGraphError(
            "Batch norm '%s' uses data_format NCHW; only NHWC batch norms can "
            'be rewritten. Build the model with NHWC (channels last).' % name)
    if bn.fused and bn.is_training and 'exponential_avg_factor' in (
            bn.op.node_def.attr) and bn.op.get_attr(
                'exponential_avg_factor') != 1.0:
        raise UnsupportedGraphError(
            "Batch norm '%s' updates its moving statistics inside the op "
            '(exponential_avg_factor != 1); its batch statistics are not '
            'available to fold. Update the moving averages with separate '
            'ops, as tf.compat.v1 layers do in graph mode.' % name)
    if is_training and bn.is_training and bn.moving_variance is None:
        raise UnsupportedGraphError(
            "Batch norm '%s' normalizes with batch statistics but no "
            'moving-average update ((moving - batch) * decay) of its mean '
            'and variance was found, so its training fold (used in an eval '
            'rewrite too when a fused batch norm says is_training, as in '
            'contrib) cannot be built. Keep the update ops in the graph '
            '(UPDATE_OPS), or build the batch norm with is_training=False.'
            % name)


def _validate_one_conv_epsilon(bn: BatchNormRecord) -> None:
    """The one-convolution fold builds a FusedBatchNormV3, whose epsilon is
    an attribute: an unfused batch norm's epsilon must be a constant."""
    if bn.fused or not bn.is_training:
        return
    if tf.get_static_value(bn.epsilon) is None:
        raise UnsupportedGraphError(
            "Batch norm '%s' adds an epsilon computed at run time (%s); "
            'one_conv_fold needs a constant epsilon. Use a constant or the '
            'default two-convolution fold.' % (bn.op.name, bn.epsilon.name))


def _is_nchw(op: tf.Operation) -> bool:
    return (('data_format' in op.node_def.attr) and
            op.get_attr('data_format') in (b'NCHW', 'NCHW'))


def fold(graph: tf.Graph, records: List[LayerRecord], is_training: bool,
         freeze_bn_delay: Optional[int], one_conv: bool = False) -> None:
    """Folds the batch norm of each record into its layer, in place.

    Call `validate` first. Each folded record is updated to describe the new
    ops: `layer` becomes the `<layer>_Fold` clone, `weights` the `mul_fold`
    product and `bias_add` the `add_fold` op.

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
    stats = _statistics(graph, bn, training)
    multiplier, bias = _multiplier_and_bias(graph, bn, stats,
                                            names.bn_fold_scope)
    corrections = None
    if training:
        corrections = _corrections(graph, bn, stats, names.bn_fold_scope,
                                   freeze_bn_delay)
    weights = _folded_weights(graph, record, names, multiplier, corrections)
    output, layer, batch_to_space = _clone_layer(graph, record, weights,
                                                 names)
    with graph_edit.absolute_name_scope(graph, names.layer_scope):
        if corrections is not None:
            output = tf.multiply(corrections.recip, output,
                                 name='post_conv_mul')
            output = tf.raw_ops.Add(x=output, y=corrections.offset,
                                    name='correction_add')
        output = tf.raw_ops.Add(x=output, y=bias, name='add_fold')
    return weights, layer, batch_to_space, output


def _folded_weights(graph, record: LayerRecord, names, multiplier,
                    corrections: Optional[_Corrections]) -> tf.Tensor:
    """`w * gamma / sigma`, times `sigma_B / sigma_mv` in training."""
    weights = record.weights
    with graph_edit.absolute_name_scope(graph, names.bn_fold_scope):
        if corrections is not None:
            correction = _per_output_channel(corrections.scale, record,
                                             'correction_reshape')
        multiplier = _per_output_channel(multiplier, record, 'scale_reshape')
    with graph_edit.absolute_name_scope(graph, names.layer_scope):
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
        scale = _scale(bn.gamma, bn.moving_variance, bn.epsilon)
        scale = (tf.stop_gradient(scale, name='scale')
                 if freeze_bn_delay is None else
                 tf.identity(scale, name='scale'))
        multiplier = _per_output_channel(scale, record, 'scale_reshape')
    with graph_edit.absolute_name_scope(graph, names.layer_scope):
        weights = tf.multiply(record.weights, multiplier,
                              name=FOLDED_WEIGHTS)
    use_moving = _use_moving_average(graph, freeze_bn_delay)
    _freeze_moving_average(bn.mean_decay, use_moving, 'freeze_moving_mean')
    _freeze_moving_average(bn.variance_decay, use_moving, 'freeze_moving_var')
    moving_mean = _centred(graph, bn, bn.moving_mean, 'centred_moving_mean')
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
    output, mean, variance = tf.compat.v1.nn.fused_batch_norm(
        inputs, gamma, bn.beta, epsilon=_static_epsilon(bn),
        is_training=True, name='batch_norm')
    if x.shape.rank != 4:
        output = tf.reshape(output, tf.shape(x), name='batch_norm_output')
    if bn.pre_bias is not None:  # `x` lacks it; only the mean notices.
        mean = tf.add(mean, bn.pre_bias, name='mean_with_pre_bias')
    if not bn.fused:  # Output 2 carries Bessel's correction; undo it.
        n = _elements_per_channel(inputs, mean)
        variance = tf.multiply(variance, (n - 1.0) / n, name='biased_variance')
    return output, mean, variance


def _static_epsilon(bn: BatchNormRecord) -> float:
    if bn.fused:
        return bn.epsilon
    return float(tf.get_static_value(bn.epsilon))


def _scale(gamma, variance, epsilon) -> tf.Tensor:
    """`gamma / sqrt(variance + epsilon)` (without gamma when it is None)."""
    multiplier = tf.math.rsqrt(variance + epsilon)
    if gamma is not None:
        multiplier = tf.multiply(gamma, multiplier, name='mul')
    return multiplier


class _FoldNames:
    """Where the ops of one fold are created (contrib's naming, spec §2)."""

    def __init__(self, record: LayerRecord):
        bn = record.batch_norm
        self.fused = bn.fused
        self.layer = record.layer
        if bn.fused:
            self.layer_scope = record.scope
            self.bn_fold_scope = graph_edit.join_scope(record.scope,
                                                       'BatchNorm_Fold')
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
            return op.name + '_Fold'
        return graph_edit.join_scope(self.layer_scope,
                                     op.name.rpartition('/')[2] + '_Fold')


def _statistics(graph, bn: BatchNormRecord, training_fold: bool) -> _Statistics:
    variance = bn.variance
    if bn.fused and bn.is_training:
        variance = _undo_bessel_correction(graph, bn)
    stats = _Statistics(mean=bn.mean, variance=variance)
    if training_fold:
        stats.moving_mean = bn.moving_mean
        stats.moving_variance = bn.moving_variance
    _centre(graph, bn, stats)
    return stats


def _centre(graph, bn: BatchNormRecord, stats: _Statistics) -> None:
    """Shifts the means by a bias added before the batch norm (see the
    module docstring)."""
    stats.mean = _centred(graph, bn, stats.mean, 'centred_mean')
    if stats.moving_mean is not None:
        stats.moving_mean = _centred(graph, bn, stats.moving_mean,
                                     'centred_moving_mean')


def _centred(graph, bn: BatchNormRecord, mean: tf.Tensor,
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
        n = _elements_per_channel(bn.input, bn.mean)
        return tf.multiply(bn.variance, (n - 1.0) / n,
                           name='Undo_Bessel_Correction')


def _elements_per_channel(x: tf.Tensor, channel_vector: tf.Tensor):
    return tf.cast(tf.size(x), tf.float32) / tf.cast(tf.size(channel_vector),
                                                     tf.float32)


def _multiplier_and_bias(graph, bn: BatchNormRecord, stats: _Statistics,
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
            multiplier = _scale(bn.gamma, stats.variance, bn.epsilon)
        bias = tf.subtract(bn.beta, stats.mean * multiplier, name='bias')
    return multiplier, bias


def _corrections(graph, bn: BatchNormRecord, stats: _Statistics,
                 fold_scope: str, freeze_bn_delay) -> _Corrections:
    """The training-time correction factors (see the module docstring), in
    `<fold_scope>/batch_norm_correction`."""
    correction_scope = graph_edit.join_scope(fold_scope,
                                             'batch_norm_correction')
    with graph_edit.absolute_name_scope(graph, correction_scope):
        recip_sigma_mv = tf.math.rsqrt(stats.moving_variance + bn.epsilon)
        recip_sigma = tf.math.rsqrt(stats.variance + bn.epsilon)
        scale = tf.identity(tf.math.divide(recip_sigma_mv, recip_sigma,
                                           name='scale_compute'),
                            name='correction_scale')
        reciprocal = tf.math.reciprocal(scale, name='reciprocal_compute')
        gamma = bn.gamma if bn.gamma is not None else tf.ones_like(stats.mean)
        offset = tf.multiply(gamma, stats.mean * recip_sigma -
                             stats.moving_mean * recip_sigma_mv,
                             name='offset_compute')
        use_moving = _use_moving_average(graph, freeze_bn_delay)
        _freeze_moving_average(bn.mean_decay, use_moving, 'freeze_moving_mean')
        _freeze_moving_average(bn.variance_decay, use_moving,
                               'freeze_moving_var')
        recip = conditionals.choose(use_moving,
                                    lambda: _constant_like(reciprocal, 1.0),
                                    lambda: reciprocal,
                                    name='correction_recip')
        offset = conditionals.choose(use_moving, lambda: offset,
                                     lambda: _constant_like(offset, 0.0),
                                     name='correction_offset')
    return _Corrections(scale=scale, recip=recip, offset=offset)


def _constant_like(tensor: tf.Tensor, value: float) -> tf.Tensor:
    """A constant shaped like `tensor`; unlike `ones_like`/`zeros_like` it
    does not make the graph compute `tensor` when its shape is static."""
    if tensor.shape.is_fully_defined():
        return tf.fill(tensor.shape.as_list(), value)
    return tf.fill(tf.shape(tensor), value)


def _use_moving_average(graph, freeze_bn_delay):
    if freeze_bn_delay is None:
        return False
    step = step_counter.delay_step(graph)
    return tf.greater_equal(step, tf.constant(freeze_bn_delay, step.dtype),
                            name='use_moving_average')


def _freeze_moving_average(decay: tf.Tensor, use_moving, name: str) -> None:
    """After the freeze the moving-average update sees a decay of 0."""
    if isinstance(use_moving, bool):
        return
    readers = graph_edit.consumers(decay)
    frozen = conditionals.choose(use_moving, lambda: tf.zeros_like(decay),
                                 lambda: decay, name=name)
    graph_edit.reroute(frozen, decay, can_modify=readers)


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
    stats = _statistics(graph, bn, training)
    scope = graph_edit.join_scope(graph_edit.scope_of(bn.op), 'affine')
    with graph_edit.absolute_name_scope(graph, scope):
        mean, variance = stats.mean, stats.variance
        if training and freeze_bn_delay is not None:
            use_moving = _use_moving_average(graph, freeze_bn_delay)
            _freeze_moving_average(bn.mean_decay, use_moving,
                                   'freeze_moving_mean')
            _freeze_moving_average(bn.variance_decay, use_moving,
                                   'freeze_moving_var')
            mean = conditionals.choose(use_moving,
                                       lambda: stats.moving_mean,
                                       lambda: mean, name='mean')
            variance = conditionals.choose(use_moving,
                                           lambda: stats.moving_variance,
                                           lambda: variance, name='variance')
        multiplier = _scale(bn.gamma, variance, bn.epsilon)
        offset = tf.subtract(bn.beta, mean * multiplier, name='offset')
        # Only the multiply reads this copy, so its FakeQuant affects only it.
        multiplier = tf.identity(multiplier, name='multiplier')
        scaled = tf.multiply(bn.input, multiplier, name='scaled')
        output = tf.raw_ops.Add(x=scaled, y=offset, name='shifted')
    graph_edit.reroute(output, bn.output)
    return AffineBatchNorm(batch_norm=bn, scope=scope, multiplier=multiplier,
                           offset=offset, mul=scaled.op, add=output.op)


@tf.RegisterGradient(FOLD_GRADIENT_NAME)
def _fold_fused_batch_norm_grad(op, *grads):
    """Gradient of a folded fused BN through its batch mean and variance.

    After folding only outputs 1 (mean) and 2 (unbiased variance) are used;
    the op's own gradient ignores them. d mean / dx = 1 / n and
    d var / dx = 2 (x - mean) / (n - 1).
    """
    x, mean = op.inputs[0], op.outputs[1]
    grad_mean, grad_var = grads[1], grads[2]
    n = _elements_per_channel(x, mean)
    # Per-channel factors first: only (x - mean) * a + b touches all of x.
    offset = grad_mean / n if grad_mean is not None else 0.0
    # One element per channel: the variance is 0 whatever x is.
    factor = (tf.math.divide_no_nan(2.0 * grad_var, n - 1.0)
              if grad_var is not None else 0.0)
    grad_x = (x - mean) * factor + offset
    return [grad_x] + [None] * (len(op.inputs) - 1)


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
    stats = _statistics(graph, bn, training)
    multiplier, bias = _multiplier_and_bias(graph, bn, stats, scope)
    if not training:
        return ChannelTerms(scale=multiplier, offset=bias)
    corrections = _corrections(graph, bn, stats, scope, freeze_bn_delay)
    with graph_edit.absolute_name_scope(graph, scope):
        scale = _scale(bn.gamma, stats.moving_variance, bn.epsilon)
        offset = tf.add(bias, corrections.offset, name='offset')
    return ChannelTerms(scale=scale, offset=offset,
                        correction=corrections.recip)
