"""Property tests: the rewrite on random small graphs (see graph_generator).

Five properties, each checked on 50 derandomized examples (deterministic in
CI; `tools/soak.py` runs the same checks on many more random examples):

1. A rewrite either succeeds (and the graph then trains and runs with finite
   numbers) or raises a documented error, leaving the graph untouched.
2. The training rewrite with quantization and the BN freeze both in the
   future computes the same outputs, gradients and moving-average updates as
   the original graph.
3. The 16-bit eval rewrite, with every range set to the range observed on the
   batch, stays within a derived quantization error bound of the original.
4. A second identical rewrite changes nothing.
5. A checkpoint of the training graph restores into the eval graph with no
   variable missing.

Each property is a plain `check_*` function; the tests below and the soak
tool (`PROPERTIES`) call them with drawn examples.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import tempfile
from typing import Callable, Dict, List

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import graph_generator as gen

import tf1_quantize

v1 = tf.compat.v1

FUTURE = 10**6            # a quant / freeze delay never reached
FORWARD_TOL = 1e-4        # x max|original output|
GRADIENT_TOL = 2e-3       # x max|original gradient|
# Gradients that are analytically zero (e.g. beta of a BN feeding another
# training BN) are rounding noise; their scale is floored at this fraction
# of the largest gradient of the graph.
GRADIENT_FLOOR = 1e-3
# Some gradients are ill-conditioned (e.g. a depthwise weight whose output a
# training BN normalizes: only epsilon keeps it from 0), so rounding alone
# moves them far more than their size suggests. Property 2 also allows this
# many times how much the original's gradient moves when its input is scaled
# by 1 + 2^-19 (16 float32 ulps).
ROUNDING_SENSITIVITY_FACTOR = 4
EVAL_BITS = 16
# The documented errors of the rewrite (UnsupportedGraphError is a
# QuantizeError; TypeError is documented for a non-Graph argument).
DOCUMENTED_ERRORS = (tf1_quantize.QuantizeError, TypeError)
SLOW = [HealthCheck.too_slow, HealthCheck.data_too_large,
        HealthCheck.filter_too_much]


def _explain(desc: gen.GraphDesc, *lines) -> str:
    return '\n'.join([desc.pretty()] + [str(line) for line in lines])


def _max_abs(value) -> float:
    value = np.asarray(value)
    return float(np.max(np.abs(value))) if value.size else 0.0


# ---------------------------------------------------------------------------
# Property 1: success or a documented refusal that changes nothing.


def check_rewrite_succeeds_or_refuses(desc: gen.GraphDesc,
                                      call: gen.RewriteCall,
                                      bn_training: bool) -> str:
    """The call succeeds or raises a documented error with no mutation.

    On success the graph must still work as the user's next steps expect:
    after a training rewrite an optimizer is built and one training step
    (with the batch-norm updates) runs; then the probe loss and outputs are
    finite.

    Returns:
        'rewritten' or 'refused (<error type>)', for the soak tool's counts.
    """
    built = gen.build(desc, bn_training=bn_training)
    before = gen.graph_state(built.graph)
    try:
        call(built.graph)
    except DOCUMENTED_ERRORS as error:
        assert gen.graph_state(built.graph) == before, _explain(
            desc, '%r raised %r but changed the graph' % (call, error))
        assert str(error), 'empty error message'
        return 'refused (%s)' % type(error).__name__
    with built.graph.as_default():
        train_op = None
        if call.is_training and built.trainable_variables():
            train_op = v1.train.GradientDescentOptimizer(1e-3).minimize(
                built.loss)
        init = v1.global_variables_initializer()
    with gen.session(built.graph) as sess:
        sess.run(init)
        if train_op is not None:
            sess.run([train_op] + built.update_ops, built.feed)
        loss, outputs = sess.run((built.loss, built.outputs()), built.feed)
    for value in [loss] + list(outputs):
        assert np.all(np.isfinite(value)), _explain(
            desc, '%r: non-finite output after the rewrite' % call, value)
    return 'rewritten'


# ---------------------------------------------------------------------------
# Property 2: training graph == original graph while delays are pending.


@dataclasses.dataclass
class _TrainingRun:
    outputs: List[np.ndarray]
    gradients: Dict[str, np.ndarray]
    moving: Dict[str, np.ndarray]


def _run_training_probe(built: gen.BuiltGraph) -> _TrainingRun:
    """Outputs and loss gradients (w.r.t. the input and every trainable
    variable), then the moving statistics after one update step."""
    variables = built.trainable_variables()
    names = ['input'] + [v.op.name for v in variables]
    with built.graph.as_default():
        grads = tf.gradients(built.loss, [built.inputs] + variables)
        moving = sorted(
            (v for v in v1.global_variables()
             if v.op.name.endswith(('/moving_mean', '/moving_variance'))),
            key=lambda v: v.op.name)
        init = v1.global_variables_initializer()
    fetch = {n: g for n, g in zip(names, grads) if g is not None}
    with gen.session(built.graph) as sess:
        sess.run(init)
        outputs, gradients = sess.run((built.outputs(), fetch), built.feed)
        if built.update_ops:
            sess.run(built.update_ops, built.feed)
        moving_values = sess.run({v.op.name: v for v in moving})
    for name in names:
        if name not in gradients:
            gradients[name] = None
    return _TrainingRun(outputs, gradients, moving_values)


def _rounding_sensitivity(desc: gen.GraphDesc,
                          expected: _TrainingRun) -> dict:
    """How far each gradient of the original graph moves when its input is
    scaled by 1 + 2^-19: max |change| per variable name (0 for None)."""
    nudged = gen.build(desc, bn_training=True)
    nudged.feed = {t: v * np.float32(1 + 2**-19) for t, v in
                   nudged.feed.items()}
    gradients = _run_training_probe(nudged).gradients
    return {name: 0.0 if want is None else _max_abs(gradients[name] - want)
            for name, want in expected.gradients.items()}


def check_training_graph_matches_original(desc: gen.GraphDesc,
                                          one_conv_fold: bool) -> None:
    """`experimental_create_training_graph(quant_delay=10**6,
    freeze_bn_delay=10**6)`, with either training fold: with both delays in
    the future the rewritten graph computes exactly the original function
    (batch-statistics BN, no quantization), so

    * outputs agree within 1e-4 x max|original output|;
    * gradients of the probe loss (a fixed random-weighted sum of the
      outputs) w.r.t. the input and every trainable variable agree within
      2e-3 x max|original gradient| (floored at 1e-3 of the largest gradient
      of the graph: analytically-zero gradients are rounding noise), plus 4
      times the original's own change under a rounding-sized input change
      (`_rounding_sensitivity`);
    * one run of the moving-average update ops moves the moving statistics
      to the same values (within 1e-4 x their magnitude).
    """
    original = gen.build(desc, bn_training=True)
    rewritten = gen.build(desc, bn_training=True)
    tf1_quantize.experimental_create_training_graph(
        rewritten.graph, quant_delay=FUTURE, freeze_bn_delay=FUTURE,
        one_conv_fold=one_conv_fold)
    expected = _run_training_probe(original)
    actual = _run_training_probe(rewritten)
    sensitivity = _rounding_sensitivity(desc, expected)
    for index, (want, got) in enumerate(zip(expected.outputs,
                                            actual.outputs)):
        tol = FORWARD_TOL * max(_max_abs(want), 1e-6)
        err = _max_abs(got - want)
        assert err <= tol, _explain(
            desc, 'output %d (tensor t%d): max error %.3g > %.3g' %
            (index, original.leaves[index], err, tol))
    assert actual.gradients.keys() == expected.gradients.keys()
    largest = max([_max_abs(g) for g in expected.gradients.values()
                   if g is not None] + [1e-6])
    for name, want in expected.gradients.items():
        got = actual.gradients[name]
        if want is None and got is None:
            continue
        assert want is not None and got is not None, _explain(
            desc, 'gradient w.r.t. %s: original %s, rewritten %s' %
            (name, 'None' if want is None else 'present',
             'None' if got is None else 'present'))
        scale = max(_max_abs(want), GRADIENT_FLOOR * largest)
        tol = (GRADIENT_TOL * scale +
               ROUNDING_SENSITIVITY_FACTOR * sensitivity[name])
        err = _max_abs(got - want)
        assert err <= tol, _explain(
            desc, 'gradient w.r.t. %s: max error %.3g > %.3g (scale %.3g, '
            'rounding sensitivity %.3g)' % (name, err, tol, scale,
                                            sensitivity[name]))
    assert actual.moving.keys() == expected.moving.keys()
    for name, want in expected.moving.items():
        err = _max_abs(actual.moving[name] - want)
        assert err <= FORWARD_TOL * max(_max_abs(want), 1e-6), _explain(
            desc, 'moving statistic %s after one update: error %.3g' %
            (name, err))


# ---------------------------------------------------------------------------
# Property 3: 16-bit eval graph within a derived quantization error bound.


def _half_step(low: float, high: float, levels: int) -> float:
    """Half the step of a quantizer whose range is [low, high] widened to
    contain 0 (the rewrite's asymmetric ranges always do)."""
    return 0.5 * (max(high, 0.0) - min(low, 0.0)) / levels


def _bn_multiplier(values: dict, node: gen.Layer):
    """gamma / sqrt(moving_variance + eps), the inference-BN scale."""
    gamma = values['gamma'] if values['gamma'] is not None else 1.0
    return gamma / np.sqrt(values['moving_variance'] + gen.EPSILON)


def _folded_weights(values: dict, node: gen.Layer) -> np.ndarray:
    weights = values['weights']
    if not node.bn:
        return weights
    multiplier = _bn_multiplier(values, node)
    if node.kind in ('depthwise', 'atrous'):
        return weights * multiplier.reshape(weights.shape[2:])
    return weights * multiplier


def _l1_gain(weights: np.ndarray, kind: str) -> float:
    """The infinity-norm gain of the linear layer: the largest sum of |w|
    feeding one output element (exact for VALID, an upper bound for SAME
    padding, strides, rate-2 dilation)."""
    axes = {'fc': (0,), 'conv': (0, 1, 2)}.get(kind, (0, 1))
    return float(np.max(np.sum(np.abs(weights), axis=axes)))


def quantization_error_bounds(desc: gen.GraphDesc, measured: dict,
                              bits: int = EVAL_BITS) -> List[float]:
    """Bounds on max|eval output - original output| for every tensor.

    Derivation. A FakeQuant with range [m, M] (0 in it), n levels and step
    s = (M - m) / (n - 1) nudges the range by less than s / 2 so that 0 is
    on the grid, then rounds to the grid: every x in [m, M] moves by at most
    s / 2. The ranges are learned on the very batch being evaluated, so
    every quantized value is in its range. With b = 16 bits, activations
    have n - 1 = 2^b - 1 steps, weights (narrow range) 2^b - 2.

    Write E(t) for a bound on max|t_eval - t_orig| and A(t) = max|t_orig|.
    Then |t_eval| <= A(t) + E(t), and the range a quantizer of t learns is
    the original range widened by E(t) on both sides, giving a half step
    q(t) = (range(t) + 2 E(t)) / (2 (2^b - 1)) (times 1.001 for the
    rounding of the zero-debiased moving average). Walking the graph:

    * input: E = 0 (never quantized).
    * layer y = W * x (+ bias): the eval graph uses the folded weights
      W_f = W * gamma / sqrt(moving_var + eps) quantized to W_q with
      |W_q - W_f| <= d_w = s_w / 2 elementwise. With k = fan-in (the number
      of input elements one output reads) and G = max over outputs of the
      sum of |W_f| feeding it:
      |W_q x_q - W_f x| <= |W_q (x_q - x)| + |(W_q - W_f) x|
                        <= (G + k d_w) E(x) + k d_w (A(x) + E(x)).
      A weight variable read by two layers may be quantized twice (once raw
      by the unfolded reader, then folded), adding d_raw * max|multiplier|
      to d_w. Biases and BN offsets are exact.
    * every tensor the rewrite may quantize adds its q(t): the layer output
      after bias/BN (final-layer act_quant, conv_quant before a bypass),
      the bypass sum, the activation output, Add outputs. Tensors that are
      not quantized (Concat, pools) get q(t) too: harmless over-counting.
    * Relu, Relu6, Tanh, LeakyRelu(0.2), Identity, MaxPool, AvgPool, Concat
      and Reshape are 1-Lipschitz in the max norm; an Add sums the bounds of
      its inputs.
    * a batch norm after no layer (`Norm`) becomes y = x * m + o with
      m = gamma / sqrt(moving_var + eps) quantized like weights (d_m),
      o = beta - moving_mean * m quantized with activation bits (d_o), the
      product and the sum quantized like activations:
      E(y) <= (max|m| + d_m) E(x) + (A(x) + E(x)) d_m + q(x m) + d_o + q(y).

    The sum over quantizers of their half steps, each amplified by the gains
    G of the layers below it, is what this computes. Float32 rounding of the
    folded arithmetic is added by the caller (1e-5 x magnitude).

    Args:
        desc: the graph description.
        measured: from the original inference graph: 'tensors' (value of
            every tensor), and per layer node index the values 'biased',
            'pre_activation', 'weights', 'gamma', 'moving_variance'.
        bits: weight and activation bits.

    Returns:
        E for every tensor of the description (index 0 is the input).
    """
    act_levels, weight_levels = 2**bits - 1, 2**bits - 2
    shapes = desc.shapes()
    tensors = measured['tensors']
    shared = {n.share for _, n in desc.layers if n.share is not None}
    shared |= {k for k, n in desc.layers if n.share is not None}

    def q(value, error):
        value = np.asarray(value)
        return 1.001 * _half_step(float(value.min()) - error,
                                  float(value.max()) + error, act_levels)

    bounds = [0.0]
    for k, node in enumerate(desc.nodes):
        out = tensors[k + 1]
        if isinstance(node, gen.Layer):
            values = measured[k]
            x_err = bounds[node.src]
            x_mag = _max_abs(tensors[node.src]) + x_err
            folded = _folded_weights(values, node)
            d_w = 0.0
            if not node.const_weights:
                d_w = 1.001 * _half_step(folded.min(), folded.max(),
                                         weight_levels)
                if k in shared or node.share is not None:
                    raw = values['weights']
                    gain = (np.max(np.abs(_bn_multiplier(values, node)))
                            if node.bn else 1.0)
                    d_w += 1.001 * gain * _half_step(raw.min(), raw.max(),
                                                     weight_levels)
            fan = gen.fan_in(node, shapes[node.src])
            err = ((_l1_gain(folded, node.kind) + fan * d_w) * x_err +
                   fan * d_w * x_mag)
            err += q(values['biased'], err)
            if node.bypass is not None:
                err += bounds[node.bypass]
                err += q(values['pre_activation'], err)
            if node.activation is not None:
                err += q(out, err)
        elif isinstance(node, gen.Norm):
            # Standalone BN: y = q(q(x * m_q) + o_q), m = gamma / sigma,
            # o = beta - mean * m, m quantized like weights, o like a
            # constant activation (LastValue), both products like
            # activations: |x_q m_q - x m| <= max|m_q| E(x) + |x_q| d_m.
            values = measured[k]
            x = tensors[node.src]
            x_err = bounds[node.src]
            multiplier = _bn_multiplier(values, node)
            offset = values['beta'] - values['moving_mean'] * multiplier
            d_m = 1.001 * _half_step(multiplier.min(), multiplier.max(),
                                     weight_levels)
            d_o = 1.001 * _half_step(offset.min(), offset.max(), act_levels)
            err = ((np.max(np.abs(multiplier)) + d_m) * x_err +
                   (_max_abs(x) + x_err) * d_m)
            err += q(x * multiplier, err)
            err += d_o
            err += q(out, err)
        elif isinstance(node, gen.Add):
            err = bounds[node.a] + bounds[node.b]
            err += q(out, err)
        elif isinstance(node, (gen.Concat, gen.Pool)):
            srcs = gen.node_inputs(node)
            err = max(bounds[i] for i in srcs)
            err += q(out, err)
        elif isinstance(node, gen.Chain):
            # s <- q(s + q(0.5 s)), each level.
            err, value = bounds[node.src], np.asarray(tensors[node.src])
            for _ in range(node.depth):
                half = 0.5 * err + q(0.5 * value, 0.5 * err)
                value = 1.5 * value
                err = err + half + q(value, err + half)
        elif isinstance(node, gen.Cond):
            # Relu (maybe quantized), then a float layer: its L1 gain.
            x = np.maximum(tensors[node.src], 0.0)
            weights, _ = gen.cond_layer_values(k, shapes[node.src][-1])
            err = (np.max(np.sum(np.abs(weights), axis=0)) *
                   (bounds[node.src] + q(x, bounds[node.src])))
        else:
            err = bounds[node.src]
        bounds.append(err)
    return bounds


def _measure(built: gen.BuiltGraph) -> dict:
    """Every tensor and per-layer values of an unrewritten graph."""
    fetch = {'tensors': built.tensors}
    for k, handles in built.layers.items():
        if isinstance(handles, gen.NormHandles):
            fetch[k] = {n: getattr(handles, n) for n in (
                'gamma', 'beta', 'moving_mean', 'moving_variance')}
            fetch[k] = {n: t for n, t in fetch[k].items() if t is not None}
            continue
        fetch[k] = {
            'biased': handles.biased,
            'pre_activation': handles.pre_activation,
            'weights': handles.weights,
            'gamma': handles.gamma,
            'moving_variance': handles.moving_variance,
        }
        fetch[k] = {n: t for n, t in fetch[k].items() if t is not None}
    with built.graph.as_default():
        init = v1.global_variables_initializer()
    with gen.session(built.graph) as sess:
        sess.run(init)
        measured = sess.run(fetch, built.feed)
    for k in built.layers:
        measured[k].setdefault('gamma', None)
        measured[k].setdefault('moving_variance', None)
    return measured


def _learn_ranges(desc: gen.GraphDesc) -> Dict[str, np.ndarray]:
    """Global variable values after one 16-bit training step.

    The training rewrite (of the inference-BN graph, quant_delay=0) sets
    every weight range to the exact weight range and, thanks to the
    zero-debiased moving average, every activation range to the exact range
    observed on the batch.
    """
    built = gen.build(desc, bn_training=False)
    tf1_quantize.experimental_create_training_graph(
        built.graph, weight_bits=EVAL_BITS, activation_bits=EVAL_BITS)
    with built.graph.as_default():
        variables = v1.global_variables()
        init = v1.global_variables_initializer()
    with gen.session(built.graph) as sess:
        sess.run(init)
        sess.run(built.outputs(), built.feed)
        return sess.run({v.op.name: v for v in variables})


_BN_TYPES = ('FusedBatchNorm', 'FusedBatchNormV2', 'FusedBatchNormV3')
_UNFUSED_BN = 'BatchNorm/batchnorm_1/add_1'


def _upstream_ops(tensors) -> List[tf.Operation]:
    """Every op the given tensors depend on (data and control inputs)."""
    seen, stack = {}, [t.op for t in tensors]
    while stack:
        op = stack.pop()
        if op.name in seen:
            continue
        seen[op.name] = op
        stack.extend(t.op for t in op.inputs)
        stack.extend(op.control_inputs)
    return list(seen.values())


def check_eval_graph_within_quantization_bound(desc: gen.GraphDesc) -> None:
    """`experimental_create_eval_graph(weight_bits=16, activation_bits=16)`
    of the inference-BN graph, with every range variable set to the range
    observed on the batch (learned by one training step of a 16-bit training
    rewrite), matches the original inference graph within
    ``quantization_error_bounds`` (see its docstring for the derivation)
    plus 1e-5 x max|output| for float32 rounding. Also, the outputs no
    longer depend on any batch-norm op: every inference batch norm was
    folded into its layer or replaced by its quantized affine form.
    """
    original = gen.build(desc, bn_training=False)
    measured = _measure(original)
    learned = _learn_ranges(desc)
    rewritten = gen.build(desc, bn_training=False)
    tf1_quantize.experimental_create_eval_graph(
        rewritten.graph, weight_bits=EVAL_BITS, activation_bits=EVAL_BITS)
    with rewritten.graph.as_default():
        variables = v1.global_variables()
        init = v1.global_variables_initializer()
    missing = [v.op.name for v in variables if v.op.name not in learned]
    assert not missing, _explain(desc, 'eval variables not in the training '
                                 'graph: %s' % missing)
    with gen.session(rewritten.graph) as sess:
        sess.run(init)
        for variable in variables:
            variable.load(learned[variable.op.name], sess)
        outputs = sess.run(rewritten.outputs(), rewritten.feed)
    live_bns = [op.name for op in _upstream_ops(rewritten.outputs())
                if op.type in _BN_TYPES or op.name.endswith(_UNFUSED_BN)]
    assert not live_bns, _explain(desc, 'batch norms still computed by the '
                                  'eval graph: %s' % live_bns)
    bounds = quantization_error_bounds(desc, measured)
    for index, (leaf, got) in enumerate(zip(original.leaves, outputs)):
        want = measured['tensors'][leaf]
        tol = bounds[leaf] + 1e-5 * max(_max_abs(want), 1e-6)
        err = _max_abs(got - want)
        assert err <= tol, _explain(
            desc, 'output %d (t%d): max error %.3g > bound %.3g '
            '(max|output| %.3g)' % (index, leaf, err, tol, _max_abs(want)))


# ---------------------------------------------------------------------------
# Property 4: idempotence.


def check_second_rewrite_is_noop(desc: gen.GraphDesc, call: gen.RewriteCall,
                                 bn_training: bool) -> None:
    """Calling the same rewrite again leaves the GraphDef (serialized
    deterministically) and the collections unchanged."""
    built = gen.build(desc, bn_training=bn_training)
    call(built.graph)
    _assert_second_call_changes_nothing(desc, built.graph, call)


def _assert_second_call_changes_nothing(desc, graph, call) -> None:
    first = gen.graph_state(graph)
    call(graph)
    second = gen.graph_state(graph)
    if first[0] != second[0]:
        old = {n.name: n for n in v1.GraphDef.FromString(first[0]).node}
        new = [op.name for op in graph.get_operations()
               if op.name not in old]
        changed = [
            n.name for n in graph.as_graph_def().node
            if n.name in old and n.SerializeToString(deterministic=True) !=
            old[n.name].SerializeToString(deterministic=True)]
        raise AssertionError(_explain(
            desc, '%r twice: new ops %s, changed ops %s' %
            (call, new[:20], changed[:20])))
    assert first[1] == second[1], _explain(
        desc, '%r twice changed the collections' % call)


# ---------------------------------------------------------------------------
# Property 5: training checkpoint -> eval graph.


def check_checkpoint_restores_into_eval_graph(
        desc: gen.GraphDesc, calls) -> None:
    """A checkpoint saved from the training graph (training-mode BN,
    training rewrite, one training step) restores into the eval graph
    (inference-mode BN, matching eval rewrite), each rewrite a no-op when
    called again: every eval global variable
    is in the checkpoint with the same shape and dtype, `Saver.restore`
    succeeds and the restored values are the saved ones.
    """
    training_call, eval_call = calls
    training = gen.build(desc, bn_training=True)
    training_call(training.graph)
    _assert_second_call_changes_nothing(desc, training.graph, training_call)
    with training.graph.as_default():
        train_op = (v1.train.GradientDescentOptimizer(1e-3).minimize(
            training.loss) if training.trainable_variables() else
                    tf.no_op())
        init = v1.global_variables_initializer()
        saver = v1.train.Saver()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, 'model.ckpt')
        with gen.session(training.graph) as sess:
            sess.run(init)
            sess.run([train_op] + training.update_ops, training.feed)
            saver.save(sess, path)
        saved = dict(tf.train.list_variables(path))
        reader = tf.train.load_checkpoint(path)
        evaluation = gen.build(desc, bn_training=False)
        eval_call(evaluation.graph)
        _assert_second_call_changes_nothing(desc, evaluation.graph, eval_call)
        with evaluation.graph.as_default():
            variables = v1.global_variables()
            restorer = v1.train.Saver(variables)
        keys = {v.op.name: _saved_key_and_shape(v) for v in variables}
        missing = [k for k, (key, _) in keys.items() if key not in saved]
        assert not missing, _explain(
            desc, '%r then %r: eval variables missing from the training '
            'checkpoint: %s' % (training_call, eval_call, missing))
        wrong = [(key, shape, saved[key]) for key, shape in keys.values()
                 if shape != list(saved[key])]
        assert not wrong, _explain(desc, 'shape mismatches %s' % wrong)
        with gen.session(evaluation.graph) as sess:
            restorer.restore(sess, path)
            restored = sess.run({v.op.name: v for v in variables})
            outputs = sess.run(evaluation.outputs(), evaluation.feed)
        for v in variables:
            np.testing.assert_array_equal(restored[v.op.name],
                                          _saved_value(reader, v),
                                          err_msg=v.op.name)
    for value in outputs:
        assert np.all(np.isfinite(value)), _explain(
            desc, 'non-finite eval output after restore')


