"""What the test_bad_inputs_*.py files share: the rewrites by name, a
conv + batch norm graph in the dtypes and layouts the rewrite refuses, and
running graphs.

A refusal must raise the documented error type, say what is wrong (naming
the op, tensor or argument and what was expected) and leave the graph
exactly as it was (`graph_checks.assert_refused`). Where the rewrite may
instead handle the input, the tests check the numbers.

Importable as ``bad_input_graphs`` (tests/ on ``sys.path``, see conftest.py).
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import builders as gb
import graph_checks as common
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


def run(graph, fetches, feed=None):  # pylint: disable=redefined-outer-name
    """Initializes the variables and runs `fetches` once."""
    with graph.as_default():
        init = v1.global_variables_initializer()
    with common.session(graph) as sess:
        sess.run(init)
        return sess.run(fetches, feed)


def assert_scaled_close(actual, expected, tol, what=''):
    scale = max(float(np.max(np.abs(expected))), 1e-6)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=tol * scale,
                               err_msg=what)


def feed(built, shape=None, seed=1):
    """A random batch for `built.inputs` (of `shape` if given)."""
    shape = shape or built.inputs.shape.as_list()
    dtype = built.inputs.dtype.as_numpy_dtype
    return {built.inputs: np.random.RandomState(seed).randn(*shape).astype(
        dtype)}


def fake_quant_ops(graph):
    """Every FakeQuant* op (any variant)."""
    return [op for op in graph.get_operations()
            if op.type.startswith('FakeQuant')]


def conv_bn_graph(*, dtype=tf.float32, data_format='NHWC',
                  input_shape=(2, 5, 5, 3), bn='fused', training=True,
                  resource=True, const_weights=False, cast_weights=False,
                  seed=0) -> gb.BuiltLayer:
    """``test``: Conv2D 3->4 (+ contrib batch norm) + Relu, raw ops.

    Args:
        dtype: dtype of the input, weights and conv.
        data_format: of the conv and the fused batch norm.
        input_shape: of the ``input`` placeholder (may hold None).
        bn: 'fused', 'unfused' or None (the batch norm's parameters are
            float32 whatever `dtype`).
        training: batch norm in training mode (with moving-average
            updates) or inference mode.
        resource: resource or ref variables.
        const_weights: the filter is a tf.constant.
        cast_weights: a float32 filter variable cast to `dtype`.
    """
    graph = tf.Graph()
    values = gb.Values(seed, normal_scale=1.0)
    with graph.as_default():
        x = v1.placeholder(dtype, input_shape, name='input')
        with v1.variable_scope('test', use_resource=resource):
            value = values.normal((3, 3, 3, 4), 0.3)
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
            norm = None
            if bn:
                norm = gb.batch_norm(values, y, fused=bn == 'fused',
                                     training=training, momentum=gen.MOMENTUM,
                                     data_format=data_format)
                y = norm.output
            y = tf.nn.relu(y, name='Relu')
    variables = norm.variables if norm else (None,) * 4
    return gb.BuiltLayer(
        graph=graph, inputs=x, output=y, layer_op=layer_op, pre_bn=pre_bn,
        bn_op=None, bn_output=None, weights=weights, gamma=variables[0],
        beta=variables[1], moving_mean=variables[2],
        moving_variance=variables[3], epsilon=gen.EPSILON,
        update_ops=norm.update_ops if norm else [], scope='test',
        activation='relu')


def build_on(desc, x, training):
    """gen.build on tensor `x`; its last tensor is the `output`."""
    built = gen.build(desc, bn_training=training, inputs=x)
    return gb.BuiltLayer(
        graph=built.graph, inputs=x, output=built.tensors[-1], layer_op=None,
        pre_bn=None, bn_op=None, bn_output=None, weights=None, gamma=None,
        beta=None, moving_mean=None, moving_variance=None,
        epsilon=gen.EPSILON, update_ops=built.update_ops, scope='L0')
