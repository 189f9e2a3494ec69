"""The records of the layers and batch norms a rewrite works on.

`find_layers` turns the matches of the declarative patterns (`patterns`)
into `LayerRecord`s once per rewrite, and `find_standalone_batch_norms`
describes the batch norms no layer claims. Folding, quantization and the
checks all work from these records and never match the graph themselves.
"""

from __future__ import annotations

import dataclasses
from typing import List, Optional, Sequence, Set

import tensorflow as tf

from tf1_quantize import graph_edit
from tf1_quantize import names
from tf1_quantize import patterns


@dataclasses.dataclass
class BatchNormRecord:
    """One batch norm, fused or not, in a form the folding math can use.

    Attributes:
        op: the FusedBatchNorm* op, or the final add of an unfused batch norm.
        fused: whether `op` is a FusedBatchNorm* op.
        output: the tensor whose consumers the fold reroutes.
        gamma: the scale tensor, or None for a batch norm without scale.
        beta: the offset tensor.
        epsilon: a Python float (fused) or a tensor (unfused).
        mean: the mean the batch norm consumes (batch mean in training mode).
        variance: the variance it consumes; for a training-mode fused op this is
            output 2, which carries Bessel's correction (see folding).
        is_training: whether it normalizes with batch statistics.
        mean_update, variance_update: the `moving - batch` Sub ops of the
            moving-average updates (input 0 reads the moving statistic).
        mean_decay, variance_decay: the `1 - momentum` tensors of those updates.
        multiplier, bias: for unfused batch norms, the existing `gamma/sigma` and
            `beta - mean * gamma / sigma` tensors (None for fused ones).
        scale_mul: for unfused batch norms, the `x * multiplier` op.
        pre_bias: a per-channel bias added between the layer and the batch norm.
    """
    op: tf.Operation
    fused: bool
    output: tf.Tensor
    gamma: Optional[tf.Tensor]
    beta: tf.Tensor
    epsilon: object
    mean: tf.Tensor
    variance: tf.Tensor
    is_training: bool
    mean_update: Optional[tf.Operation] = None
    variance_update: Optional[tf.Operation] = None
    mean_decay: Optional[tf.Tensor] = None
    variance_decay: Optional[tf.Tensor] = None
    multiplier: Optional[tf.Tensor] = None
    bias: Optional[tf.Tensor] = None
    scale_mul: Optional[tf.Operation] = None
    pre_bias: Optional[tf.Tensor] = None

    @property
    def input(self) -> tf.Tensor:
        """The tensor normalized, as the graph has it now (an earlier rewrite
        may have rerouted it)."""
        return (self.op.inputs[0] if self.fused else self.scale_mul.inputs[0])

    @property
    def moving_mean(self) -> Optional[tf.Tensor]:
        return self.mean_update.inputs[0] if self.mean_update else None

    @property
    def moving_variance(self) -> Optional[tf.Tensor]:
        return self.variance_update.inputs[0] if self.variance_update else None


@dataclasses.dataclass
class LayerRecord:
    """One Conv2D / DepthwiseConv2dNative / MatMul layer and what surrounds it.

    Folding updates `layer`, `weights`, `bias_add` and `batch_to_space` to the
    folded ops and clears `batch_norm`; quantization then reads the record.

    Attributes:
        layer: the layer op.
        weights: the weight tensor the layer reads (a variable read or a Mul).
        batch_to_space: the BatchToSpaceND after an atrous layer, if any.
        batch_norm: the batch norm to fold, if any.
        bias_add: the op adding the bias (BiasAdd, or `add_fold` once folded).
        bypass: a residual Add before the activation.
        activation: Relu / Relu6 / Identity after the layer.
        post_activation_bypass: an Add after the activation.
        is_separable_inner: the layer feeds another layer directly.
    """
    layer: tf.Operation
    weights: tf.Tensor
    batch_to_space: Optional[tf.Operation] = None
    batch_norm: Optional[BatchNormRecord] = None
    bias_add: Optional[tf.Operation] = None
    bypass: Optional[tf.Operation] = None
    activation: Optional[tf.Operation] = None
    post_activation_bypass: Optional[tf.Operation] = None
    is_separable_inner: bool = False

    @property
    def scope(self) -> str:
        """The name scope of the layer op (contrib's 'context')."""
        return graph_edit.scope_of(self.layer)

    @property
    def output_op(self) -> tf.Operation:
        """The last op of the layer before any bypass or activation."""
        if self.bias_add is not None:
            return self.bias_add
        if self.batch_norm is not None:
            return self.batch_norm.output.op
        return self.batch_to_space or self.layer