def _saved_key_and_shape(variable):
    """A part of a partitioned variable is saved as a slice of the whole."""
    info = variable._save_slice_info  # pylint: disable=protected-access
    if info is None:
        return variable.op.name, variable.shape.as_list()
    return info.full_name, list(info.full_shape)


def _saved_value(reader, variable):
    info = variable._save_slice_info  # pylint: disable=protected-access
    if info is None:
        return reader.get_tensor(variable.op.name)
    return reader.get_tensor(info.full_name)[tuple(
        slice(o, o + n) for o, n in zip(info.var_offset, info.var_shape))]


# ---------------------------------------------------------------------------
# The properties, for the tests and tools/soak.py.


@dataclasses.dataclass(frozen=True)
class Property:
    """A property: its check and the strategies of its arguments."""
    name: str
    check: Callable
    strategies: dict


PROPERTIES = [
    Property('rewrite_succeeds_or_refuses', check_rewrite_succeeds_or_refuses,
             dict(desc=gen.graph_descriptions(hazards=True),
                  call=gen.rewrite_calls(), bn_training=st.booleans())),
    Property('training_graph_matches_original',
             check_training_graph_matches_original,
             dict(desc=gen.graph_descriptions(), one_conv_fold=st.booleans())),
    Property('eval_graph_within_quantization_bound',
             check_eval_graph_within_quantization_bound,
             dict(desc=gen.graph_descriptions())),
    Property('second_rewrite_is_noop', check_second_rewrite_is_noop,
             dict(desc=gen.graph_descriptions(), call=gen.rewrite_calls(),
                  bn_training=st.booleans())),
    Property('checkpoint_restores_into_eval_graph',
             check_checkpoint_restores_into_eval_graph,
             dict(desc=gen.graph_descriptions(),
                  calls=gen.training_eval_call_pairs())),
]
_BY_NAME = {p.name: p for p in PROPERTIES}


