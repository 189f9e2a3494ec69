"""Tests for `gradients`: TF's values, without update-op edges."""

import contextlib
import functools

import numpy as np
import pytest
import tensorflow as tf

import graph_checks
from tf1_quantize import gradients

v1 = tf.compat.v1

BINARY = {
    'Mul': tf.raw_ops.Mul,
    'AddV2': tf.raw_ops.AddV2,
    'Add': tf.raw_ops.Add,
    'RealDiv': tf.raw_ops.RealDiv,
}
# (x shape, y shape), None for a size known only at run time.
SHAPES = [
    ([2, 3, 3, 4], [4]),         # a per-channel vector, as in the folds
    ([4], [2, 3, 3, 4]),
    ([3, 3, 4, 1], [4, 1]),      # a depthwise fold's reshaped scale
    ([2, 1, 4], [3, 1]),         # both broadcast
    ([2, 3], [2, 3]),            # no broadcast
    ([], [2, 3]),
    ([None, 3, 4], [4]),         # static axes, run-time shape
    ([None, 3], [None, 3]),      # broadcasting decided at run time
    (None, [3]),                 # unknown rank
]


def _feed_shape(shape):
    if shape is None:
        return [2, 3]
    return [2 if d is None else d for d in shape]


def _gradients(op_type, x_shape, y_shape, override, seed=0):
    """d sum(op(x, y) * w) / dx, dy, and the graph."""
    rng = np.random.RandomState(seed)
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, x_shape)
        y = v1.placeholder(tf.float32, y_shape)
        if override:
            with gradients.shared_constant_gradients():
                out = BINARY[op_type](x=x, y=y)
        else:
            out = BINARY[op_type](x=x, y=y)
        weights = rng.randn(*_out_shape(x_shape, y_shape)).astype(np.float32)
        loss = tf.reduce_sum(out * weights)
        grads = tf.gradients(loss, [x, y])
    feed = {x: np.asarray(rng.randn(*_feed_shape(x_shape)), np.float32),
            y: rng.uniform(0.5, 2.0, _feed_shape(y_shape)).astype(np.float32)}
    with v1.Session(graph=graph) as session:
        return session.run(grads, feed), graph


def _out_shape(x_shape, y_shape):
    return np.broadcast_shapes(tuple(_feed_shape(x_shape)),
                               tuple(_feed_shape(y_shape)))


@pytest.mark.parametrize('op_type', sorted(BINARY))
@pytest.mark.parametrize('shapes', SHAPES, ids=str)
def test_binary_gradients_equal_tensorflows_bit_for_bit(op_type, shapes):
    expected, _ = _gradients(op_type, *shapes, override=False)
    got, graph = _gradients(op_type, *shapes, override=True)
    op = next(o for o in graph.get_operations() if o.type == op_type)
    assert op.get_attr('_gradient_op_type').decode().startswith('Tf1Quantize')
    for want, have in zip(expected, got):
        assert want.shape == have.shape
        assert want.tobytes() == have.tobytes()


@pytest.mark.parametrize('shape', [[2, 3], [40, 40], [None, 3]], ids=str)
def test_select_gradient_equals_tensorflows(shape):
    results = []
    for override in (False, True):
        graph = tf.Graph()
        with graph.as_default():
            pred = v1.placeholder(tf.bool, [])
            x = v1.placeholder(tf.float32, shape)
            y = v1.placeholder(tf.float32, shape)
            if override:
                with gradients.shared_constant_gradients():
                    out = tf.raw_ops.Select(condition=pred, x=x, y=y)
            else:
                out = tf.raw_ops.Select(condition=pred, x=x, y=y)
            grads = tf.gradients(tf.reduce_sum(out * out), [x, y])
        values = np.random.RandomState(1).randn(
            2, *_feed_shape(shape)).astype(np.float32)
        with v1.Session(graph=graph) as session:
            results.append([session.run(grads, {pred: p, x: values[0],
                                                y: values[1]})
                            for p in (True, False)])
    for want, have in zip(np.ravel(results[0]), np.ravel(results[1])):
        assert want.tobytes() == have.tobytes()


