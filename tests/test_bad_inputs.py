"""Graphs and arguments the rewrite must refuse cleanly, or handle correctly.

A refusal must raise the documented error type, say what is wrong (naming
the op, tensor or argument and what was expected) and leave the graph
exactly as it was: the deterministic GraphDef serialization and every
collection are compared before and after the call. Where the rewrite may
instead handle the input (unknown shapes, const weights, loops it leaves
alone), the test checks the numbers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import Callable

import numpy as np
import pytest
import tensorflow as tf

import graph_builders as gb
import graph_generator as gen

import tf1_quantize

v1 = tf.compat.v1

FUTURE = 10**6
FORWARD_TOL = 1e-4
GRADIENT_TOL = 2e-3

REWRITES = {
    'create_training_graph': tf1_quantize.create_training_graph,
    'create_eval_graph': tf1_quantize.create_eval_graph,
    'experimental_create_training_graph':
        tf1_quantize.experimental_create_training_graph,
    'experimental_create_eval_graph':
        tf1_quantize.experimental_create_eval_graph,
    'fold_batch_norms': tf1_quantize.fold_batch_norms,
}
QUANTIZE_REWRITES = {k: f for k, f in REWRITES.items()
                     if k != 'fold_batch_norms'}
all_rewrites = pytest.mark.parametrize('rewrite', list(REWRITES.values()),
                                       ids=list(REWRITES))
quantize_rewrites = pytest.mark.parametrize(
    'rewrite', list(QUANTIZE_REWRITES.values()), ids=list(QUANTIZE_REWRITES))


def assert_refused(graph: tf.Graph, rewrite: Callable, error_type,
                   *fragments: str, **kwargs) -> BaseException:
    """`rewrite(graph, **kwargs)` raises `error_type` whose message contains
    every fragment, and the graph is unchanged."""
    before = gen.graph_state(graph)
    with pytest.raises(error_type) as info:
        rewrite(graph, **kwargs)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    after = gen.graph_state(graph)
    assert after[0] == before[0], 'the GraphDef changed: %s' % _diff(
        before[0], graph)
    assert after[1] == before[1], 'the collections changed'
    return info.value


def _diff(before: bytes, graph: tf.Graph) -> str:
    """New and modified node names, for failure messages."""
    old = {n.name: n for n in v1.GraphDef.FromString(before).node}
    new, changed = [], []
    for node in graph.as_graph_def().node:
        if node.name not in old:
            new.append(node.name)
        elif node != old[node.name]:
            changed.append(node.name)
    return 'new ops %s, changed ops %s' % (new[:10], changed[:10])


def _run(graph, fetches, feed=None):
    with graph.as_default():
        init = v1.global_variables_initializer()
    with gen.session(graph) as sess:
        sess.run(init)
        return sess.run(fetches, feed)


def assert_scaled_close(actual, expected, tol, what=''):
    scale = max(float(np.max(np.abs(expected))), 1e-6)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=tol * scale,
                               err_msg=what)


def _conv_bn_graph(*, dtype=tf.float32, data_format='NHWC',
                   input_shape=(2, 5, 5, 3), bn='fused', training=True,
                   resource=True, const_weights=False, cast_weights=False,
                   seed=0) -> gb.BuiltLayer:
    """``test``: Conv2D 3->4 (+ contrib batch norm) + Relu, raw ops.

    Args:
        dtype: dtype of the input, weights and conv.
        data_format: of the conv and the fused batch norm.
        input_shape: of the ``input`` placeholder (may hold None).
        bn: 'fused', 'unfused' or None.
        training: batch norm in training mode (with moving-average
            updates) or inference mode.
        resource: resource or ref variables.
        const_weights: the filter is a tf.constant.
        cast_weights: a float32 filter variable cast to `dtype`.
    """
    graph = tf.Graph()
    rng = np.random.RandomState(seed)
    with graph.as_default():
        x = v1.placeholder(dtype, input_shape, name='input')
        with v1.variable_scope('test', use_resource=resource):
            value = (0.3 * rng.randn(3, 3, 3, 4)).astype(np.float32)
            if const_weights:
                weights = tf.constant(value, name='weights')
            elif cast_weights:
                weights = v1.get_variable(
                    'weights', initializer=value)
                weights = tf.cast(weights, dtype, name='Cast')
            else:
                weights = v1.get_variable(
                    'weights', initializer=value.astype(dtype.as_numpy_dtype))
            y = tf.nn.conv2d(x, weights, [1, 1, 1, 1], 'SAME',
                             data_format=data_format, name='Conv2D')
            layer_op = y.op
            pre_bn = y
            updates, variables = [], [None] * 4
            if bn == 'fused':
                y, variables, updates = _fused_bn(y, rng, training,
                                                  data_format)
            elif bn == 'unfused':
                y, variables, updates = gen.contrib_batch_norm(
                    gen.seeded_values(seed), gen.Layer(0, 'conv', 4, bn=bn),
                    y, training)
            y = tf.nn.relu(y, name='Relu')
    return gb.BuiltLayer(
        graph=graph, inputs=x, output=y, layer_op=layer_op, pre_bn=pre_bn,
        bn_op=None, bn_output=None, weights=weights, gamma=variables[0],
        beta=variables[1], moving_mean=variables[2],
        moving_variance=variables[3], epsilon=gen.EPSILON,
        update_ops=updates, scope='test', activation='relu')


def _fused_bn(y, rng, training, data_format):
    """A contrib-named fused batch norm (float32 parameters, any x dtype)."""
    with v1.variable_scope('BatchNorm'):
        gamma = v1.get_variable('gamma', initializer=rng.uniform(
            0.5, 1.5, 4).astype(np.float32))
        beta = v1.get_variable('beta', initializer=rng.randn(4).astype(
            np.float32))
        moving_mean = v1.get_variable('moving_mean', initializer=rng.randn(
            4).astype(np.float32), trainable=False)
        moving_variance = v1.get_variable(
            'moving_variance', initializer=rng.uniform(0.5, 1.5, 4).astype(
                np.float32), trainable=False)
        if training:
            y, mean, variance = v1.nn.fused_batch_norm(
                y, gamma, beta, epsilon=gen.EPSILON, is_training=True,
                data_format=data_format)
            updates = [
                gen.assign_moving_average(
                    moving_mean, mean, 'AssignMovingAvg'),
                gen.assign_moving_average(
                    moving_variance, variance, 'AssignMovingAvg_1'),
            ]
        else:
            y, _, _ = v1.nn.fused_batch_norm(
                y, gamma, beta, mean=moving_mean, variance=moving_variance,
                epsilon=gen.EPSILON, is_training=False,
                data_format=data_format)
            updates = []
    return y, (gamma, beta, moving_mean, moving_variance), updates


def _feed(built, shape=None, seed=1):
    shape = shape or built.inputs.shape.as_list()
    dtype = built.inputs.dtype.as_numpy_dtype
    return {built.inputs: np.random.RandomState(seed).randn(*shape).astype(
        dtype)}


def _fake_quants(graph):
    return [op for op in graph.get_operations()
            if op.type.startswith('FakeQuant')]


# ---------------------------------------------------------------------------
# Arguments.


@all_rewrites
@pytest.mark.parametrize('bad', [
    'graph', 42, [], v1.GraphDef(), tf.Graph,
], ids=['str', 'int', 'list', 'GraphDef', 'Graph-class'])
def test_non_graph_argument_raises_type_error(rewrite, bad):
    built = gb.build_contrib_layer(gb.LayerSpec())
    before = gen.graph_state(built.graph)
    with built.graph.as_default():
        with pytest.raises(TypeError) as info:
            rewrite(bad)
    message = str(info.value)
    assert 'tf.Graph' in message and type(bad).__name__ in message, message
    assert gen.graph_state(built.graph) == before, (
        'the default graph changed')


@pytest.mark.parametrize('name', [
    'experimental_create_training_graph', 'experimental_create_eval_graph'])
@pytest.mark.parametrize('argument', ['weight_bits', 'activation_bits'])
@pytest.mark.parametrize('bits', [-8, 0, 1, 17, 32, 8.0, True],
                         ids=lambda b: repr(b))
def test_bits_outside_2_to_16_are_refused(name, argument, bits):
    built = gb.build_contrib_layer(gb.LayerSpec())
    error = assert_refused(built.graph, REWRITES[name], ValueError, argument,
                           '2', '16', **{argument: bits})
    assert repr(bits) in str(error)


@pytest.mark.parametrize('bits', [2, 16])
def test_bits_2_and_16_are_accepted(bits):
    built = gb.build_contrib_layer(gb.LayerSpec())
    tf1_quantize.experimental_create_training_graph(
        built.graph, weight_bits=bits, activation_bits=bits)
    fake_quants = _fake_quants(built.graph)
    assert fake_quants
    assert {op.get_attr('num_bits') for op in fake_quants} == {bits}


@pytest.mark.parametrize('name,argument', [
    ('create_training_graph', 'quant_delay'),
    ('experimental_create_training_graph', 'quant_delay'),
    ('experimental_create_training_graph', 'freeze_bn_delay'),
    ('experimental_create_eval_graph', 'quant_delay'),
    ('fold_batch_norms', 'freeze_bn_delay'),
])
@pytest.mark.parametrize('delay', [-1, -1000, 2.5], ids=repr)
def test_negative_or_fractional_delays_are_refused(name, argument, delay):
    built = gb.build_contrib_layer(gb.LayerSpec())
    error = assert_refused(built.graph, REWRITES[name], ValueError, argument,
                           **{argument: delay})
    assert repr(delay) in str(error)


# ---------------------------------------------------------------------------
# Graph states.


@all_rewrites
def test_finalized_graph_is_refused(rewrite):
    built = gb.build_contrib_layer(gb.LayerSpec())
    built.graph.finalize()
    assert_refused(built.graph, rewrite, tf1_quantize.QuantizeError,
                   'finalized')


@quantize_rewrites
@pytest.mark.parametrize('resource', [False, True], ids=['ref', 'resource'])
@pytest.mark.parametrize('optimizer', ['GradientDescent', 'Adam'])
def test_optimizer_ops_already_present_are_refused(rewrite, resource,
                                                   optimizer):
    built = gb.build_contrib_layer(gb.LayerSpec(resource=resource))
    with built.graph.as_default():
        loss = tf.reduce_sum(built.output)
        if optimizer == 'Adam':
            v1.train.AdamOptimizer(1e-3).minimize(loss)
        else:
            v1.train.GradientDescentOptimizer(1e-3).minimize(loss)
    op_type = ('ResourceApply' if resource else 'Apply') + optimizer
    assert op_type in {op.type for op in built.graph.get_operations()}
    assert_refused(built.graph, rewrite, tf1_quantize.QuantizeError,
                   'Training op found in graph', op_type)


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
    built = _conv_bn_graph(data_format='NCHW', input_shape=(2, 3, 5, 5),
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
    return _build_on(desc, x, training)


def _build_on(desc, x, training):
    """gen.build on tensor `x`; its last tensor is the `output`."""
    built = gen.build(desc, bn_training=training, inputs=x)
    return gb.BuiltLayer(
        graph=built.graph, inputs=x, output=built.tensors[-1], layer_op=None,
        pre_bn=None, bn_op=None, bn_output=None, weights=None, gamma=None,
        beta=None, moving_mean=None, moving_variance=None,
        epsilon=gen.EPSILON, update_ops=built.update_ops, scope='L0')


def _unknown_shape_feeds(kind):
    shapes = [[4, 6], [2, 6]] if kind == 'fc' else [[2, 5, 5, 3],
                                                    [3, 7, 3, 3]]
    return [np.random.RandomState(i).randn(*s).astype(np.float32)
            for i, s in enumerate(shapes)]


def _outputs_and_input_grads(built, feeds):
    with built.graph.as_default():
        grad = tf.gradients(tf.reduce_sum(built.output * built.output),
                            built.inputs)[0]
    return [_run(built.graph, [built.output, grad], {built.inputs: f})
            for f in feeds]


@pytest.mark.parametrize('kind,bn', UNKNOWN_SHAPE_CASES,
                         ids=['-'.join(c) for c in UNKNOWN_SHAPE_CASES])
def test_unknown_shapes_training_rewrite_is_exact_or_refused(kind, bn):
    """Training rewrite with quantization and freeze in the future: outputs
    and input gradients equal the original's for two input shapes."""
    original = _unknown_shape_graph(kind, bn, training=True)
    rewritten = _unknown_shape_graph(kind, bn, training=True)
    before = gen.graph_state(rewritten.graph)
    try:
        tf1_quantize.experimental_create_training_graph(
            rewritten.graph, quant_delay=FUTURE, freeze_bn_delay=FUTURE)
    except tf1_quantize.QuantizeError as error:
        assert 'shape' in str(error), str(error)
        assert gen.graph_state(rewritten.graph) == before
        return
    assert _fake_quants(rewritten.graph), 'nothing was quantized'
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
    before = gen.graph_state(rewritten.graph)
    try:
        tf1_quantize.fold_batch_norms(rewritten.graph, is_training=False)
    except tf1_quantize.QuantizeError as error:
        assert 'shape' in str(error), str(error)
        assert gen.graph_state(rewritten.graph) == before
        return
    feeds = _unknown_shape_feeds(kind)
    for feed in feeds:
        want = _run(original.graph, original.output, {original.inputs: feed})
        got = _run(rewritten.graph, rewritten.output,
                   {rewritten.inputs: feed})
        assert_scaled_close(got, want, FORWARD_TOL)
    tf1_quantize.create_eval_graph(rewritten.graph)
    assert _fake_quants(rewritten.graph), 'nothing was quantized'
    for feed in feeds:
        got = _run(rewritten.graph, rewritten.output,
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
                        gen.assign_moving_average(
                            moving_mean, mean, 'AssignMovingAvg'),
                        gen.assign_moving_average(
                            moving_variance, variance, 'AssignMovingAvg_1')]
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
    before = gen.graph_state(built.graph)
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
        assert gen.graph_state(built.graph) == before, _diff(before[0],
                                                             built.graph)
        return
    assert _loop_ops(built.graph) == loop_before, (
        'ops in the while loop were changed: %s' % _diff(before[0],
                                                         built.graph))
    assert built.graph.as_graph_def().library == library_before
    feed = _feed(original)
    want = _run(original.graph, original.output, feed)
    got = _run(built.graph, built.output, {built.inputs: feed[
        original.inputs]})
    if name == 'experimental_create_eval_graph':
        assert np.all(np.isfinite(got))  # 8-bit, default ranges
    else:
        assert_scaled_close(got, want, FORWARD_TOL)


