"""Small models for the export tests (tests/test_export*.py).

Hand-built FakeQuant graphs (`build_model`, `frozen_pool_model`) do not
depend on the rewrite; `rewritten_model` goes through tf1_quantize's API.
"""

import numpy as np
import tensorflow as tf

import tf1_quantize
from tf1_quantize import export

v1 = tf.compat.v1

INPUT = 'input'
OUTPUT = 'output'
OUTPUT_RANGE = (-4.0, 4.0)
OUTPUT_STEP = 8.0 / 255
WEIGHT_QUANTS = {'conv/weights_quant/FakeQuant', 'fc/weights_quant/FakeQuant'}
ACTIVATION_QUANTS = ['input_quant/FakeQuant', 'conv/act_quant/FakeQuant',
                     'pool/act_quant/FakeQuant', 'fc/act_quant/FakeQuant']


def weights(name, shape, seed):
    return v1.get_variable(
        name, shape, initializer=v1.random_normal_initializer(seed=seed))


def fake_quant(x, range_min, range_max, name, narrow_range=False):
    return tf.quantization.fake_quant_with_min_max_vars(
        x, range_min, range_max, narrow_range=narrow_range, name=name)


def weight_quant(w, scope, symmetric):
    """A weights FakeQuant; symmetric [-m, m] or the raw [min, max]."""
    if symmetric:
        bound = tf.reduce_max(tf.abs(w))
        low, high = -bound, bound
    else:
        low = tf.minimum(tf.reduce_min(w), 0.0)
        high = tf.maximum(tf.reduce_max(w), 0.0)
    return fake_quant(w, low, high, scope + '/weights_quant/FakeQuant',
                      narrow_range=True)


def build_model(input_quant=True, symmetric=True, float_head=False,
                float_add=False):
    """conv 3x3 -> Relu6 -> FQ -> mean -> FQ -> FC -> FQ [-> float op].

    Args:
        input_quant: put a FakeQuant with range [0, 1] on the input.
        symmetric: symmetric weight ranges (int8-compatible).
        float_head: add an FC layer `head/MatMul` with unquantized weights
            and no output FakeQuant (it stays float in TFLite).
        float_add: add 1.0 after the last FakeQuant (a float ADD that is
            not a layer).

    Returns:
        A session with initialized variables; its graph has 'input' and
        'output'.
    """
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [None, 6, 6, 1], name=INPUT)
        if input_quant:
            x = fake_quant(x, 0.0, 1.0, 'input_quant/FakeQuant')
        w = weight_quant(weights('conv/weights', [3, 3, 1, 4], 1), 'conv',
                         symmetric)
        y = tf.nn.conv2d(x, w, [1, 1, 1, 1], 'SAME', name='conv/Conv2D')
        y = tf.nn.relu6(y, name='conv/Relu6')
        y = fake_quant(y, 0.0, 6.0, 'conv/act_quant/FakeQuant')
        y = tf.reduce_mean(y, [1, 2], name='pool')
        y = fake_quant(y, 0.0, 6.0, 'pool/act_quant/FakeQuant')
        w = weight_quant(weights('fc/weights', [4, 5], 2), 'fc', symmetric)
        y = tf.matmul(y, w, name='fc/MatMul')
        y = fake_quant(y, *OUTPUT_RANGE, 'fc/act_quant/FakeQuant')
        if float_head:
            y = tf.matmul(y, weights('head/weights', [5, 5], 3),
                          name='head/MatMul')
        if float_add:
            y = tf.add(y, 1.0, name='shift')
        tf.identity(y, name=OUTPUT)
        session = v1.Session(graph=graph)
        session.run(v1.global_variables_initializer())
    return session


def frozen(**kwargs):
    with build_model(**kwargs) as session:
        return export.freeze_session(session, OUTPUT)


def frozen_pool_model(output_shift=0.0, inner_shift=0.0, batch=None):
    """FakeQuant [0, 1] -> 2x2 max pool -> FakeQuant [0, 1], frozen.

    Integer max pooling is exact, so TFLite follows this graph exactly.

    Args:
        output_shift: added to the output (after the last FakeQuant).
        inner_shift: added to the pool output, before its FakeQuant (the op
            that FakeQuant reads is still named `pool`).
        batch: the input's batch size; None: dynamic.
    """
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [batch, 6, 6, 1], name=INPUT)
        x = fake_quant(x, 0.0, 1.0, 'input_quant/FakeQuant')
        if inner_shift:
            y = tf.nn.max_pool2d(x, 2, 2, 'VALID', name='pool_raw')
            y = tf.add(y, inner_shift, name='pool')
        else:
            y = tf.nn.max_pool2d(x, 2, 2, 'VALID', name='pool')
        y = fake_quant(y, 0.0, 1.0, 'pool/act_quant/FakeQuant')
        y = tf.reshape(y, [-1, 9], name='flatten')
        tf.identity(y + output_shift, name=OUTPUT)
        with v1.Session(graph=graph) as session:
            return export.freeze_session(session, OUTPUT)


