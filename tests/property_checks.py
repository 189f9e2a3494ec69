"""The checks of properties 1, 2, 4 and 5 of test_properties.py (property
3, the quantization error bound, is in quantization_bound.py), with the
tolerances and helpers they share. Each `check_*` function takes a drawn
example and raises AssertionError (with the graph's description) if the
property does not hold.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from typing import Dict, List

import numpy as np
import tensorflow as tf

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
# The documented errors of the rewrite (UnsupportedGraphError is a
# QuantizeError; TypeError is documented for a non-Graph argument).
DOCUMENTED_ERRORS = (tf1_quantize.QuantizeError, TypeError)


def explain(desc: gen.GraphDesc, *lines) -> str:
    return '\n'.join([desc.pretty()] + [str(line) for line in lines])


def max_abs(value) -> float:
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
        assert gen.graph_state(built.graph) == before, explain(
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
        assert np.all(np.isfinite(value)), explain(
            desc, '%r: non-finite output after the rewrite' % call, value)
    return 'rewritten'


# ---------------------------------------------------------------------------
# Property 2: training graph == original graph while delays are pending.


@dataclasses.dataclass
class TrainingRun:
    outputs: List[np.ndarray]
    gradients: Dict[str, np.ndarray]
    moving: Dict[str, np.ndarray]


def run_training_probe(built: gen.BuiltGraph) -> TrainingRun:
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
    return TrainingRun(outputs, gradients, moving_values)


def _rounding_sensitivity(desc: gen.GraphDesc,
                          expected: TrainingRun) -> dict:
    """How far each gradient of the original graph moves when its input is
    scaled by 1 + 2^-19: max |change| per variable name (0 for None)."""
    nudged = gen.build(desc, bn_training=True)
    nudged.feed = {t: v * np.float32(1 + 2**-19) for t, v in
                   nudged.feed.items()}
    gradients = run_training_probe(nudged).gradients
    return {name: 0.0 if want is None else max_abs(gradients[name] - want)
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
    expected = run_training_probe(original)
    actual = run_training_probe(rewritten)
    sensitivity = _rounding_sensitivity(desc, expected)
    for index, (want, got) in enumerate(zip(expected.outputs,
                                            actual.outputs)):
        tol = FORWARD_TOL * max(max_abs(want), 1e-6)
        err = max_abs(got - want)
        assert err <= tol, explain(
            desc, 'output %d (tensor t%d): max error %.3g > %.3g' %
            (index, original.leaves[index], err, tol))
    assert actual.gradients.keys() == expected.gradients.keys()
    largest = max([max_abs(g) for g in expected.gradients.values()
                   if g is not None] + [1e-6])
    for name, want in expected.gradients.items():
        got = actual.gradients[name]
        if want is None and got is None:
            continue
        assert want is not None and got is not None, explain(
            desc, 'gradient w.r.t. %s: original %s, rewritten %s' %
            (name, 'None' if want is None else 'present',
             'None' if got is None else 'present'))
        scale = max(max_abs(want), GRADIENT_FLOOR * largest)
        tol = (GRADIENT_TOL * scale +
               ROUNDING_SENSITIVITY_FACTOR * sensitivity[name])
        err = max_abs(got - want)
        assert err <= tol, explain(
            desc, 'gradient w.r.t. %s: max error %.3g > %.3g (scale %.3g, '
            'rounding sensitivity %.3g)' % (name, err, tol, scale,
                                            sensitivity[name]))
    assert actual.moving.keys() == expected.moving.keys()
    for name, want in expected.moving.items():
        err = max_abs(actual.moving[name] - want)
        assert err <= FORWARD_TOL * max(max_abs(want), 1e-6), explain(
            desc, 'moving statistic %s after one update: error %.3g' %
            (name, err))


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
        raise AssertionError(explain(
            desc, '%r twice: new ops %s, changed ops %s' %
            (call, new[:20], changed[:20])))
    assert first[1] == second[1], explain(
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
        assert not missing, explain(
            desc, '%r then %r: eval variables missing from the training '
            'checkpoint: %s' % (training_call, eval_call, missing))
        wrong = [(key, shape, saved[key]) for key, shape in keys.values()
                 if shape != list(saved[key])]
        assert not wrong, explain(desc, 'shape mismatches %s' % wrong)
        with gen.session(evaluation.graph) as sess:
            restorer.restore(sess, path)
            restored = sess.run({v.op.name: v for v in variables})
            outputs = sess.run(evaluation.outputs(), evaluation.feed)
        for v in variables:
            np.testing.assert_array_equal(restored[v.op.name],
                                          _saved_value(reader, v),
                                          err_msg=v.op.name)
    for value in outputs:
        assert np.all(np.isfinite(value)), explain(
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
