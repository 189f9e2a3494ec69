"""The public rewrite functions, drop-in for `tf.contrib.quantize`.

Every function validates its arguments and the whole graph before it changes
anything, so an error leaves the graph exactly as it was.
"""

from __future__ import annotations

import numbers
import weakref
from typing import Optional

import tensorflow as tf
from absl import logging

from tf1_quantize import folding
from tf1_quantize import forward_folding
from tf1_quantize import patterns
from tf1_quantize import quantize
from tf1_quantize import report as report_lib
from tf1_quantize.errors import QuantizeError, UnsupportedGraphError

_OPTIMIZERS = ('Adagrad', 'AdagradDA', 'Adam', 'AddSign', 'CenteredRMSProp',
               'Ftrl', 'FtrlV2', 'GradientDescent', 'Momentum', 'PowerSign',
               'ProximalAdagrad', 'ProximalGradientDescent', 'RMSProp')
_SPARSE_OPTIMIZERS = ('Adadelta', 'Adagrad', 'AdagradDA', 'CenteredRMSProp',
                      'Ftrl', 'FtrlV2', 'Momentum', 'ProximalAdagrad',
                      'ProximalGradientDescent', 'RMSProp')
# The optimizer-apply op types whose presence means the rewrite came too late
# (the same 47 types contrib checked).
TRAINING_OP_TYPES = frozenset(
    ['Apply' + o for o in _OPTIMIZERS] +
    ['ResourceApply' + o for o in ('Adadelta',) + _OPTIMIZERS] +
    ['ResourceSparseApply' + o for o in _SPARSE_OPTIMIZERS] +
    ['SparseApply' + o for o in _SPARSE_OPTIMIZERS])
_CONDITIONAL_TYPES = ('If', 'StatelessIf', 'Switch')
# Name scopes of the conditionals a rewrite builds (quant_delay, freeze).
_OWN_CONDITIONALS = ('delayed_quant/', 'one_conv_fold/')
_MIN_BITS, _MAX_BITS = 2, 16
_LAST_REPORTS: 'weakref.WeakKeyDictionary[tf.Graph, report_lib.RewriteReport]' = (
    weakref.WeakKeyDictionary())


def create_training_graph(input_graph: Optional[tf.Graph] = None,
                          quant_delay: int = 0) -> None:
    """Rewrites a training graph for quantization-aware training, in place.

    Folds batch norms (with batch-statistics corrections) and inserts
    FakeQuant ops on weights and activations. Call it after building the
    forward pass and loss, before building the optimizer.

    Args:
        input_graph: the graph to rewrite; the default graph if None.
        quant_delay: number of steps (of the private `fake_quantization_step`
            counter) after which quantized values are used; ranges are
            learned from the start.

    Raises:
        TypeError: if `input_graph` is not a `tf.Graph`.
        ValueError: if the graph already holds optimizer ops, is finalized,
            or holds a structure the rewrite cannot handle, or an argument is
            invalid.
    """
    _rewrite(input_graph, is_training=True, quant_delay=quant_delay)


def create_eval_graph(input_graph: Optional[tf.Graph] = None) -> None:
    """Rewrites an eval graph to match what quantized training learned.

    Folds batch norms with the statistics they consume and inserts FakeQuant
    ops that read the learned ranges (restore them from the training
    checkpoint). The result converts to an integer TFLite model.

    Args:
        input_graph: the graph to rewrite; the default graph if None.

    Raises:
        TypeError: if `input_graph` is not a `tf.Graph`.
        ValueError: as `create_training_graph`.
    """
    _rewrite(input_graph, is_training=False)


def experimental_create_training_graph(input_graph: Optional[tf.Graph] = None,
                                       weight_bits: int = 8,
                                       activation_bits: int = 8,
                                       symmetric: bool = False,
                                       quant_delay: int = 0,
                                       freeze_bn_delay: Optional[int] = None,
                                       scope: Optional[str] = None,
                                       *,
                                       per_channel_weights: bool = False,
                                       one_conv_fold: bool = False) -> None:
    """`create_training_graph` with every parameter exposed.

    Args:
        input_graph: the graph to rewrite; the default graph if None.
        weight_bits: bits of weight quantization, 2 to 16.
        activation_bits: bits of activation quantization, 2 to 16.
        symmetric: quantize with symmetric ranges (needed for int8 TFLite).
        quant_delay: steps after which quantized values are used.
        freeze_bn_delay: steps after which batch norms use their moving
            statistics and stop updating them; None never freezes.
        scope: only quantize ops under this name scope (folding is global).
        per_channel_weights: quantize Conv2D weights with one symmetric
            range per output channel (TFLite's int8 per-channel kernels); not
            in contrib, off by default. Other layers keep per-tensor ranges.
        one_conv_fold: fold training batch norms with one convolution per
            layer (batch statistics from the folded convolution's output)
            instead of contrib's two; not in contrib, off by default.

    Raises:
        TypeError: if `input_graph` is not a `tf.Graph`.
        ValueError: as `create_training_graph`.
    """
    _rewrite(input_graph, is_training=True, weight_bits=weight_bits,
             activation_bits=activation_bits, symmetric=symmetric,
             quant_delay=quant_delay, freeze_bn_delay=freeze_bn_delay,
             scope=scope, per_channel_weights=per_channel_weights,
             one_conv_fold=one_conv_fold)