def test_gradients_built_under_update_ops_take_no_needless_edges():
    """Constants and forward-only ops of these gradients take none of the
    script's update-op edges; the gradients still wait for the updates."""
    graph = tf.Graph()
    with graph.as_default():
        x = v1.get_variable('x', [2, 3, 3, 4])
        y = v1.get_variable('y', [4])
        pred = v1.placeholder(tf.bool, [])
        with gradients.shared_constant_gradients():
            out = tf.raw_ops.Mul(x=x, y=y)
            out = tf.raw_ops.AddV2(x=out, y=y)
            out = tf.raw_ops.RealDiv(x=out, y=y)
            out = tf.raw_ops.Select(condition=pred, x=out, y=x)
        loss = tf.reduce_sum(out)
        update = v1.assign_add(v1.get_variable('counter', []), 1.0)
        with tf.control_dependencies([update]):
            grad_x, grad_y = tf.gradients(loss, [x, y])
    ours = [op for op in graph.get_operations()
            if op.name.startswith('gradients/')
            and op.name.split('/')[1].split('_grad')[0] in (
                'Mul', 'AddV2', 'RealDiv', 'Select')]
    assert ours
    needless = [op.name for op in ours
                if op.control_inputs and not _reads_gradient(op)]
    assert not needless
    for grad in (grad_x, grad_y):
        assert update.op in graph_checks.ancestors(grad.op)


def _reads_gradient(op):
    return any(t.op.name.startswith('gradients') for t in op.inputs)


STOPPED_OPERANDS = {
    'const': tf.constant,
    'stop_gradient': lambda value: tf.stop_gradient(tf.Variable(value)),
    'reshaped_stop_gradient': lambda value: tf.reshape(
        tf.identity(tf.stop_gradient(tf.Variable(value))), value.shape),
}


def _stopped_operand_graph(op_type, kind, override):
    """`op(x, c) * op(c, x)` for a placeholder x and an operand c that
    stops gradients, and the gradients w.r.t. x and c."""
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [2, 3, 3, 4])
        pred = v1.placeholder(tf.bool, [])
        channels = np.linspace(0.5, 2.0, 4, dtype=np.float32)
        if op_type == 'Select':  # Select takes operands of one shape.
            c = STOPPED_OPERANDS[kind](np.tile(channels, (2, 3, 3, 1)))
            build = functools.partial(tf.raw_ops.Select, condition=pred)
        else:
            c = STOPPED_OPERANDS[kind](channels)
            build = BINARY[op_type]
        with (gradients.shared_constant_gradients() if override
              else contextlib.nullcontext()):
            out = build(x=x, y=c) * build(x=c, y=x)
        grads = tf.gradients(tf.reduce_sum(out * out), [x, c])
    return graph, x, pred, grads


@pytest.mark.parametrize('kind', sorted(STOPPED_OPERANDS))
@pytest.mark.parametrize('op_type', sorted(BINARY) + ['Select'])
def test_operands_that_stop_gradients_get_none(op_type, kind):
    """A constant or stop_gradient input gets None and no ops; the other
    input's gradient is TF's, bit for bit."""
    values = np.random.RandomState(2).randn(2, 3, 3, 4).astype(np.float32)
    results = []
    for override in (False, True):
        graph, x, pred, grads = _stopped_operand_graph(op_type, kind,
                                                       override)
        assert (grads[1] is None) == override
        with v1.Session(graph=graph) as session:
            session.run(v1.global_variables_initializer())
            results.append([session.run(grads[0], {x: values, pred: p})
                            for p in (True, False)])
        if override:
            gradient_ops = [op.name for op in graph.get_operations()
                            if op.name.startswith('gradients/')
                            and f'{op_type}_grad' in op.name]
            # One gradient each: nothing gated in a `tuple`.
            assert not [n for n in gradient_ops if '/tuple/' in n]
    for want, have in zip(results[0], results[1]):
        assert want.tobytes() == have.tobytes()