# ---------------------------------------------------------------------------
# Weights the rewrite cannot quantize.


@all_rewrites
def test_const_weights_are_not_quantized(rewrite):
    """A Conv2D whose filter is a tf.constant (no BN; bias + Relu) is not a
    quantizable layer: the call succeeds, no FakeQuant reads the constant
    and the graph computes exactly what it did (the graph is unchanged)."""
    built = _conv_bn_graph(bn=None, const_weights=True)
    feed = _feed(built)
    want = _run(built.graph, built.output, feed)
    before = gen.graph_state(built.graph)
    rewrite(built.graph)
    assert not _fake_quants(built.graph)
    assert built.layer_op.inputs[1].op.type == 'Const'
    assert gen.graph_state(built.graph)[0] == before[0], _diff(before[0],
                                                               built.graph)
    np.testing.assert_array_equal(_run(built.graph, built.output, feed),
                                  want)


@pytest.mark.parametrize('training', [True, False], ids=['train', 'infer'])
def test_const_weights_with_bn_next_to_a_normal_layer(training):
    """A const-weight conv + BN after a normal quantized layer: the call
    succeeds, the normal layer is quantized, the const filter is not, and
    with delays in the future the output is the original's."""
    desc = gen.GraphDesc((2, 5, 5, 3), (
        gen.Layer(0, 'conv', 3, bn='fused', activation='relu6'),
        gen.Layer(1, 'conv', 4, bn='fused', activation='relu',
                  const_weights=True)), resource=True, seed=6)
    original, built = gen.build(desc, bn_training=training), gen.build(
        desc, bn_training=training)
    tf1_quantize.experimental_create_training_graph(
        built.graph, quant_delay=FUTURE, freeze_bn_delay=FUTURE)
    quantized = {op.name for op in _fake_quants(built.graph)}
    assert any(name.startswith('L0/weights_quant/') for name in quantized)
    const = built.graph.get_operation_by_name('L1/weights')
    for consumer in const.outputs[0].consumers():
        assert not consumer.type.startswith('FakeQuant')
    want = _run(original.graph, original.outputs(), original.feed)
    got = _run(built.graph, built.outputs(), built.feed)
    for a, b in zip(got, want):
        assert_scaled_close(a, b, FORWARD_TOL)