@settings(max_examples=50, deadline=None, derandomize=True,
          suppress_health_check=SLOW)
@given(**_BY_NAME['rewrite_succeeds_or_refuses'].strategies)
def test_rewrite_succeeds_or_refuses_without_mutation(desc, call,
                                                      bn_training):
    check_rewrite_succeeds_or_refuses(desc, call, bn_training)


@settings(max_examples=50, deadline=None, derandomize=True,
          suppress_health_check=SLOW)
@given(**_BY_NAME['training_graph_matches_original'].strategies)
def test_training_graph_matches_original_before_delays(desc, one_conv_fold):
    check_training_graph_matches_original(desc, one_conv_fold)


@settings(max_examples=50, deadline=None, derandomize=True,
          suppress_health_check=SLOW)
@given(**_BY_NAME['eval_graph_within_quantization_bound'].strategies)
def test_16bit_eval_graph_within_quantization_bound(desc):
    check_eval_graph_within_quantization_bound(desc)


@settings(max_examples=50, deadline=None, derandomize=True,
          suppress_health_check=SLOW)
@given(**_BY_NAME['second_rewrite_is_noop'].strategies)
def test_second_rewrite_changes_nothing(desc, call, bn_training):
    check_second_rewrite_is_noop(desc, call, bn_training)


