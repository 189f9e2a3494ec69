"""`quantize_bare_layers`: a layer with nothing after it (e.g. logits)."""

import numpy as np
import pytest
import tensorflow as tf

import graph_generator as gen

import tf1_quantize

v1 = tf.compat.v1

REWRITES = {
    'training': tf1_quantize.experimental_create_training_graph,
    'eval': tf1_quantize.experimental_create_eval_graph,
}


def _model(kind: str):
    """A Conv-ReLU, then a bare final layer: MatMul logits or a 1x1 conv."""
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [2, 4, 4, 3], name='input')
        with v1.variable_scope('body'):
            w = v1.get_variable('weights', [3, 3, 3, 4])
            y = tf.nn.relu(tf.nn.conv2d(x, w, 1, 'SAME') + 0.1)
        with v1.variable_scope('logits'):
            if kind == 'fc':
                w = v1.get_variable('weights', [4, 5])
                y = tf.matmul(tf.reduce_mean(y, [1, 2]), w)
            else:
                w = v1.get_variable('weights', [1, 1, 4, 5])
                y = tf.nn.conv2d(y, w, 1, 'SAME')
        # Not an Identity: contrib takes that for an activation.
        tf.reshape(y, [-1], name='output')
    return graph, x, y


@pytest.mark.parametrize('kind', ['fc', 'conv'])
@pytest.mark.parametrize('mode', list(REWRITES))
def test_a_bare_final_layer_stays_float_by_default(mode, kind):
    graph, _, y = _model(kind)
    REWRITES[mode](graph)
    report = tf1_quantize.last_report(graph)
    assert [f.name for f in report.float_ops] == [y.op.name]


@pytest.mark.parametrize('kind', ['fc', 'conv'])
@pytest.mark.parametrize('mode', list(REWRITES))
def test_quantize_bare_layers_quantizes_weights_and_output(mode, kind):
    graph, _, y = _model(kind)
    weights = y.op.inputs[1].name
    REWRITES[mode](graph, quantize_bare_layers=True)
    report = tf1_quantize.last_report(graph)
    assert not report.float_ops
    assert y.op.name in report.layers
    quantized = {q.tensor: q.name for q in report.fake_quants}
    assert quantized[weights].startswith('logits/weights_quant/')
    assert quantized[y.name].startswith('logits/act_quant/')
    output = graph.get_operation_by_name('output')
    assert output.inputs[0].op.type == 'FakeQuantWithMinMaxVars'
    before = gen.graph_state(graph)
    REWRITES[mode](graph, quantize_bare_layers=True)
    assert gen.graph_state(graph) == before


def test_bare_layer_training_ranges_restore_into_eval(tmp_path):
    graph, x, _ = _model('fc')
    REWRITES['training'](graph, quantize_bare_layers=True)
    feed = {x: np.random.RandomState(0).randn(2, 4, 4, 3).astype(np.float32)}
    with graph.as_default(), v1.Session() as sess:
        sess.run(v1.global_variables_initializer())
        trained = sess.run(graph.get_tensor_by_name('output:0'), feed)
        path = v1.train.Saver().save(sess, str(tmp_path / 'model'))
    graph, x, _ = _model('fc')
    REWRITES['eval'](graph, quantize_bare_layers=True)
    with graph.as_default(), v1.Session() as sess:
        v1.train.Saver().restore(sess, path)
        evaluated = sess.run(graph.get_tensor_by_name('output:0'),
                             {x: feed[next(iter(feed))]})
    # The eval graph reads the ranges the training step learned.
    np.testing.assert_allclose(evaluated, trained, rtol=1e-5, atol=1e-5)