@all_rewrites
@pytest.mark.parametrize('bn', ['fused', None])
@pytest.mark.parametrize('dtype', [tf.float16, tf.bfloat16])
def test_half_precision_layers_are_refused(rewrite, bn, dtype):
    """float16 / bfloat16 conv (+ fused BN with float32 parameters)."""
    built = _conv_bn_graph(dtype=dtype, bn=bn, training=False)
    assert_refused(built.graph, rewrite, tf1_quantize.UnsupportedGraphError,
                   'test/Conv2D', dtype.name, 'float32')


@all_rewrites
def test_float16_matmul_is_refused(rewrite):
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float16, [2, 6], name='input')
        with v1.variable_scope('fc'):
            w = v1.get_variable('weights', [6, 3], tf.float16)
            tf.nn.relu(tf.matmul(x, w, name='MatMul'))
    assert_refused(graph, rewrite, tf1_quantize.UnsupportedGraphError,
                   'fc/MatMul', 'float16')


@all_rewrites
def test_int32_matmul_is_refused(rewrite):
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.int32, [2, 6], name='input')
        with v1.variable_scope('fc'):
            w = v1.get_variable('weights', [6, 3], tf.int32,
                                initializer=v1.zeros_initializer())
            tf.nn.relu(tf.matmul(x, w, name='MatMul'))
    assert_refused(graph, rewrite, tf1_quantize.UnsupportedGraphError,
                   'fc/MatMul', 'int32')