@settings(max_examples=50, deadline=None, derandomize=True,
          suppress_health_check=SLOW)
@given(**_BY_NAME['checkpoint_restores_into_eval_graph'].strategies)
def test_training_checkpoint_restores_into_eval_graph(desc, calls):
    check_checkpoint_restores_into_eval_graph(desc, calls)


# ---------------------------------------------------------------------------
# An edge case the generator leaves out: one element per BN channel.


@pytest.mark.parametrize('bn', ['fused', 'unfused'])
@pytest.mark.parametrize('kind', ['fc', 'conv'])
def test_training_rewrite_of_single_element_batch_norm(kind, bn):
    """A training BN over one element per channel (batch-1 MatMul, or a
    batch-1 conv with a 1x1 output): the batch variance is 0 and the BN
    output is beta whatever the input, so every gradient through the
    normalized path is 0. The rewritten graph must agree (finite, same
    numbers), as property 2 requires for larger batches."""
    layer = (gen.Layer(1, 'fc', 3, bn=bn, activation='relu') if kind == 'fc'
             else gen.Layer(0, 'conv', 3, padding='VALID', bn=bn,
                            activation='relu'))
    nodes = (gen.Reshape(0), layer) if kind == 'fc' else (layer,)
    desc = gen.GraphDesc((1, 3, 3, 2), nodes, resource=True, seed=1)
    assert gen.bn_elements_per_channel(desc, desc.layers[0][0]) == 1
    original = _run_training_probe(gen.build(desc))
    rewritten_graph = gen.build(desc)
    tf1_quantize.experimental_create_training_graph(
        rewritten_graph.graph, quant_delay=FUTURE, freeze_bn_delay=FUTURE)
    rewritten = _run_training_probe(rewritten_graph)
    for name, want in original.gradients.items():
        got = rewritten.gradients[name]
        assert np.all(np.isfinite(got)), 'gradient w.r.t. %s: %s' % (name,
                                                                     got)
        # Both are rounding noise around 0 except for beta.
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4,
                                   err_msg=name)
    for want, got in zip(original.outputs, rewritten.outputs):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------