def inputs(n=64, seed=0, shape=(6, 6, 1)):
    return np.random.RandomState(seed).uniform(
        0.0, 1.0, [n, *shape]).astype(np.float32)


# ------------------------------------------------------ through the rewrite


def _batch_norm(x, training):
    channels = x.shape[-1]
    gamma = v1.get_variable('gamma', [channels],
                            initializer=v1.ones_initializer())
    beta = v1.get_variable('beta', [channels],
                           initializer=v1.zeros_initializer())
    mean = v1.get_variable('moving_mean', [channels], trainable=False,
                           initializer=v1.zeros_initializer())
    variance = v1.get_variable('moving_variance', [channels],
                               trainable=False,
                               initializer=v1.ones_initializer())
    if not training:
        return v1.nn.fused_batch_norm(x, gamma, beta, mean, variance,
                                      is_training=False)[0]
    y, batch_mean, batch_variance = v1.nn.fused_batch_norm(
        x, gamma, beta, is_training=True)
    for variable, value in ((mean, batch_mean), (variance, batch_variance)):
        v1.add_to_collection(
            v1.GraphKeys.UPDATE_OPS,
            tf.__internal__.train.assign_moving_average(
                variable, value, 0.9, zero_debias=False))
    return y


def _conv_bn(x, scope, channels, training, activation):
    with v1.variable_scope(scope):
        w = weights('weights', [3, 3, x.shape[-1], channels], 1)
        y = tf.nn.conv2d(x, w, 1, 'SAME', name='Conv2D')
        return activation(_batch_norm(y, training))


def rewritten_model(training=False, rewrite=True, head='dense', bias=True,
                    batch=None, seed=0, quant_delay=None, **rewrite_kwargs):
    """Conv-BN-ReLU, Conv-BN-ReLU6, then a head, rewritten by tf1_quantize.

    Args:
        training: build the training graph (batch statistics) and rewrite it
            with `experimental_create_training_graph`; else the eval graph.
        rewrite: False: no rewrite at all.
        head: 'dense' (mean, MatMul: logits [N, 5]) or 'segmentation' (a 1x1
            conv with bias: per-pixel logits [N, 6, 6, 3]).
        bias: the head has a bias (False: a bare final MatMul or Conv2D).
        batch: the input's batch size; None: dynamic.
        seed: weight initialisation seed.
        quant_delay: passed to the rewrite when not None.
        **rewrite_kwargs: more keyword arguments of the rewrite.

    Returns:
        A session with initialized variables and the output tensor name.
    """
    graph = tf.Graph()
    with graph.as_default():
        v1.set_random_seed(seed)
        x = v1.placeholder(tf.float32, [batch, 6, 6, 1], name=INPUT)
        y = _conv_bn(x, 'conv1', 4, training, tf.nn.relu)
        y = _conv_bn(y, 'conv2', 4, training, tf.nn.relu6)
        if head == 'segmentation':
            with v1.variable_scope('segmentation'):
                w = weights('weights', [1, 1, 4, 3], 2)
                y = tf.nn.conv2d(y, w, 1, 'SAME', name='Conv2D')
                if bias:
                    y = tf.nn.bias_add(y, v1.get_variable(
                        'biases', [3], initializer=v1.zeros_initializer()))
        else:
            y = tf.reduce_mean(y, [1, 2], name='pool')
            with v1.variable_scope('logits'):
                y = tf.matmul(y, weights('weights', [4, 5], 3),
                              name='MatMul')
                if bias:
                    y = tf.nn.bias_add(y, v1.get_variable(
                        'biases', [5], initializer=v1.zeros_initializer()))
        if rewrite:
            rewrite_fn = (tf1_quantize.experimental_create_training_graph
                          if training else
                          tf1_quantize.experimental_create_eval_graph)
            delay = {} if quant_delay is None else {'quant_delay': quant_delay}
            rewrite_fn(graph, symmetric=True, **delay, **rewrite_kwargs)
        session = v1.Session(graph=graph)
        session.run(v1.global_variables_initializer())
    return session, y.name
