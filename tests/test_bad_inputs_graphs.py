"""Batch norms the rewrite cannot fold, unknown shapes and while loops:
refused cleanly, or handled correctly.

What a refusal must do, and the shared graphs: bad_input_graphs.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools

import numpy as np
import pytest
import tensorflow as tf

import builders as gb
import graph_generator as gen
from bad_input_graphs import (FORWARD_TOL, FUTURE, GRADIENT_TOL, REWRITES,
                              all_rewrites, assert_scaled_close, build_on,
                              conv_bn_graph, fake_quant_ops, feed, run)
from graph_checks import assert_refused, graph_diff, graph_state

import tf1_quantize

v1 = tf.compat.v1


# ---------------------------------------------------------------------------
# Batch norms the rewrite cannot fold.


def _keras_bn_with_tensor_flag(v1_control_flow: bool) -> gb.BuiltLayer:
    """tf_keras Conv2D + BatchNormalization(training=<bool tensor>) + ReLU:
    Keras wraps the BN in a cond (If, or Switch/Merge under v1 control
    flow)."""
    keras = gb.keras_module()
    graph = tf.Graph()
    flow = gb.control_flow_v1 if v1_control_flow else contextlib.nullcontext
    with graph.as_default(), flow():
        x = v1.placeholder(tf.float32, gb.IMAGE_SHAPE, name='input')
        conv = keras.layers.Conv2D(
            4, 3, padding='same', use_bias=False,
            kernel_initializer=v1.constant_initializer(
                0.3 * np.random.RandomState(0).randn(3, 3, 3, 4)))
        pre_bn = conv(x)
        training = v1.placeholder_with_default(True, [], name='is_training')
        y = keras.layers.BatchNormalization()(pre_bn, training=training)
        y = keras.layers.ReLU()(y)
    return gb.BuiltLayer(
        graph=graph, inputs=x, output=y, layer_op=pre_bn.op, pre_bn=pre_bn,
        bn_op=None, bn_output=None, weights=conv.kernel, gamma=None,
        beta=None, moving_mean=None, moving_variance=None,
        epsilon=gen.EPSILON, update_ops=[], scope='conv2d')


@all_rewrites
@pytest.mark.parametrize('v1_control_flow', [False, True],
                         ids=['If', 'Switch'])
def test_keras_bn_with_tensor_training_flag_is_refused(rewrite,
                                                       v1_control_flow):
    built = _keras_bn_with_tensor_flag(v1_control_flow)
    expected = 'If' if not v1_control_flow else 'Switch'
    assert expected in {op.type for op in built.graph.get_operations()}
    error = assert_refused(built.graph, rewrite,
                           tf1_quantize.UnsupportedGraphError,
                           built.layer_op.name, 'training')
    assert 'batch_normalization/cond' in str(error)


@all_rewrites
def test_v1_cond_bn_with_tensor_training_flag_is_refused(rewrite):
    """contrib's batch_norm with a tensor is_training: Switch/Merge around
    two fused BNs after ``second/Conv2D``."""
    cond = gb.build_cond_bn_graph(v1_cond=True)
    assert len(cond.bn_op_names) == 2
    error = assert_refused(cond.graph, rewrite,
                           tf1_quantize.UnsupportedGraphError,
                           'second/Conv2D')
    assert 'second/BatchNorm/cond' in str(error)


@all_rewrites
@pytest.mark.parametrize('training', [True, False], ids=['train', 'infer'])
def test_nchw_conv_with_fused_bn_is_refused(rewrite, training):
    built = conv_bn_graph(data_format='NCHW', input_shape=(2, 3, 5, 5),
                           training=training)
    assert_refused(built.graph, rewrite, tf1_quantize.UnsupportedGraphError,
                   'test/Conv2D', 'NCHW', 'NHWC')


@pytest.mark.parametrize('rewrite', [
    tf1_quantize.create_training_graph,
    functools.partial(tf1_quantize.fold_batch_norms, is_training=True),
], ids=['create_training_graph', 'fold_batch_norms'])
@pytest.mark.parametrize('bn', ['fused', 'unfused'])
def test_training_bn_without_moving_average_updates_is_refused(rewrite, bn):
    spec = gen.GraphDesc((2, 5, 5, 3), (gen.Layer(
        0, 'conv', 4, bn=bn, activation='relu', bn_updates=False),))
    built = gen.build(spec)
    error = assert_refused(built.graph, rewrite,
                           tf1_quantize.UnsupportedGraphError, 'moving')
    assert 'L0/BatchNorm/' in str(error)


# ---------------------------------------------------------------------------
# Unknown shapes: must work (numbers checked) or be refused clearly.


UNKNOWN_SHAPE_CASES = [
    ('conv', 'fused'), ('conv', 'unfused'), ('depthwise', 'fused'),
    ('atrous', 'unfused'), ('fc', 'fused'), ('fc', 'unfused'),
]


def _unknown_shape_graph(kind, bn, training):
    """Input [None, None, None, 3] ([None, 6] for fc); layer ``L0`` (the
    graph_generator layer: 2 channels or multiplier 2, 4 units for fc)."""
    layer = gen.Layer(0, kind, 4 if kind == 'fc' else 2, bn=bn,
                      activation='relu')
    desc = gen.GraphDesc((2, 5, 5, 3), (layer,), resource=True, seed=3)
    graph = tf.Graph()
    with graph.as_default():
        shape = [None, 6] if kind == 'fc' else [None, None, None, 3]
        x = v1.placeholder(tf.float32, shape, name='unknown_input')
    return build_on(desc, x, training)


def _unknown_shape_feeds(kind):
    shapes = [[4, 6], [2, 6]] if kind == 'fc' else [[2, 5, 5, 3],
                                                    [3, 7, 3, 3]]
    return [np.random.RandomState(i).randn(*s).astype(np.float32)
            for i, s in enumerate(shapes)]


def _outputs_and_input_grads(built, feeds):
    with built.graph.as_default():
        grad = tf.gradients(tf.reduce_sum(built.output * built.output),
                            built.inputs)[0]
    return [run(built.graph, [built.output, grad], {built.inputs: f})
            for f in feeds]


@pytest.mark.parametrize('kind,bn', UNKNOWN_SHAPE_CASES,
                         ids=['-'.join(c) for c in UNKNOWN_SHAPE_CASES])
def test_unknown_shapes_training_rewrite_is_exact_or_refused(kind, bn):
    """Training rewrite with quantization and freeze in the future: outputs
    and input gradients equal the original's for two input shapes."""
    original = _unknown_shape_graph(kind, bn, training=True)
    rewritten = _unknown_shape_graph(kind, bn, training=True)
    before = graph_state(rewritten.graph)
    try:
        tf1_quantize.experimental_create_training_graph(
            rewritten.graph, quant_delay=FUTURE, freeze_bn_delay=FUTURE)
    except tf1_quantize.QuantizeError as error:
        assert 'shape' in str(error), str(error)
        assert graph_state(rewritten.graph) == before
        return
    assert fake_quant_ops(rewritten.graph), 'nothing was quantized'
    feeds = _unknown_shape_feeds(kind)
    for (want, want_grad), (got, got_grad) in zip(
            _outputs_and_input_grads(original, feeds),
            _outputs_and_input_grads(rewritten, feeds)):
        assert_scaled_close(got, want, FORWARD_TOL, 'output')
        assert_scaled_close(got_grad, want_grad, GRADIENT_TOL, 'input grad')