# A structure found by the properties, pinned as a fast example.


@pytest.mark.parametrize('first,second', [('fused', 'fused'),
                                          ('fused', 'unfused'),
                                          ('unfused', 'unfused')])
def test_chained_standalone_batch_norms(first, second):
    """Two batch norms in a row after no layer (pool -> BN -> BN): property
    2 (training numbers and gradients) and property 3 (the eval graph
    computes no batch-norm op) on the smallest such graph."""
    desc = gen.GraphDesc((2, 5, 5, 2), (
        gen.Pool(0, 'avg', 2, 1),
        gen.Norm(1, first, bn_scale=True),
        gen.Norm(2, second, bn_scale=True),
    ), resource=True, seed=5)
    check_training_graph_matches_original(desc, one_conv_fold=False)
    check_eval_graph_within_quantization_bound(desc)


@pytest.mark.parametrize('layer', ['fc', 'conv'])
def test_forward_fold_skips_a_layer_whose_add_is_a_residual_sum(layer):
    """Found by the soak (seeds 160 and 13796): a BN before a layer whose
    output also feeds a residual Add. The patterns call that Add the layer's
    bias add, but the folded bias cannot go there (the other readers of the
    layer would miss it), so the BN stays affine. Properties 2 and 3."""
    if layer == 'fc':
        nodes = (gen.Norm(0, 'unfused', bn_scale=False),
                 gen.Reshape(1),
                 gen.Layer(2, 'fc', 4),
                 gen.Layer(3, 'fc', 4, bn='unfused', activation='relu',
                           bypass=3))
    else:
        nodes = (gen.Norm(0, 'unfused', bn_scale=False),
                 gen.Layer(1, 'conv', 2, kernel=1, padding='VALID'),
                 gen.Layer(2, 'depthwise', 1, bias=True, activation='relu'),
                 gen.Add(2, 3))
    desc = gen.GraphDesc((2, 3, 5, 2), nodes, resource=True, seed=7)
    check_training_graph_matches_original(desc, one_conv_fold=False)
    check_eval_graph_within_quantization_bound(desc)


