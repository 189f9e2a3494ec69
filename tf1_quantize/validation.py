"""The checks a rewrite passes before it changes anything.

`check_plan` sees the whole plan (every layer record and every batch norm
the rewrite will touch) and raises on anything the mutation could not
handle, so an error leaves the graph exactly as it was. The mutation code
in `folding`, `forward_folding` and `quantize` assumes a checked plan.
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import List, Optional, Sequence

import tensorflow as tf

from tf1_quantize import folding
from tf1_quantize import forward_folding
from tf1_quantize import names
from tf1_quantize import records as records_lib
from tf1_quantize import step_counter
from tf1_quantize.errors import QuantizeError, UnsupportedGraphError

_MIN_BITS, _MAX_BITS = 2, 16
# The public names of strategy classes named otherwise.
_STRATEGY_NAMES = {
    'CollectiveAllReduceStrategy': 'MultiWorkerMirroredStrategy',
    'CollectiveAllReduceStrategyV1': 'MultiWorkerMirroredStrategy',
}


@dataclasses.dataclass(frozen=True)
class Plan:
    """What one rewrite will change.

    Attributes:
        mode: `names.TRAINING` or `names.EVAL`.
        quantize: whether FakeQuants are inserted (False: fold only).
        records: the layers found.
        forward: the batch norms folded forward.
        standalone: the batch norms rewritten as affine ops.
        one_conv_fold: whether training folds take the one-convolution form.
        per_channel_weights: whether Conv2D weights get per-channel ranges.
    """
    mode: str
    quantize: bool
    records: List[records_lib.LayerRecord]
    forward: List[forward_folding.ForwardFoldRecord]
    standalone: List[records_lib.BatchNormRecord]
    one_conv_fold: bool = False
    per_channel_weights: bool = False


def check_arguments(weight_bits, activation_bits, quant_delay,
                    freeze_bn_delay, scope, delay_counter) -> None:
    """Raises `ValueError` for an argument outside what the rewrite takes."""
    for name, bits in (('weight_bits', weight_bits),
                       ('activation_bits', activation_bits)):
        if not _is_int(bits) or not _MIN_BITS <= bits <= _MAX_BITS:
            raise ValueError('%s must be an integer from %d to %d, got %r.' %
                             (name, _MIN_BITS, _MAX_BITS, bits))
    for name, delay in (('quant_delay', quant_delay),
                        ('freeze_bn_delay', freeze_bn_delay)):
        if delay is not None and (not _is_int(delay) or delay < 0):
            raise ValueError('%s must be None or an integer >= 0, got %r.' %
                             (name, delay))
    if scope is not None and not isinstance(scope, str):
        raise ValueError('scope must be a string or None, got %r.' % (scope,))
    if delay_counter not in step_counter.DELAY_COUNTERS:
        raise ValueError('delay_counter must be one of %s, got %r.' %
                         (', '.join(map(repr, step_counter.DELAY_COUNTERS)),
                          delay_counter))


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_graph(graph: tf.Graph, quantize: bool) -> None:
    """The checks that need no layer records: run before matching."""
    if graph.finalized:
        raise QuantizeError('The graph is finalized; rewrite it before '
                            'creating a MonitoredSession / finalizing it.')
    _check_no_distribution_strategy(graph)
    if quantize:
        found = ({op.type for op in graph.get_operations()}
                 & names.TRAINING_OP_TYPES)
        if found:
            raise QuantizeError(
                'Training op found in graph, exiting %s. Call the rewrite '
                'after building the forward pass and before building the '
                'optimizer.' % sorted(found))


def check_delay_counter(graph: tf.Graph, delay_counter: str, quant_delay,
                        freeze_bn_delay) -> None:
    """Delays counted in global steps need the graph's global step."""
    if (delay_counter == step_counter.GLOBAL_STEP
            and (quant_delay or freeze_bn_delay is not None)
            and tf.compat.v1.train.get_global_step(graph) is None):
        raise QuantizeError(
            "delay_counter='global_step' compares quant_delay and "
            'freeze_bn_delay with the global step, and the graph has none. '
            'Create it before the rewrite '
            '(tf.compat.v1.train.get_or_create_global_step()) and pass it '
            'to the optimizer.')


