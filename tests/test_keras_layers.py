"""Keras 2 layers in graph mode that the other tests do not build:
SeparableConv2D, separate Activation layers, ReLU(max_value=6), and a
Conv2D with a fused activation followed by a bias, all with batch norms.

SeparableConv2D(8) -> BN -> Activation('relu')
-> DepthwiseConv2D -> BN -> ReLU(6)
-> Conv2D(8, 1) -> BN -> Activation('relu6')
-> Conv2D(6, 3, activation='relu', bias) -> GlobalAveragePooling2D -> Dense(10)
"""

import numpy as np
import pytest
import tensorflow as tf

import builders as gb
import tf1_quantize
from tf1_quantize import export

v1 = tf.compat.v1
IMAGE_SHAPE = [None, 10, 10, 3]
BATCH = 4


def _batch_norm(keras, values, channels):
    const = v1.constant_initializer
    return keras.layers.BatchNormalization(
        epsilon=gb.EPSILON, momentum=gb.MOMENTUM,
        gamma_initializer=const(values.positive([channels])),
        beta_initializer=const(values.normal([channels])),
        moving_mean_initializer=const(values.normal([channels])),
        moving_variance_initializer=const(values.positive([channels])))


def _model(training: bool):
    """Builds the model in a new graph; returns (graph, input, output)."""
    keras = gb.keras_module()
    layers = keras.layers
    values = gb.Values(0)
    const = v1.constant_initializer
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, IMAGE_SHAPE, name='input')
        y = layers.SeparableConv2D(
            8, 3, padding='same', use_bias=False,
            depthwise_initializer=const(values.normal([3, 3, 3, 1])),
            pointwise_initializer=const(values.normal([1, 1, 3, 8])))(x)
        y = _batch_norm(keras, values, 8)(y, training=training)
        y = layers.Activation('relu')(y)
        y = layers.DepthwiseConv2D(
            3, padding='same', use_bias=False,
            depthwise_initializer=const(values.normal([3, 3, 8, 1])))(y)
        y = _batch_norm(keras, values, 8)(y, training=training)
        y = layers.ReLU(max_value=6.0)(y)
        y = layers.Conv2D(
            8, 1, use_bias=False,
            kernel_initializer=const(values.normal([1, 1, 8, 8])))(y)
        y = _batch_norm(keras, values, 8)(y, training=training)
        y = layers.Activation('relu6')(y)
        y = layers.Conv2D(
            6, 3, activation='relu',
            kernel_initializer=const(values.normal([3, 3, 8, 6])),
            bias_initializer=const(values.normal([6])))(y)
        y = layers.GlobalAveragePooling2D()(y)
        y = layers.Dense(
            10, kernel_initializer=const(values.normal([6, 10])),
            bias_initializer=const(values.normal([10])))(y)
    return graph, x, y


def _images(seed=1):
    return np.random.RandomState(seed).uniform(
        -1.0, 1.0, [BATCH] + IMAGE_SHAPE[1:]).astype(np.float32)


def _run(graph, inputs, output, images):
    with graph.as_default(), v1.Session() as sess:
        sess.run(v1.global_variables_initializer())
        return sess.run(output, {inputs: images})


@pytest.mark.parametrize('training', [False, True])
def test_folding_keeps_the_keras_model_output(training):
    images = _images()
    expected = _run(*_model(training), images)
    graph, inputs, output = _model(training)
    report = tf1_quantize.fold_batch_norms(graph, is_training=training)
    assert len(report.folded) == 3
    actual = _run(graph, inputs, output, images)
    scale = np.abs(expected).max()
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-4 * scale)


@pytest.mark.parametrize('training', [False, True])
def test_every_keras_layer_is_quantized(training):
    graph, _, _ = _model(training)
    if training:
        tf1_quantize.create_training_graph(graph)
    else:
        tf1_quantize.create_eval_graph(graph)
    report = tf1_quantize.last_report(graph)
    assert len(report.layers) == 6  # separable: depthwise + pointwise
    assert len(report.folded) == 3
    assert report.float_ops == [] and report.affine == []
    quantized = [q.tensor for q in report.fake_quants]
    for activation in ('activation/Relu:0', 're_lu/Relu6:0',
                       'activation_1/Relu6:0', 'conv2d_1/Relu:0'):
        assert activation in quantized


def test_keras_model_exports_fully_integer():
    graph, inputs, output = _model(training=False)
    tf1_quantize.create_eval_graph(graph)
    images = _images()
    with graph.as_default(), v1.Session() as sess:
        sess.run(v1.global_variables_initializer())
        model, result = export.export_session(
            sess, inputs.op.name, output.name, inference_type=tf.int8,
            input_ranges={inputs.op.name: (-1.0, 1.0)}, parity_inputs=images)
    assert result.float_ops == ()
    assert export.find_float_ops(model) == []
