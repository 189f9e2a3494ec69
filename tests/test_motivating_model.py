"""The model that brought our users: tfmot refuses it ("Layer
batch_normalization is not supported") because the batch norm follows
Conv2D(activation='relu'), and contrib left that batch norm float.

Conv2D(32,5,same,relu) -> MaxPool -> Conv2D(64,5,same,relu) -> BN -> MaxPool
-> Flatten -> Dense(1024,relu) -> Dropout -> Dense(10) -> Softmax, built with
Keras 2 layers in graph mode, rewritten, trained a few steps, exported.
"""

import numpy as np
import tensorflow as tf

import builders
import tf1_quantize
from tf1_quantize import export

v1 = tf.compat.v1
BATCH, STEPS = 8, 4


def _model(training):
    """Builds the model in a new graph; returns (graph, images, probs)."""
    keras = builders.keras_module()
    layers = keras.layers
    # Keras draws unseeded initializers from Python's RNG, not the graph seed.
    seeds = iter(range(4))

    def init():
        return keras.initializers.GlorotUniform(seed=next(seeds))

    graph = tf.Graph()
    with graph.as_default():
        images = v1.placeholder(tf.float32, [None, 28, 28, 1], name='images')
        x = layers.Conv2D(32, 5, padding='same', activation='relu',
                          kernel_initializer=init())(images)
        x = layers.MaxPooling2D()(x)
        x = layers.Conv2D(64, 5, padding='same', activation='relu',
                          kernel_initializer=init())(x)
        x = layers.BatchNormalization()(x, training=training)
        x = layers.MaxPooling2D()(x)
        x = layers.Flatten()(x)
        x = layers.Dense(1024, activation='relu',
                         kernel_initializer=init())(x)
        x = layers.Dropout(0.4, seed=0)(x, training=training)
        logits = layers.Dense(10, kernel_initializer=init())(x)
        probs = tf.nn.softmax(logits, name='probs')
    return graph, images, probs


def _moving_average_updates(graph):
    return [op for op in graph.get_operations()
            if op.type == 'AssignSubVariableOp']


def _data(seed):
    rng = np.random.RandomState(seed)
    images = rng.uniform(0.0, 1.0, [BATCH, 28, 28, 1]).astype(np.float32)
    return images, rng.randint(0, 10, [BATCH])


def _train(checkpoint):
    graph, images, probs = _model(training=True)
    tf1_quantize.experimental_create_training_graph(graph, symmetric=True,
                                                    quant_delay=2)
    report = tf1_quantize.last_report(graph)
    with graph.as_default():
        labels = v1.placeholder(tf.int64, [None])
        loss = v1.losses.sparse_softmax_cross_entropy(
            labels, tf.math.log(probs + 1e-6))
        with tf.control_dependencies(_moving_average_updates(graph)):
            train_op = v1.train.AdamOptimizer(1e-3).minimize(loss)
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            for step in range(STEPS):
                x, y = _data(step)
                sess.run(train_op, {images: x, labels: y})
            v1.train.Saver().save(sess, checkpoint)
    return report


def test_motivating_model_exports_fully_integer_with_parity(tmp_path):
    checkpoint = str(tmp_path / 'model')
    report = _train(checkpoint)
    assert report.affine == ['batch_normalization/FusedBatchNormV3']
    assert report.float_ops == []
    graph, images, probs = _model(training=False)
    tf1_quantize.experimental_create_eval_graph(graph, symmetric=True)
    test_images = np.random.RandomState(99).uniform(
        0.0, 1.0, [400, 28, 28, 1]).astype(np.float32)
    with graph.as_default(), v1.Session() as sess:
        v1.train.Saver().restore(sess, checkpoint)
        model, result = export.export_session(
            sess, 'images', probs.name, inference_type=tf.int8,
            input_ranges={'images': (0.0, 1.0)}, parity_inputs=test_images)
    assert result.float_ops == ()
    assert export.find_float_ops(model) == []
    assert result.parity.argmax_agreement >= 0.99
