"""After the eval rewrite, every op TFLite quantizes has a range: a graph of
Concat, AvgPool, MaxPool, Mean, Reshape, Pad, Sigmoid, Tanh and Softmax
around quantized layers converts to a fully integer model (no "lacking
min/max data" error, no float op left)."""

import numpy as np
import pytest
import tensorflow as tf

import builders as gb
import tf1_quantize
from tf1_quantize import export

v1 = tf.compat.v1
INPUT_SHAPE = [None, 8, 8, 3]


def _head(kind, x, values):
    """The op under test, between quantized layers where it can be."""
    if kind == 'concat':
        other = gb.conv_layer(x, 'other', 4, values).output
        return tf.concat([x, other], axis=-1, name='concat')
    if kind == 'avg_pool':
        return tf.nn.avg_pool2d(x, 2, 2, 'VALID', name='avg_pool')
    if kind == 'max_pool':
        return tf.nn.max_pool2d(x, 2, 2, 'SAME', name='max_pool')
    if kind == 'reshape':
        return tf.reshape(x, [-1, 4, 16, 4], name='reshape')
    if kind == 'pad':
        return tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]], name='pad')
    if kind == 'sigmoid':
        return tf.sigmoid(x, name='sigmoid')
    if kind == 'tanh':
        return tf.tanh(x, name='tanh')
    raise ValueError(kind)


def _model(kind):
    """conv -> <kind> -> conv -> Mean -> Dense -> Softmax, eval mode."""
    values = gb.Values(3)
    graph = tf.Graph()
    with graph.as_default():
        images = v1.placeholder(tf.float32, INPUT_SHAPE, name='images')
        x = gb.conv_layer(images, 'first', 4, values).output
        x = _head(kind, x, values)
        x = gb.conv_layer(x, 'second', 4, values).output
        x = tf.reduce_mean(x, [1, 2], name='mean')
        weights = gb.variable('logits/weights', values.normal([4, 5]))
        biases = gb.variable('logits/biases', values.normal([5]))
        logits = tf.nn.bias_add(tf.matmul(x, weights), biases)
        probs = tf.nn.softmax(logits, name='probs')
    return graph, images, probs


@pytest.mark.parametrize('kind', ['concat', 'avg_pool', 'max_pool',
                                  'reshape', 'pad', 'sigmoid', 'tanh'])
def test_graph_converts_fully_integer(kind):
    graph, images, probs = _model(kind)
    tf1_quantize.create_eval_graph(graph)
    assert tf1_quantize.last_report(graph).float_ops == []
    inputs = np.random.RandomState(0).uniform(
        -1.0, 1.0, [16] + INPUT_SHAPE[1:]).astype(np.float32)
    with graph.as_default(), v1.Session() as sess:
        sess.run(v1.global_variables_initializer())
        model, result = export.export_session(
            sess, 'images', probs.name, inference_type=tf.int8,
            input_ranges={'images': (-1.0, 1.0)}, parity_inputs=inputs)
    assert result.float_ops == ()
    assert export.find_float_ops(model) == []