@pytest.mark.parametrize('kind,bn', UNKNOWN_SHAPE_CASES,
                         ids=['-'.join(c) for c in UNKNOWN_SHAPE_CASES])
def test_unknown_shapes_eval_rewrite_is_exact_or_refused(kind, bn):
    """Eval fold of an inference BN equals the original; the full eval
    rewrite then runs on both input shapes with finite outputs."""
    original = _unknown_shape_graph(kind, bn, training=False)
    rewritten = _unknown_shape_graph(kind, bn, training=False)
    before = graph_state(rewritten.graph)
    try:
        tf1_quantize.fold_batch_norms(rewritten.graph, is_training=False)
    except tf1_quantize.QuantizeError as error:
        assert 'shape' in str(error), str(error)
        assert graph_state(rewritten.graph) == before
        return
    feeds = _unknown_shape_feeds(kind)
    for feed in feeds:
        want = run(original.graph, original.output, {original.inputs: feed})
        got = run(rewritten.graph, rewritten.output,
                   {rewritten.inputs: feed})
        assert_scaled_close(got, want, FORWARD_TOL)
    tf1_quantize.create_eval_graph(rewritten.graph)
    assert fake_quant_ops(rewritten.graph), 'nothing was quantized'
    for feed in feeds:
        got = run(rewritten.graph, rewritten.output,
                   {rewritten.inputs: feed})
        assert got.shape[0] == feed.shape[0] and np.all(np.isfinite(got))


# ---------------------------------------------------------------------------
# While loops: refuse clearly or leave the loop alone.