def _check_no_distribution_strategy(graph: tf.Graph) -> None:
    """A tf.distribute strategy (MirroredStrategy and the like) builds one
    copy of the model per replica with variables the rewrite cannot create
    or update consistently: refused, with what works instead."""
    with graph.as_default():
        strategy = (tf.distribute.get_strategy()
                    if tf.distribute.has_strategy() else None)
    if strategy is not None:
        name = type(strategy).__name__
        where = 'inside the scope of a %s' % _STRATEGY_NAMES.get(name, name)
    else:
        distributed = [
            v for v in graph.get_collection(
                tf.compat.v1.GraphKeys.GLOBAL_VARIABLES)
            if isinstance(v, tf.distribute.DistributedValues)]
        if not distributed:
            return
        where = ("on a graph built with a tf.distribute strategy (variable "
                 "'%s' is a %s)" % (distributed[0].name,
                                    type(distributed[0]).__name__))
    raise UnsupportedGraphError(
        'The rewrite was called %s. tf.distribute strategies (Mirrored'
        'Strategy, MultiWorkerMirroredStrategy, ...) are not supported: '
        'their per-replica variables and aggregated updates cannot be '
        'created consistently by a graph rewrite. What works: one device '
        'per process, with between-graph replication for several '
        '(tf.compat.v1.train.replica_device_setter and '
        'MonitoredTrainingSession, optionally with SyncReplicasOptimizer; '
        'see the README, "Distributed training").' % where)


def check_plan(graph: tf.Graph, plan: Plan) -> None:
    """Raises if any part of `plan` cannot be carried out correctly.

    Raises:
        QuantizeError: the graph was rewritten before in the other mode.
        UnsupportedGraphError: naming the op that cannot be rewritten, why,
            and what to do instead.
    """
    _check_previous_rewrite(graph, plan.mode)
    _check_conditional_layers(graph)
    _check_outside_control_flow(
        [r.layer for r in plan.records] +
        [r.batch_norm.op for r in plan.records if r.batch_norm is not None] +
        [f.batch_norm.op for f in plan.forward] +
        [bn.op for bn in plan.standalone])
    _check_batch_norms(plan.records,
                     [f.batch_norm for f in plan.forward] + plan.standalone,
                     plan.mode == names.TRAINING, plan.one_conv_fold)
    _check_float32(plan)
    if plan.quantize and plan.per_channel_weights:
        _check_per_channel_weights(plan.records)


def _check_float32(plan: Plan) -> None:
    computed = [(r.layer, r.weights) for r in plan.records]
    computed += [(r.layer, r.layer.outputs[0]) for r in plan.records]
    computed += [(bn.op, bn.input) for bn in plan.standalone]
    computed += [(f.batch_norm.op, f.batch_norm.input) for f in plan.forward]
    for op, tensor in computed:
        if tensor.dtype != tf.float32:
            raise UnsupportedGraphError(
                "Op '%s' works on %s tensor '%s'; FakeQuant ops and the "
                'folding math need float32. Quantize the float32 model.' %
                (op.name, tensor.dtype.name, tensor.name))


def _check_per_channel_weights(records) -> None:
    for record in records:
        shape = record.weights.shape
        if record.layer.type == 'Conv2D' and (shape.rank != 4
                                              or shape[-1] is None):
            raise UnsupportedGraphError(
                "Layer '%s' has weights of shape %s; per_channel_weights "
                'needs 4-D Conv2D weights with a known output channel '
                'count. Give the weights a static shape or quantize per '
                'tensor.' % (record.layer.name, record.weights.shape))