def experimental_create_eval_graph(input_graph: Optional[tf.Graph] = None,
                                   weight_bits: int = 8,
                                   activation_bits: int = 8,
                                   symmetric: bool = False,
                                   quant_delay: Optional[int] = None,
                                   scope: Optional[str] = None,
                                   *,
                                   per_channel_weights: bool = False) -> None:
    """`create_eval_graph` with every parameter exposed.

    Args:
        input_graph: the graph to rewrite; the default graph if None.
        weight_bits: bits of weight quantization, 2 to 16.
        activation_bits: bits of activation quantization, 2 to 16.
        symmetric: quantize with symmetric ranges.
        quant_delay: if set, the eval graph also switches to quantized values
            only after this many steps.
        scope: only quantize ops under this name scope (folding is global).
        per_channel_weights: as for `experimental_create_training_graph`;
            must match the training graph (the range variables differ).

    Raises:
        TypeError: if `input_graph` is not a `tf.Graph`.
        ValueError: as `create_training_graph`.
    """
    _rewrite(input_graph, is_training=False, weight_bits=weight_bits,
             activation_bits=activation_bits, symmetric=symmetric,
             quant_delay=quant_delay, scope=scope,
             per_channel_weights=per_channel_weights)


def fold_batch_norms(graph: Optional[tf.Graph] = None,
                     is_training: bool = True,
                     freeze_bn_delay: Optional[int] = None,
                     *,
                     one_conv_fold: bool = False) -> report_lib.RewriteReport:
    """Folds every batch norm into the layer before it, without quantizing.

    A batch norm that follows no layer is folded forward into the layer
    after it where that is exact (`patterns.find_forward_folds`), and left
    as it is otherwise.

    Args:
        graph: the graph to rewrite in place; the default graph if None.
        is_training: build the training fold (batch-statistics corrections)
            rather than the eval fold.
        freeze_bn_delay: steps after which the training fold switches to the
            moving statistics; None never switches.
        one_conv_fold: see `experimental_create_training_graph`.

    Returns:
        A `RewriteReport` of what was folded.

    Raises:
        TypeError: if `graph` is not a `tf.Graph`.
        ValueError: if the graph is finalized or a batch norm cannot be folded.
    """
    return _rewrite(graph, is_training=is_training,
                    freeze_bn_delay=freeze_bn_delay,
                    one_conv_fold=one_conv_fold, quantize_layers=False)


def _rewrite(input_graph, *, is_training, weight_bits=8, activation_bits=8,
             symmetric=False, quant_delay=None, freeze_bn_delay=None,
             scope=None, per_channel_weights=False, one_conv_fold=False,
             quantize_layers=True) -> report_lib.RewriteReport:
    graph = _resolve_graph(input_graph)
    _check_arguments(weight_bits, activation_bits, quant_delay,
                     freeze_bn_delay, scope)
    if quantize_layers:
        _check_for_training_ops(graph)
    records = patterns.find_layers(graph)
    forward, standalone = _split_standalone(graph, records, quantize_layers)
    _check_graph(graph, records,
                 [f.batch_norm for f in forward] + standalone, is_training,
                 bool(one_conv_fold))
    folded = [r.layer.name for r in records if r.batch_norm is not None]
    layers = [r.layer.name for r in records]
    with graph.as_default():
        folding.fold(graph, records, is_training, freeze_bn_delay,
                     one_conv=bool(one_conv_fold))
        for fold in forward:
            forward_folding.fold_forward(graph, fold, is_training,
                                         freeze_bn_delay)
        affines = [
            folding.rewrite_as_affine(graph, bn, is_training, freeze_bn_delay)
            for bn in standalone
        ]
        inserted = []
        if quantize_layers:
            config = quantize.QuantizeConfig(
                is_training=is_training, weight_bits=weight_bits,
                activation_bits=activation_bits, symmetric=symmetric,
                quant_delay=quant_delay, scope=scope,
                per_channel_weights=bool(per_channel_weights))
            inserted = quantize.quantize_layers(graph, records, affines,
                                                config)
    result = report_lib.RewriteReport(
        is_training=is_training, layers=layers, folded=folded,
        affine=[bn.op.name for bn in standalone], fake_quants=inserted,
        float_ops=report_lib.find_float_layers(
            graph, layers + [r.layer.name for r in records])
        if quantize_layers else [],
        folded_forward=[f.batch_norm.op.name for f in forward],
        forward_layers=[f.layer.layer.name for f in forward])
    logging.info('%s', result)
    _LAST_REPORTS[graph] = result
    return result