def find_layers(graph: tf.Graph, bare_layers: bool = False
                ) -> List[LayerRecord]:
    """Finds every quantizable layer of `graph`, once, in graph order.

    Batch norms whose output nobody reads (already folded) are not part of any
    record, which is what makes a second rewrite a no-op.

    Args:
        graph: the graph to search.
        bare_layers: also record layers that read variable weights and have
            no bias add, batch norm or activation after them (contrib left
            them float).

    Returns:
        A list of `LayerRecord`s.
    """
    ops = graph.get_operations()
    bn_inputs = _identities_before_batch_norms(ops)
    records = []
    seen: Set[tf.Operation] = set()
    for matcher in patterns.LAYER_MATCHERS:
        for match in matcher.match_ops(ops):
            layer = match.get_op('layer')
            if layer in seen or _feeds_batch_norm(match, bn_inputs):
                continue
            record = _record_from_match(match)
            if record is None:
                continue
            seen.add(layer)
            records.append(record)
    if bare_layers:
        records += [LayerRecord(layer=m.get_op('layer'),
                                weights=m.get_op('layer').inputs[1])
                    for m in patterns.BARE_LAYER_MATCHER.match_ops(ops)
                    if _is_bare_layer(m.get_op('layer'), seen)]
    records.sort(key=lambda r: r.layer._id)  # pylint: disable=protected-access
    return records


def find_standalone_batch_norms(
        graph: tf.Graph,
        records: Sequence[LayerRecord]) -> List[BatchNormRecord]:
    """Finds the live batch norms that no layer record folds.

    Args:
        graph: the graph to search.
        records: the layers found by `find_layers`.

    Returns:
        A `BatchNormRecord` per batch norm, in graph order.
    """
    claimed = {r.batch_norm.op for r in records if r.batch_norm is not None}
    claimed.update(match.get_op('one_conv_bn')
                   for match in
                   patterns.ONE_CONV_BN_MATCHER.match_graph(graph))
    found = []
    for match in patterns.STANDALONE_BN_MATCHER.match_graph(graph):
        if (match.get_op('fused_bn') or match.get_op('unfused_bn')) in claimed:
            continue
        record = batch_norm_record(match)
        if not _is_dead(record.output):
            found.append(record)
    return found


def _is_dead(tensor: tf.Tensor) -> bool:
    """Nothing uses `tensor`, except reshapes nothing uses (the output Reshape
    of a fully connected batch norm folded earlier)."""
    pending = [tensor]
    while pending:
        for op in graph_edit.consumers(pending.pop()):
            if op.type not in names.VALUE_PRESERVING_TYPES:
                return False
            pending.append(op.outputs[0])
    return True


def _identities_before_batch_norms(ops: Sequence[tf.Operation]) -> Set[str]:
    """Outputs of Identity ops between a layer and a batch norm: in use, or
    folded by an earlier rewrite and read by nothing else (the left-over
    original layer is then not a layer with an Identity activation)."""
    names = set()
    for match in patterns.BATCH_NORM_MATCHER.match_ops(ops):
        bn = match.get_op('fused_bn') or match.get_op('unfused_bn')
        identity = match.get_op('bn_input_identity')
        if identity is None:
            continue
        own_ops = {bn, match.get_op('bn_scale_mul')}
        if (graph_edit.op_consumers(bn)
                or set(graph_edit.op_consumers(identity)) <= own_ops):
            names.add(identity.outputs[0].name)
    return names


def _feeds_batch_norm(match, bn_inputs) -> bool:
    """An Identity between a layer and its batch norm is not an activation."""
    activation = match.get_op('activation')
    return (activation is not None and activation.type == 'Identity'
            and activation.outputs[0].name in bn_inputs)


def _record_from_match(match) -> Optional[LayerRecord]:
    """Builds the record of one match, or None for a dead batch norm or the
    original of a layer an earlier rewrite folded."""
    if (_is_second_layer_of_a_sum(match)
            or _was_folded(match.get_op('layer'))):
        return None
    batch_norm = None
    if match.get_op('fused_bn') is not None or match.get_op('unfused_bn'):
        if _is_partial_fully_connected_match(match):
            return None
        batch_norm = batch_norm_record(match)
        if not graph_edit.consumers(batch_norm.output):
            return None
    activation = match.get_op('activation')
    if match.get_op('sep_conv') is not None:
        activation = None
    # A one-convolution fold's layer reads the folded weights rescaled.
    folded_weight = match.get_op('folded_weight')
    return LayerRecord(
        layer=match.get_op('layer'),
        weights=(folded_weight.outputs[0] if folded_weight is not None else
                 match.get_op('layer').inputs[1]),
        batch_to_space=match.get_op('batch_to_space'),
        batch_norm=batch_norm,
        bias_add=_folded_output(match),
        bypass=match.get_op('bypass'),
        activation=activation,
        post_activation_bypass=match.get_op('post_activation_bypass'),
        is_separable_inner=match.get_op('sep_conv') is not None)


def _is_bare_layer(layer: tf.Operation, recorded) -> bool:
    """A layer no pattern recorded (often a graph output nothing reads), and
    not a folded layer's original."""
    return (layer not in recorded and not graph_edit.is_skipped(layer)
            and not _was_folded(layer))