def previous_rewrite(graph: tf.Graph) -> Optional[str]:
    """The mode of an earlier rewrite of `graph`: `names.TRAINING`,
    `names.EVAL`, or None.

    Read from the collection each rewrite records its mode in; a graph
    imported from a GraphDef (no collections) is judged by its ops: range
    updates mean training, FakeQuants of the rewrite without them eval.
    """
    recorded = graph.get_collection(names.REWRITE_COLLECTION)
    if recorded:
        return recorded[-1]
    ours = False
    for op in graph.get_operations():
        # Cheap tests first: this runs over every op of the graph.
        if (op.name.rpartition('/')[2].startswith('Assign')
                and names.base_name(op.name) in names.RANGE_UPDATES):
            return names.TRAINING
        ours = ours or (op.type in names.FAKE_QUANT_TYPES
                        and names.is_quantizer_op(op))
    return names.EVAL if ours else None


def record_rewrite(graph: tf.Graph, mode: str) -> None:
    """Remembers that `graph` was rewritten in `mode` (see
    `previous_rewrite`)."""
    if graph.get_collection(names.REWRITE_COLLECTION) != [mode]:
        graph.clear_collection(names.REWRITE_COLLECTION)
        graph.add_to_collection(names.REWRITE_COLLECTION, mode)


def _check_previous_rewrite(graph: tf.Graph, mode: str) -> None:
    previous = previous_rewrite(graph)
    if previous is None or previous == mode:
        return
    wanted = ('create_training_graph' if mode == names.TRAINING else
              'create_eval_graph')
    raise QuantizeError(
        'The graph was already rewritten for %s; %s needs a graph that was '
        'not. Build the model again in a new graph (with is_training=%s) '
        'and rewrite that one; restore the training checkpoint into it.' %
        (previous, wanted, mode == names.TRAINING))


def _check_conditional_layers(graph: tf.Graph) -> None:
    """A layer feeding a conditional usually means a batch norm whose
    `training` flag is a tensor: both branches exist and neither can be
    folded."""
    for op in graph.get_operations():
        if op.type not in names.LAYER_TYPES:
            continue
        for reader in _layer_readers(op):
            if (reader.type in names.CONDITIONAL_TYPES
                    and not names.is_own_conditional(reader.name)):
                raise UnsupportedGraphError(
                    "Layer op '%s' feeds the conditional '%s' (%s), e.g. a "
                    'batch norm whose training flag is a tensor. Build the '
                    'training graph with training=True and the eval graph '
                    'with training=False (Python bools).' %
                    (op.name, reader.name, reader.type))


def _check_outside_control_flow(ops: Sequence[tf.Operation]) -> None:
    """TF1 while loops and conds keep their ops in a control-flow context;
    ops built outside it cannot read their outputs. A one-convolution fold's
    layer is inside the fold's own cond; nothing is added next to it."""
    for op in ops:
        context = op._get_control_flow_context()  # pylint: disable=protected-access
        if context is not None and not names.is_own_conditional(
                context.name):
            raise UnsupportedGraphError(
                "Op '%s' is inside a %s (TF1 control flow); the rewrite "
                'cannot add ops to it. Build the layers outside while loops '
                'and conditionals.' % (op.name, type(context).__name__))


def _layer_readers(op: tf.Operation):
    """Readers of a layer output, looking through Identity and BiasAdd."""
    readers = list(op.outputs[0].consumers())
    for reader in list(readers):
        if reader.type in ('Identity', 'BiasAdd'):
            readers.extend(reader.outputs[0].consumers())
    return readers


def _check_batch_norms(records: List[records_lib.LayerRecord],
                       standalone: List[records_lib.BatchNormRecord],
                       is_training: bool, one_conv: bool = False) -> None:
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
                folding.uses_training_fold(record.batch_norm, is_training))
            if one_conv and is_training:
                _validate_one_conv_epsilon(record.batch_norm)
    for bn in standalone:
        _validate_batch_norm(bn, is_training)


def _validate_layer(record: records_lib.LayerRecord) -> None:
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


def _validate_batch_norm(bn: records_lib.BatchNormRecord,
                         is_training: bool) -> None:
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


def _validate_one_conv_epsilon(bn: records_lib.BatchNormRecord) -> None:
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