def test_ill_conditioned_gradients_are_judged_against_rounding():
    """Found by the soak (seed 20261128): chained 1-channel 1x1 depthwise
    layers, each followed by a training BN. The gradients of L4's depthwise
    weight and BN beta are analytically (almost) 0, so rounding decides
    them: the original's own gradient moves by 8e-5 and 1e-4 when its input
    is scaled by 1 + 2^-20, as much as the rewritten graph differs from it.
    Property 2 must accept that and still check the other gradients."""
    layer = functools.partial(gen.Layer, kind='depthwise', channels=1,
                              kernel=1, bn='fused')
    desc = gen.GraphDesc((2, 7, 7, 1), (
        gen.Norm(0, 'fused', bn_scale=False),
        gen.Add(1, 0),
        gen.Reshape(2, kind='regroup'),
        gen.Layer(0, 'conv', 1, kernel=1, bn='unfused', bn_scale=False,
                  activation='leaky_relu', bypass=3),
        layer(4, bn_scale=False, bypass=4),
        layer(5, bn_scale=False, activation='relu'),
        layer(6, bn_scale=True),
    ), resource=False, seed=4764)
    check_training_graph_matches_original(desc, one_conv_fold=False)


def test_a_layer_added_to_another_layer_is_rewritten_once():
    """Found by the soak (seed 22027): a bare MatMul whose output another
    layer adds to its own. The first rewrite takes the Add for the other
    layer's bias add; the second must not take it for the MatMul's once the
    other layer's weights are quantized. Property 4."""
    desc = gen.GraphDesc((1, 3, 5, 1), (
        gen.Norm(0, 'fused'),
        gen.Reshape(1),
        gen.Layer(2, 'fc', 2, kernel=1),
        gen.Concat(3, 2),
        gen.Layer(4, 'fc', 1, kernel=1, activation='tanh'),
        gen.Concat(5, 3),
        gen.Layer(6, 'fc', 4, kernel=1),
        gen.Layer(7, 'fc', 2, kernel=1, bypass=3),
    ), resource=True, seed=22027)
    check_second_rewrite_is_noop(
        desc, gen._call('create_training_graph', quant_delay=0),
        bn_training=True)


