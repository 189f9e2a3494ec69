"""The public rewrite functions, drop-in for `tf.contrib.quantize`.

Every function validates its arguments and the whole graph before it changes
anything, so an error leaves the graph exactly as it was.
"""

from __future__ import annotations

import contextlib
import gc
import weakref
from typing import Optional

import tensorflow as tf
from absl import logging

from tf1_quantize import affine
from tf1_quantize import folding
from tf1_quantize import forward_folding
from tf1_quantize import graph_edit
from tf1_quantize import names
from tf1_quantize import records as records_lib
from tf1_quantize import placement
from tf1_quantize import quantize
from tf1_quantize import report as report_lib
from tf1_quantize import step_counter
from tf1_quantize import validation
from tf1_quantize.errors import RewriteAbortedError

_CONTRIB_COUNTER = step_counter.FAKE_QUANTIZATION_STEP
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
                                       one_conv_fold: bool = False,
                                       delay_counter: str = _CONTRIB_COUNTER,
                                       quantize_bare_layers: bool = False
                                       ) -> None:
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
        delay_counter: what `quant_delay` and `freeze_bn_delay` count:
            'fake_quantization_step' (contrib's counter of session runs that
            evaluate the model, shared by every worker that runs it) or
            'global_step' (the graph's global step, which must exist; for
            SyncReplicasOptimizer and multi-worker jobs).
        quantize_bare_layers: also quantize a Conv2D / DepthwiseConv2dNative
            / MatMul with variable weights and no bias add, batch norm or
            activation after it (e.g. a final logits layer): FakeQuants on
            its weights and on its output (`act_quant`). contrib left such
            layers float, and a fully integer TFLite export then fails; off
            by default. The eval rewrite must use the same setting.

    Raises:
        TypeError: if `input_graph` is not a `tf.Graph`.
        ValueError: as `create_training_graph`.
    """
    _rewrite(input_graph, is_training=True, weight_bits=weight_bits,
             activation_bits=activation_bits, symmetric=symmetric,
             quant_delay=quant_delay, freeze_bn_delay=freeze_bn_delay,
             scope=scope, per_channel_weights=per_channel_weights,
             one_conv_fold=one_conv_fold, delay_counter=delay_counter,
             quantize_bare_layers=quantize_bare_layers)


def experimental_create_eval_graph(input_graph: Optional[tf.Graph] = None,
                                   weight_bits: int = 8,
                                   activation_bits: int = 8,
                                   symmetric: bool = False,
                                   quant_delay: Optional[int] = None,
                                   scope: Optional[str] = None,
                                   *,
                                   per_channel_weights: bool = False,
                                   delay_counter: str = _CONTRIB_COUNTER,
                                   quantize_bare_layers: bool = False
                                   ) -> None:
    """`create_eval_graph` with every parameter exposed.

    Args:
        input_graph: the inference graph to rewrite (the default graph if
            None), built like the training graph but with `is_training`
            False.
        weight_bits, activation_bits, symmetric: as in training (2 to 16
            bits); the exported integer model uses these.
        quant_delay: if set, the eval graph also switches to quantized values
            only after this many steps.
        scope: only quantize ops under this name scope (folding is global).
        per_channel_weights: as for `experimental_create_training_graph`;
            must match the training graph (the range variables differ).
        delay_counter: what `quant_delay` counts, as for
            `experimental_create_training_graph`.
        quantize_bare_layers: as for `experimental_create_training_graph`;
            must match the training graph.

    Raises:
        TypeError: if `input_graph` is not a `tf.Graph`.
        ValueError: as `create_training_graph`.
    """
    _rewrite(input_graph, is_training=False, weight_bits=weight_bits,
             activation_bits=activation_bits, symmetric=symmetric,
             quant_delay=quant_delay, scope=scope, delay_counter=delay_counter,
             per_channel_weights=per_channel_weights,
             quantize_bare_layers=quantize_bare_layers)


def fold_batch_norms(graph: Optional[tf.Graph] = None,
                     is_training: bool = True,
                     freeze_bn_delay: Optional[int] = None,
                     *,
                     one_conv_fold: bool = False,
                     delay_counter: str = _CONTRIB_COUNTER
                     ) -> report_lib.RewriteReport:
    """Folds every batch norm into the layer before it, without quantizing.

    A batch norm that follows no layer is folded forward into the layer
    after it where that is exact (`forward_folding.find_forward_folds`),
    and left as it is otherwise.

    Args:
        graph: the graph to rewrite in place; the default graph if None.
        is_training: build the training fold (batch-statistics corrections)
            rather than the eval fold.
        freeze_bn_delay: steps after which the training fold switches to the
            moving statistics; None never switches.
        one_conv_fold: see `experimental_create_training_graph`.
        delay_counter: what `freeze_bn_delay` counts, see
            `experimental_create_training_graph`.

    Returns:
        A `RewriteReport` of what was folded.

    Raises:
        TypeError: if `graph` is not a `tf.Graph`.
        ValueError: if the graph is finalized or a batch norm cannot be folded.
    """
    return _rewrite(graph, is_training=is_training,
                    freeze_bn_delay=freeze_bn_delay,
                    one_conv_fold=one_conv_fold, quantize_layers=False,
                    delay_counter=delay_counter)


def _rewrite(input_graph, **options) -> report_lib.RewriteReport:
    # A rewrite creates hundreds of Python objects per layer and frees few,
    # so the cyclic collector's full passes over every op object find
    # nothing: about 1 s of a 1000-layer rewrite.
    with _garbage_collection_paused():
        return _rewrite_graph(input_graph, **options)


@contextlib.contextmanager
def _garbage_collection_paused():
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _rewrite_graph(input_graph, *, is_training, weight_bits=8,
                   activation_bits=8,
             symmetric=False, quant_delay=None, freeze_bn_delay=None,
             scope=None, per_channel_weights=False, one_conv_fold=False,
             quantize_layers=True, delay_counter=_CONTRIB_COUNTER,
             quantize_bare_layers=False) -> report_lib.RewriteReport:
    graph = _resolve_graph(input_graph)
    validation.check_arguments(weight_bits, activation_bits, quant_delay,
                               freeze_bn_delay, scope, delay_counter)
    validation.check_graph(graph, quantize_layers)
    validation.check_delay_counter(graph, delay_counter, quant_delay,
                                   freeze_bn_delay)
    records = records_lib.find_layers(
        graph, bare_layers=quantize_layers and bool(quantize_bare_layers))
    forward, standalone = _split_standalone(graph, records, quantize_layers)
    plan = validation.Plan(
        mode=names.TRAINING if is_training else names.EVAL,
        quantize=quantize_layers, records=records, forward=forward,
        standalone=standalone, one_conv_fold=bool(one_conv_fold),
        per_channel_weights=bool(per_channel_weights))
    validation.check_plan(graph, plan)
    layers = [r.layer.name for r in records]
    folded = [r.layer.name for r in records if r.batch_norm is not None]
    weight_devices = [placement.variable_device(r.weights) for r in records]
    # Without a global step, a new step counter goes with the first layer.
    step_device = next(iter(weight_devices), '')
    config = quantize.QuantizeConfig(
        is_training=is_training, weight_bits=weight_bits,
        activation_bits=activation_bits, symmetric=symmetric,
        quant_delay=quant_delay, scope=scope,
        per_channel_weights=bool(per_channel_weights))
    try:
        with (graph.as_default(), graph_edit.transaction(graph),
              step_counter.delay_clock(graph, delay_counter, step_device)):
            inserted = _mutate(graph, plan, config, freeze_bn_delay,
                               weight_devices)
            validation.record_rewrite(graph, plan.mode)
    except Exception as error:  # pylint: disable=broad-except
        raise RewriteAbortedError(
            'The rewrite failed while changing the graph (%s: %s). Every '
            'input it rerouted and every collection it changed were '
            'restored, so the graph computes what it did before; the ops '
            'it had created stay, unconnected (TensorFlow cannot delete '
            'ops), so build the graph again before another rewrite. Please '
            'report this with the graph.' %
            (type(error).__name__, error)) from error
    float_ops = []
    if quantize_layers:
        float_ops = report_lib.find_float_layers(
            graph, layers + [r.layer.name for r in records])
    result = report_lib.RewriteReport(
        is_training=is_training, layers=layers, folded=folded,
        affine=[bn.op.name for bn in plan.standalone], fake_quants=inserted,
        float_ops=float_ops + report_lib.find_function_layers(graph),
        folded_forward=[f.batch_norm.op.name for f in forward],
        forward_layers=[f.layer.layer.name for f in forward])
    logging.info('%s', result)
    _LAST_REPORTS[graph] = result
    return result


def _mutate(graph: tf.Graph, plan: validation.Plan,
            config: quantize.QuantizeConfig, freeze_bn_delay, weight_devices):
    """Folds and quantizes as `plan` says (`weight_devices`: see
    `quantize.quantize_layers`).

    Returns:
        The FakeQuants inserted.
    """
    is_training = plan.mode == names.TRAINING
    folding.fold(graph, plan.records, is_training, freeze_bn_delay,
                 one_conv=plan.one_conv_fold)
    for fold in plan.forward:
        forward_folding.fold_forward(graph, fold, is_training,
                                     freeze_bn_delay)
    affines = [
        affine.rewrite_as_affine(graph, bn, is_training, freeze_bn_delay)
        for bn in plan.standalone
    ]
    if not plan.quantize:
        return []
    return quantize.quantize_layers(graph, plan.records, affines, config,
                                    weight_devices)


def _split_standalone(graph: tf.Graph, records, quantize_layers: bool):
    """The batch norms no layer folds: those that fold forward, and the rest
    (rewritten as affine ops when quantizing, else left alone).

    Returns:
        (`ForwardFoldRecord`s, `BatchNormRecord`s).
    """
    standalone = records_lib.find_standalone_batch_norms(graph, records)
    forward = forward_folding.find_forward_folds(standalone, records)
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