def _split_standalone(graph: tf.Graph, records, quantize_layers: bool):
    """The batch norms no layer folds: those that fold forward, and the rest
    (rewritten as affine ops when quantizing, else left alone).

    Returns:
        (`ForwardFoldRecord`s, `BatchNormRecord`s).
    """
    standalone = patterns.find_standalone_batch_norms(graph, records)
    forward = patterns.find_forward_folds(standalone, records)
    if not quantize_layers:
        return forward, []
    taken = {f.batch_norm.op for f in forward}
    return forward, [bn for bn in standalone if bn.op not in taken]


def last_report(graph: Optional[tf.Graph] = None
                ) -> Optional[report_lib.RewriteReport]:
    """Returns the report of the latest rewrite of `graph`.

    The contrib functions return None, as they always did; this is where
    their report is kept: every layer found, what was folded, which
    FakeQuants were inserted and which compute ops stay float, and why.

    Args:
        graph: the rewritten graph; the default graph if None.

    Returns:
        The `RewriteReport`, or None if the graph was never rewritten.

    Raises:
        TypeError: if `graph` is not a `tf.Graph`.
    """
    return _LAST_REPORTS.get(_resolve_graph(graph))


def _resolve_graph(input_graph) -> tf.Graph:
    if input_graph is None:
        return tf.compat.v1.get_default_graph()
    if not isinstance(input_graph, tf.Graph):
        raise TypeError('input_graph must be a tf.Graph or None, got %s.' %
                        type(input_graph).__name__)
    return input_graph


def _check_arguments(weight_bits, activation_bits, quant_delay,
                     freeze_bn_delay, scope) -> None:
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


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_for_training_ops(graph: tf.Graph) -> None:
    found = {op.type for op in graph.get_operations()} & TRAINING_OP_TYPES
    if found:
        raise QuantizeError(
            'Training op found in graph, exiting %s. Call the rewrite after '
            'building the forward pass and before building the optimizer.' %
            sorted(found))


def _check_graph(graph: tf.Graph, records, standalone, is_training: bool,
                 one_conv_fold: bool) -> None:
    """Everything that could stop the rewrite half-way is checked here."""
    if graph.finalized:
        raise QuantizeError('The graph is finalized; rewrite it before '
                            'creating a MonitoredSession / finalizing it.')
    _check_conditional_layers(graph)
    _check_outside_control_flow(
        [r.layer for r in records] +
        [r.batch_norm.op for r in records if r.batch_norm is not None] +
        [bn.op for bn in standalone])
    folding.validate(records, standalone, is_training, one_conv_fold)
    computed = [(r.layer, r.weights) for r in records]
    computed += [(r.layer, r.layer.outputs[0]) for r in records]
    computed += [(bn.op, bn.input) for bn in standalone]
    for op, tensor in computed:
        if tensor.dtype != tf.float32:
            raise UnsupportedGraphError(
                "Op '%s' works on %s tensor '%s'; FakeQuant ops and the "
                'folding math need float32. Quantize the float32 model.' %
                (op.name, tensor.dtype.name, tensor.name))


def _check_conditional_layers(graph: tf.Graph) -> None:
    """A layer feeding a conditional usually means a batch norm whose
    `training` flag is a tensor: both branches exist and neither can be
    folded."""
    for op in graph.get_operations():
        if op.type not in patterns.LAYER_TYPES:
            continue
        for reader in _layer_readers(op):
            if (reader.type in _CONDITIONAL_TYPES
                    and not _is_own_conditional(reader.name)):
                raise UnsupportedGraphError(
                    "Layer op '%s' feeds the conditional '%s' (%s), e.g. a "
                    'batch norm whose training flag is a tensor. Build the '
                    'training graph with training=True and the eval graph '
                    'with training=False (Python bools).' %
                    (op.name, reader.name, reader.type))


def _is_own_conditional(name: str) -> bool:
    return any(scope in name for scope in _OWN_CONDITIONALS)


def _check_outside_control_flow(ops) -> None:
    """TF1 while loops and conds keep their ops in a control-flow context;
    ops built outside it cannot read their outputs. A one-convolution fold's
    layer is inside the fold's own cond; nothing is added next to it."""
    for op in ops:
        context = op._get_control_flow_context()  # pylint: disable=protected-access
        if context is not None and not _is_own_conditional(context.name):
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