@all_rewrites
def test_mixed_precision_cast_weights_are_refused_or_untouched(rewrite):
    """float32 variables cast to float16 for a float16 conv + fused BN: not
    a quantizable layer (Cast weights) or refused; never half-rewritten."""
    built = _conv_bn_graph(dtype=tf.float16, cast_weights=True,
                           training=False)
    before = gen.graph_state(built.graph)
    try:
        rewrite(built.graph)
    except tf1_quantize.QuantizeError as error:
        assert 'test/Conv2D' in str(error) and 'float16' in str(error)
        assert gen.graph_state(built.graph) == before
        return
    assert gen.graph_state(built.graph)[0] == before[0], _diff(before[0],
                                                               built.graph)


@all_rewrites
@pytest.mark.parametrize('training', [True, False], ids=['train', 'infer'])
def test_float16_batch_norm_without_layer_is_refused_or_untouched(rewrite,
                                                                  training):
    """A fused batch norm on a float16 tensor (float32 parameters) that no
    layer precedes: a clear refusal naming the batch norm and the dtype, or
    the graph left as it was; never a half-rewritten graph."""
    graph = tf.Graph()
    rng = np.random.RandomState(0)
    with graph.as_default():
        x = v1.placeholder(tf.float16, [2, 5, 5, 4], name='input')
        with v1.variable_scope('norm'):
            y, _, _ = _fused_bn(x, rng, training, 'NHWC')
        tf.nn.relu(y, name='Relu')
    before = gen.graph_state(graph)
    try:
        rewrite(graph)
    except tf1_quantize.QuantizeError as error:
        assert 'norm/BatchNorm/FusedBatchNormV3' in str(error), str(error)
        assert 'float16' in str(error), str(error)
        assert gen.graph_state(graph) == before
        return
    assert gen.graph_state(graph)[0] == before[0], _diff(before[0], graph)


