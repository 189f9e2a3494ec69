"""Weights the rewrite cannot quantize (constants, other dtypes) and
gradients already built: refused cleanly, or handled correctly.

What a refusal must do, and the shared graphs: bad_input_graphs.py.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest
import tensorflow as tf

import builders as gb
import graph_generator as gen
from bad_input_graphs import (FORWARD_TOL, FUTURE, GRADIENT_TOL,
                              all_rewrites, assert_scaled_close, build_on,
                              conv_bn_graph,
                              fake_quant_ops, feed, run)
from graph_checks import assert_refused, graph_diff, graph_state

import tf1_quantize

v1 = tf.compat.v1


# ---------------------------------------------------------------------------
# Weights the rewrite cannot quantize.


@all_rewrites
def test_const_weights_are_not_quantized(rewrite):
    """A Conv2D whose filter is a tf.constant (no BN; bias + Relu) is not a
    quantizable layer: the call succeeds, no FakeQuant reads the constant
    and the graph computes exactly what it did (the graph is unchanged)."""
    built = conv_bn_graph(bn=None, const_weights=True)
    batch = feed(built)
    want = run(built.graph, built.output, batch)
    before = graph_state(built.graph)
    rewrite(built.graph)
    assert not fake_quant_ops(built.graph)
    assert built.layer_op.inputs[1].op.type == 'Const'
    assert graph_state(built.graph)[0] == before[0], graph_diff(before[0],
                                                               built.graph)
    np.testing.assert_array_equal(run(built.graph, built.output, batch),
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
    quantized = {op.name for op in fake_quant_ops(built.graph)}
    assert any(name.startswith('L0/weights_quant/') for name in quantized)
    const = built.graph.get_operation_by_name('L1/weights')
    for consumer in const.outputs[0].consumers():
        assert not consumer.type.startswith('FakeQuant')
    want = run(original.graph, original.outputs(), original.feed)
    got = run(built.graph, built.outputs(), built.feed)
    for a, b in zip(got, want):
        assert_scaled_close(a, b, FORWARD_TOL)


@all_rewrites
@pytest.mark.parametrize('bn', ['fused', None])
@pytest.mark.parametrize('dtype', [tf.float16, tf.bfloat16])
def test_half_precision_layers_are_refused(rewrite, bn, dtype):
    """float16 / bfloat16 conv (+ fused BN with float32 parameters)."""
    built = conv_bn_graph(dtype=dtype, bn=bn, training=False)
    assert_refused(built.graph, rewrite, tf1_quantize.UnsupportedGraphError,
                   'test/Conv2D', dtype.name, 'float32')


def _fc_graph(dtype, initializer=None) -> tf.Graph:
    """``fc/MatMul`` of a `dtype` input and `dtype` weights, then Relu."""
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(dtype, [2, 6], name='input')
        with v1.variable_scope('fc'):
            w = v1.get_variable('weights', [6, 3], dtype,
                                initializer=initializer)
            tf.nn.relu(tf.matmul(x, w, name='MatMul'))
    return graph


@all_rewrites
def test_float16_matmul_is_refused(rewrite):
    graph = _fc_graph(tf.float16)
    assert_refused(graph, rewrite, tf1_quantize.UnsupportedGraphError,
                   'fc/MatMul', 'float16')


@all_rewrites
def test_int32_matmul_is_refused(rewrite):
    graph = _fc_graph(tf.int32, v1.zeros_initializer())
    assert_refused(graph, rewrite, tf1_quantize.UnsupportedGraphError,
                   'fc/MatMul', 'int32')


@all_rewrites
def test_mixed_precision_cast_weights_are_refused_or_untouched(rewrite):
    """float32 variables cast to float16 for a float16 conv + fused BN: not
    a quantizable layer (Cast weights) or refused; never half-rewritten."""
    built = conv_bn_graph(dtype=tf.float16, cast_weights=True,
                           training=False)
    before = graph_state(built.graph)
    try:
        rewrite(built.graph)
    except tf1_quantize.QuantizeError as error:
        assert 'test/Conv2D' in str(error) and 'float16' in str(error)
        assert graph_state(built.graph) == before
        return
    assert graph_state(built.graph)[0] == before[0], graph_diff(before[0],
                                                               built.graph)


@all_rewrites
@pytest.mark.parametrize('training', [True, False], ids=['train', 'infer'])
def test_float16_batch_norm_without_layer_is_refused_or_untouched(rewrite,
                                                                  training):
    """A fused batch norm on a float16 tensor (float32 parameters) that no
    layer precedes: a clear refusal naming the batch norm and the dtype, or
    the graph left as it was; never a half-rewritten graph."""
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float16, [2, 5, 5, 4], name='input')
        with v1.variable_scope('norm'):
            y = gb.batch_norm(gb.Values(0, normal_scale=1.0), x,
                              training=training, momentum=gen.MOMENTUM).output
        tf.nn.relu(y, name='Relu')
    before = graph_state(graph)
    try:
        rewrite(graph)
    except tf1_quantize.QuantizeError as error:
        assert 'norm/BatchNorm/FusedBatchNormV3' in str(error), str(error)
        assert 'float16' in str(error), str(error)
        assert graph_state(graph) == before
        return
    assert graph_state(graph)[0] == before[0], graph_diff(before[0], graph)


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
        graphs.append((build_on(desc, x_float, True), x))
    (original, x0), (built, x1) = graphs
    tf1_quantize.experimental_create_training_graph(
        built.graph, quant_delay=FUTURE, freeze_bn_delay=FUTURE)
    assert any(op.name.startswith('L0/weights_quant/')
               for op in fake_quant_ops(built.graph))
    value = np.random.RandomState(2).randint(-128, 128, desc.input_shape)
    want = run(original.graph, original.output, {x0: value})
    got = run(built.graph, built.output, {x1: value})
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
    want, want_grads = run(original.graph,
                            [original.output, original_grads],
                            {original.inputs: feed[built.inputs]})
    got, got_grads = run(built.graph, [built.output, grads], feed)
    assert_scaled_close(got, want, FORWARD_TOL, 'forward output')
    for index, (a, b) in enumerate(zip(got_grads, want_grads)):
        assert_scaled_close(a, b, GRADIENT_TOL, 'gradient %d' % index)