def _while_loop_graph(v1_control_flow: bool, resource: bool,
                      training: bool) -> gb.BuiltLayer:
    """Two iterations of conv + fused BN (+ its moving-average updates in
    training mode) + Relu in a while loop, after a normal layer ``test``."""
    first = gb.build_contrib_layer(gb.LayerSpec(
        layer='conv', resource=resource, bn_training=training, seed=4))
    graph, rng = first.graph, np.random.RandomState(5)
    flow = gb.control_flow_v1 if v1_control_flow else contextlib.nullcontext
    with graph.as_default():
        with v1.variable_scope('loop', use_resource=resource):
            weights = v1.get_variable('weights', initializer=(
                0.3 * rng.randn(3, 3, 4, 4)).astype(np.float32))
            gamma = v1.get_variable('gamma', initializer=np.ones(
                4, np.float32))
            beta = v1.get_variable('beta', initializer=np.zeros(
                4, np.float32))
            moving_mean = v1.get_variable('moving_mean', initializer=np.zeros(
                4, np.float32), trainable=False)
            moving_variance = v1.get_variable(
                'moving_variance', initializer=np.ones(4, np.float32),
                trainable=False)

        def body(i, h):
            with tf.name_scope('layer'):
                y = tf.nn.conv2d(h, weights, [1, 1, 1, 1], 'SAME',
                                 name='Conv2D')
                if training:
                    y, mean, variance = v1.nn.fused_batch_norm(
                        y, gamma, beta, epsilon=gen.EPSILON,
                        is_training=True)
                    updates = [
                        gb.assign_moving_average(moving_mean, mean,
                                                 gen.MOMENTUM,
                                                 'AssignMovingAvg'),
                        gb.assign_moving_average(moving_variance, variance,
                                                 gen.MOMENTUM,
                                                 'AssignMovingAvg_1')]
                    with tf.control_dependencies(updates):
                        y = tf.identity(y)
                else:
                    y, _, _ = v1.nn.fused_batch_norm(
                        y, gamma, beta, mean=moving_mean,
                        variance=moving_variance, epsilon=gen.EPSILON,
                        is_training=False)
                return i + 1, tf.nn.relu(y, name='Relu')

        with flow():
            _, out = v1.while_loop(lambda i, h: i < 2, body,
                                   [tf.constant(0), first.output],
                                   name='while')
        out = tf.identity(out, name='output')
    return dataclasses.replace(first, output=out)


def _loop_ops(graph):
    return {n.name: n for n in graph.as_graph_def().node
            if n.name.startswith('while/')}


@pytest.mark.parametrize('name', [
    'experimental_create_training_graph', 'experimental_create_eval_graph',
    'fold_batch_norms'])
@pytest.mark.parametrize('v1_control_flow,resource', [
    (False, True), (True, False), (True, True)
], ids=['While-resource', 'v1while-ref', 'v1while-resource'])
@pytest.mark.parametrize('training', [True, False], ids=['train', 'infer'])
def test_layers_in_while_loop_are_refused_or_left_alone(
        name, v1_control_flow, resource, training):
    """Either a QuantizeError naming an op in the loop (and 'while') with
    the graph untouched, or success with every op of the loop unchanged and
    the graph running to the original output (delays in the future).

    (A functional While with ref variables cannot be built: ref variables
    cannot be assigned in its body.)
    """
    original = _while_loop_graph(v1_control_flow, resource, training)
    built = _while_loop_graph(v1_control_flow, resource, training)
    loop_before = _loop_ops(built.graph)
    library_before = built.graph.as_graph_def().library
    before = graph_state(built.graph)
    kwargs = {}
    if name == 'experimental_create_training_graph':
        kwargs = dict(quant_delay=FUTURE, freeze_bn_delay=FUTURE)
    elif name == 'fold_batch_norms':
        kwargs = dict(is_training=training)
    rewrite = REWRITES[name]
    try:
        rewrite(built.graph, **kwargs)
    except tf1_quantize.QuantizeError as error:
        message = str(error)
        assert 'while' in message.lower(), message
        assert 'while/layer/' in message, message
        assert graph_state(built.graph) == before, graph_diff(
            before[0], built.graph)
        return
    assert _loop_ops(built.graph) == loop_before, (
        'ops in the while loop were changed: %s' % graph_diff(
            before[0], built.graph))
    assert built.graph.as_graph_def().library == library_before
    batch = feed(original)
    want = run(original.graph, original.output, batch)
    got = run(built.graph, built.output, {built.inputs: batch[
        original.inputs]})
    if name == 'experimental_create_eval_graph':
        assert np.all(np.isfinite(got))  # 8-bit, default ranges
    else:
        assert_scaled_close(got, want, FORWARD_TOL)