def _was_folded(layer: tf.Operation) -> bool:
    """An earlier fold left the layer in place (in training its output still
    gives the batch statistics) and cloned it to read its folded weights."""
    return any(op.type == 'Mul' and names.base_name(op.name) in (
        names.FOLDED_WEIGHTS, names.CORRECTED_WEIGHTS)
               for op in layer.inputs[1].consumers())


def _is_second_layer_of_a_sum(match) -> bool:
    """An Add of two layer outputs is the bias add of its first input's
    layer only. Otherwise, once a rewrite quantized that layer (whose
    weights then no longer match), a second rewrite would take the Add for
    the other layer's bias add and quantize that layer too."""
    add = match.get_op('bias_add')
    if add is None or add.type == 'BiasAdd':
        return False
    layer_output = (match.get_op('batch_to_space') or
                    match.get_op('layer')).outputs[0]
    first = add.inputs[0].op
    if first.type == 'BatchToSpaceND':
        first = first.inputs[0].op
    return (not graph_edit.same_tensor(add.inputs[0], layer_output)
            and first.type in names.LAYER_TYPES)


def _folded_output(match) -> Optional[tf.Operation]:
    """The bias add, or the last op of a folded batch norm."""
    for name in ('bias_add', 'folded_bias_add', 'one_conv_merge',
                 'one_conv_reshape', 'one_conv_bn'):
        if match.get_op(name) is not None:
            return match.get_op(name)
    return None


def _is_partial_fully_connected_match(match) -> bool:
    """A fused BN after a MatMul works on a 4-D reshape of its output; the
    match must include the Reshape back to 2-D (found from a later root)."""
    return (match.get_op('fused_bn') is not None
            and match.get_op('layer').type == 'MatMul'
            and match.get_op('bn_output_reshape') is None)


def batch_norm_record(match) -> BatchNormRecord:
    """Describes the batch norm of a match in one form for both BN kinds."""
    fused = match.get_op('fused_bn')
    record = (_fused_record(match, fused)
              if fused is not None else _unfused_record(match))
    if record.is_training:
        record.mean_update, record.mean_decay = _moving_average_update(
            _batch_statistic(record, 1))
        record.variance_update, record.variance_decay = (
            _moving_average_update(_batch_statistic(record, 2)))
    pre_bias = match.get_op('pre_bn_bias_add')
    record.pre_bias = pre_bias.inputs[1] if pre_bias is not None else None
    return record


def _fused_record(match, bn: tf.Operation) -> BatchNormRecord:
    reshape = match.get_op('bn_output_reshape')
    is_training = bn.get_attr('is_training')
    return BatchNormRecord(
        op=bn,
        fused=True,
        output=reshape.outputs[0] if reshape is not None else bn.outputs[0],
        gamma=bn.inputs[1],
        beta=bn.inputs[2],
        epsilon=bn.get_attr('epsilon'),
        mean=bn.outputs[1] if is_training else bn.inputs[3],
        variance=bn.outputs[2] if is_training else bn.inputs[4],
        is_training=is_training)


def _unfused_record(match) -> BatchNormRecord:
    scale_mul = match.get_op('bn_scale_mul')
    var_eps = match.get_op('bn_var_eps')
    bias = match.get_op('bn_bias')
    scaled = match.get_op('bn_inv_scaled')
    mean = bias.inputs[1].op.inputs[0]
    return BatchNormRecord(
        op=match.get_op('unfused_bn'),
        fused=False,
        output=match.get_op('unfused_bn').outputs[0],
        gamma=scaled.inputs[1] if scaled is not None else None,
        beta=bias.inputs[0],
        epsilon=var_eps.inputs[1],
        mean=mean,
        variance=var_eps.inputs[0],
        is_training=_moving_average_update(mean)[0] is not None
        or not _is_variable_read(mean),
        multiplier=scale_mul.inputs[1],
        bias=bias.outputs[0],
        scale_mul=scale_mul)


def _batch_statistic(record: BatchNormRecord, index: int) -> tf.Tensor:
    """The batch mean (1) or variance (2) tensor the moving averages read."""
    if record.fused:
        return record.op.outputs[index]
    return record.mean if index == 1 else record.variance


def _is_variable_read(tensor: tf.Tensor) -> bool:
    return tensor.op.type in names.STORED_VALUE_TYPES


def _moving_average_update(statistic: tf.Tensor):
    """Finds `(moving - statistic) * decay`, the moving-average update step.

    Returns:
        (the Sub op, the decay tensor), or (None, None).
    """
    for sub in statistic.consumers():
        if sub.type != 'Sub' or not graph_edit.same_tensor(
                sub.inputs[1], statistic):
            continue
        for mul in sub.outputs[0].consumers():
            if mul.type == 'Mul':
                other = [
                    t for t in mul.inputs
                    if not graph_edit.same_tensor(t, sub.outputs[0])
                ]
                if other:
                    return sub, other[0]
    return None, None