@pytest.mark.parametrize('bn', ['fused', 'unfused'])
def test_int8_input_cast_to_float_is_quantized_normally(bn):
    """An int8 input cast to float32 before a normal conv + BN: the layer is
    quantized and (delays in the future) computes the original output."""
    desc = gen.GraphDesc((2, 5, 5, 3), (gen.Layer(
        0, 'conv', 4, bn=bn, activation='relu'),), resource=True, seed=7)
    graphs = []
    for _ in range(2):
        graph = tf.Graph()
        with graph.as_default():
            x = v1.placeholder(tf.int8, desc.input_shape, name='input_int8')
            x_float = tf.cast(x, tf.float32, name='to_float')
        graphs.append((_build_on(desc, x_float, True), x))
    (original, x0), (built, x1) = graphs
    tf1_quantize.experimental_create_training_graph(
        built.graph, quant_delay=FUTURE, freeze_bn_delay=FUTURE)
    assert any(op.name.startswith('L0/weights_quant/')
               for op in _fake_quants(built.graph))
    value = np.random.RandomState(2).randint(-128, 128, desc.input_shape)
    want = _run(original.graph, original.output, {x0: value})
    got = _run(built.graph, built.output, {x1: value})
    assert_scaled_close(got, want, FORWARD_TOL)