def test_one_conv_fold_after_a_bare_layer_rewrites_twice():
    """Found by the soak (seed 20261129): a one-conv fold with a freeze
    whose layer reads another layer's raw output (no activation, outside the
    quantized scope). The fold's cond puts a Switch on that output; the
    second rewrite must recognise it as the fold's own and change nothing.
    Property 4."""
    desc = gen.GraphDesc((2, 3, 7, 2), (
        gen.Pool(0, 'max', 2, 2),
        gen.Pool(1, 'avg', 2, 1),
        gen.Add(1, 2),
        gen.Reshape(3, kind='flatten'),
        gen.Layer(4, 'fc', 16, kernel=1, activation='leaky_relu', bypass=4),
        gen.Layer(5, 'fc', 16, kernel=1, share=4),
        gen.Layer(6, 'fc', 16, kernel=1, bn='fused', bn_scale=False,
                  activation='relu', bypass=6, share=4),
    ), resource=False, seed=132)
    check_second_rewrite_is_noop(
        desc, gen._call('experimental_create_training_graph',
                        activation_bits=16, freeze_bn_delay=3,
                        one_conv_fold=True, per_channel_weights=True,
                        quant_delay=3, scope='L1/', symmetric=False,
                        weight_bits=13),
        bn_training=True)


def test_one_conv_folds_of_layers_sharing_a_scope_rewrite_twice():
    """Found by the soak (seed 20261204): layers built in one name scope get
    `one_conv_fold`, `one_conv_fold_1`, ... conds; a second rewrite must
    recognise the numbered ones as the fold's own too. Property 4."""
    desc = gen.GraphDesc((2, 3, 3, 2), (
        gen.Norm(0, 'unfused', bn_scale=False),
        gen.Layer(1, 'depthwise', 1, bn='unfused', activation='relu',
                  unscoped=True),
        gen.Layer(2, 'depthwise', 1, activation='relu6', unscoped=True),
        gen.Layer(2, 'depthwise', 1, bn='unfused', activation='relu',
                  unscoped=True),
    ), resource=False, seed=23686)
    check_second_rewrite_is_noop(
        desc, gen._call('fold_batch_norms', freeze_bn_delay=0,
                        is_training=True, one_conv_fold=True),
        bn_training=True)
