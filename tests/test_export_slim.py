"""A TF-slim network end to end: build, training rewrite, a few steps, eval
rewrite with a fixed batch of 1, int8 export with per-sample parity.

TF-slim 1.1.0 needs two client-side fixes on TF >= 2.14 (README.md, "TF-slim
networks"; `tf_slim_compat.patch_tf_slim`). Skipped where tf-slim is not
installed.
"""

import importlib

import numpy as np
import pytest
import tensorflow as tf

import tf1_quantize
from tf1_quantize import export
from tf1_quantize import tf_slim_compat

v1 = tf.compat.v1
pytest.importorskip('tf_slim', reason='tf-slim is not installed')
tf_slim_compat.patch_tf_slim()
slim = importlib.import_module('tf_slim')
resnet_v1 = importlib.import_module('tf_slim.nets.resnet_v1')

NUM_CLASSES = 5
IMAGE = [16, 16, 3]


def _resnet(images, is_training):
    """A two-unit ResNet-v1 from tf_slim.nets (bottlenecks, shortcut conv)."""
    blocks = [resnet_v1.resnet_v1_block('block1', base_depth=4,
                                        num_units=2, stride=2)]
    with slim.arg_scope(resnet_v1.resnet_arg_scope()):
        logits, _ = resnet_v1.resnet_v1(
            images, blocks, num_classes=NUM_CLASSES, is_training=is_training,
            global_pool=True, scope='resnet')
    return logits  # [N, 1, 1, classes]


def _train(path, data, labels):
    graph = tf.Graph()
    with graph.as_default():
        v1.set_random_seed(0)
        images = v1.placeholder(tf.float32, [None] + IMAGE, name='images')
        logits = tf.squeeze(_resnet(images, True), [1, 2])
        loss = v1.losses.sparse_softmax_cross_entropy(labels, logits)
        tf1_quantize.experimental_create_training_graph(
            graph, symmetric=True, quant_delay=0)
        with tf.control_dependencies(
                v1.get_collection(v1.GraphKeys.UPDATE_OPS)):
            train_op = v1.train.AdamOptimizer(1e-2).minimize(loss)
        with v1.Session() as session:
            session.run(v1.global_variables_initializer())
            for _ in range(3):
                session.run(train_op, {images: data})
            return v1.train.Saver().save(session, path)


def test_slim_resnet_to_int8_with_per_sample_parity(tmp_path):
    rng = np.random.RandomState(0)
    data = rng.uniform(0, 1, [8] + IMAGE).astype(np.float32)
    checkpoint = _train(str(tmp_path / 'qat'), data,
                        np.arange(8) % NUM_CLASSES)
    graph = tf.Graph()
    with graph.as_default():
        # TFLite models usually have a fixed batch of 1.
        images = v1.placeholder(tf.float32, [1] + IMAGE, name='images')
        logits = _resnet(images, False)
        tf1_quantize.experimental_create_eval_graph(graph, symmetric=True)
        folded = tf1_quantize.last_report(graph).folded
        with v1.Session() as session:
            v1.train.Saver().restore(session, checkpoint)
            model, report = export.export_session(
                session, 'images', logits.name, tf.int8,
                input_ranges={'images': (0.0, 1.0)}, parity_inputs=data[:4],
                per_layer=True)
    assert len(folded) == 8  # conv1, shortcut, 2 units x 3 convs
    assert report.float_ops == ()
    assert export.run_tflite(model, data[:2]).shape == (2, 1, 1, NUM_CLASSES)
    parity = report.parity
    assert (parity.num_samples, parity.argmax_positions) == (4, 4)
    assert parity.max_diff_lsb <= 8 and parity.within_one_lsb >= 0.5
    # One entry per quantized activation, in graph order, the last being
    # the logits.
    names = [layer.name for layer in parity.layers]
    assert len(names) >= 9 and names[-1].startswith('resnet/logits/')
    assert names[0].startswith('resnet/conv1/')
    assert all(layer.max_lsb <= 8 for layer in parity.layers)