# ---------------------------------------------------------------------------
# Gradients already built (no optimizer).


@pytest.mark.parametrize('rewrite', [
    functools.partial(tf1_quantize.experimental_create_training_graph,
                      quant_delay=FUTURE, freeze_bn_delay=FUTURE),
    functools.partial(tf1_quantize.fold_batch_norms, is_training=True),
], ids=['experimental_create_training_graph', 'fold_batch_norms'])
@pytest.mark.parametrize('spec', [
    gb.LayerSpec(bn='fused', activation='relu6'),
    gb.LayerSpec(bn='unfused', resource=True, residual=True),
    gb.LayerSpec(layer='depthwise', bn='fused', activation='relu'),
    gb.LayerSpec(layer='fc', bn='unfused', activation='relu'),
], ids=lambda s: s.id)
def test_existing_gradient_ops_are_not_modified(rewrite, spec):
    """`tf.compat.v1.gradients` already built, no optimizer: the rewrite
    changes no op under ``gradients/``, the forward output is the original's
    and the existing gradient tensors still give the original gradients."""
    def build():
        built = gb.build_contrib_layer(dataclasses.replace(spec, seed=8))
        with built.graph.as_default():
            loss = tf.reduce_sum(built.output * built.output, name='loss')
            variables = sorted(v1.trainable_variables(),
                               key=lambda v: v.op.name)
            grads = tf.gradients(loss, [built.inputs] + variables)
        return built, grads

    original, original_grads = build()
    built, grads = build()
    gradient_nodes = {n.name: n for n in built.graph.as_graph_def().node
                      if n.name.startswith('gradients/')}
    assert gradient_nodes
    rewrite(built.graph)
    after = {n.name: n for n in built.graph.as_graph_def().node
             if n.name.startswith('gradients/')}
    changed = [name for name in gradient_nodes
               if after.get(name) != gradient_nodes[name]]
    assert not changed, 'gradient ops modified: %s' % changed[:10]
    assert set(after) == set(gradient_nodes), 'ops added under gradients/'
    feed = built.feeds(1)[0]
    want, want_grads = _run(original.graph,
                            [original.output, original_grads],
                            {original.inputs: feed[built.inputs]})
    got, got_grads = _run(built.graph, [built.output, grads], feed)
    assert_scaled_close(got, want, FORWARD_TOL, 'forward output')
    for index, (a, b) in enumerate(zip(got_grads, want_grads)):
        assert_scaled_close(a, b, GRADIENT_TOL, 'gradient %d' % index)
