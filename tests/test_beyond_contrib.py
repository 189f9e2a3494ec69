"""What tf1_quantize does beyond contrib: batch norms after activations,
per-channel weights, ranges for pooling/concat outputs, the report."""

import numpy as np
import pytest
import tensorflow as tf

import tf1_quantize
from tf1_quantize import export

v1 = tf.compat.v1
BATCH, SIZE, CHANNELS, CLASSES = 4, 6, 4, 3
EPS = 1e-3


def _variable(name, value, trainable=True):
    return v1.get_variable(name, initializer=value.astype(np.float32),
                           trainable=trainable)


def _build_bn_after_relu(training, seed=0):
    """conv(+bias) -> ReLU -> BN -> MaxPool -> Flatten -> Dense (model B)."""
    rng = np.random.RandomState(seed)
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [BATCH, SIZE, SIZE, 1], name='x')
        with v1.variable_scope('conv'):
            w = _variable('weights', rng.randn(3, 3, 1, CHANNELS))
            b = _variable('biases', 0.1 * rng.randn(CHANNELS))
            h = tf.nn.relu(tf.nn.bias_add(tf.nn.conv2d(x, w, 1, 'SAME'), b))
        with v1.variable_scope('BatchNorm'):
            gamma = _variable('gamma', 1 + 0.2 * rng.randn(CHANNELS))
            beta = _variable('beta', 0.1 * rng.randn(CHANNELS))
            mean = _variable('moving_mean', rng.rand(CHANNELS), False)
            var = _variable('moving_variance', 1 + rng.rand(CHANNELS), False)
            if training:
                h, batch_mean, batch_var = v1.nn.fused_batch_norm(
                    h, gamma, beta, epsilon=EPS, is_training=True)
                for moving, stat in ((mean, batch_mean), (var, batch_var)):
                    v1.add_to_collection(
                        v1.GraphKeys.UPDATE_OPS,
                        tf.__internal__.train.assign_moving_average(
                            moving, stat, 0.9, zero_debias=False))
            else:
                h, _, _ = v1.nn.fused_batch_norm(h, gamma, beta, mean, var,
                                                 epsilon=EPS,
                                                 is_training=False)
        h = tf.reshape(tf.nn.max_pool2d(h, 2, 2, 'VALID'), [BATCH, -1])
        with v1.variable_scope('fc'):
            w2 = _variable('weights', rng.randn(h.shape[1], CLASSES))
            b2 = _variable('biases', 0.1 * rng.randn(CLASSES))
            logits = tf.nn.bias_add(tf.matmul(h, w2), b2, name='logits')
    return graph, x, logits


INPUT = np.random.RandomState(1).randn(BATCH, SIZE, SIZE, 1).astype(
    np.float32)


def _variable_value(sess, name):
    """The value of the global variable named `name` (not its handle)."""
    variable, = [v for v in v1.global_variables() if v.op.name == name]
    return sess.run(variable)


def _assign(sess, name, value):
    variable, = [v for v in v1.global_variables() if v.op.name == name]
    sess.run(variable.assign(value))


def _outputs_and_grads(graph, x, logits, steps=0):
    with graph.as_default():
        loss = tf.reduce_sum(logits * np.arange(1, CLASSES + 1,
                                                dtype=np.float32))
        targets = [x] + v1.trainable_variables()
        grads = v1.gradients(loss, targets)
        updates = v1.get_collection(v1.GraphKeys.UPDATE_OPS)
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            for _ in range(steps):
                sess.run(updates, {x: INPUT})
            return sess.run([logits] + grads, {x: INPUT})


def _assert_close(expected, actual, tolerance):
    scale = max(np.abs(expected).max(), 1e-6)
    np.testing.assert_allclose(actual, expected, rtol=0,
                               atol=tolerance * scale)


def test_bn_after_activation_training_graph_is_exact_before_delays():
    expected = _outputs_and_grads(*_build_bn_after_relu(training=True))
    graph, x, logits = _build_bn_after_relu(training=True)
    tf1_quantize.experimental_create_training_graph(
        graph, quant_delay=1000, freeze_bn_delay=1000)
    actual = _outputs_and_grads(graph, x, logits)
    _assert_close(expected[0], actual[0], 1e-4)
    for want, got in zip(expected[1:], actual[1:]):
        _assert_close(want, got, 2e-3)


def test_bn_after_activation_uses_moving_statistics_after_freeze():
    graph, x, logits = _build_bn_after_relu(training=True)
    tf1_quantize.experimental_create_training_graph(
        graph, quant_delay=1000, freeze_bn_delay=2)
    statistics = ['BatchNorm/moving_mean', 'BatchNorm/moving_variance']
    with graph.as_default(), v1.Session() as sess:
        sess.run(v1.global_variables_initializer())
        updates = v1.get_collection(v1.GraphKeys.UPDATE_OPS)
        sess.run(updates, {x: INPUT})  # step 1: still updating
        moving = [_variable_value(sess, name) for name in statistics]
        frozen_output, _ = sess.run([logits, updates], {x: INPUT})  # step 2
        after = [_variable_value(sess, name) for name in statistics]
    for before, now in zip(moving, after):
        np.testing.assert_array_equal(before, now)
    # The same weights with an inference-mode BN give the frozen output.
    graph, x, logits = _build_bn_after_relu(training=False)
    with graph.as_default(), v1.Session() as sess:
        sess.run(v1.global_variables_initializer())
        for name, value in zip(statistics, moving):
            _assign(sess, name, value)
        expected = sess.run(logits, {x: INPUT})
    _assert_close(expected, frozen_output, 1e-4)


def test_bn_after_activation_eval_graph_matches_with_16_bits():
    expected = _outputs_and_grads(*_build_bn_after_relu(training=False))[0]
    graph, x, logits = _build_bn_after_relu(training=False)
    tf1_quantize.experimental_create_eval_graph(graph, weight_bits=16,
                                                activation_bits=16)
    with graph.as_default(), v1.Session() as sess:
        sess.run(v1.global_variables_initializer())
        for var in v1.global_variables():  # wide enough for every tensor
            if var.op.name.endswith(('/min', '/max')):
                sess.run(var.assign(-40.0 if var.op.name.endswith('min')
                                    else 40.0))
        actual = sess.run(logits, {x: INPUT})
    # 16-bit steps of an 80-wide range are 1.2e-3; a few such errors add up.
    _assert_close(expected, actual, 2e-3)


def test_bn_after_activation_is_reported_and_rewritten_once():
    graph, _, _ = _build_bn_after_relu(training=True)
    with graph.as_default():
        tf1_quantize.create_training_graph()
    before = graph.as_graph_def().SerializeToString(deterministic=True)
    report = tf1_quantize.fold_batch_norms(graph)
    tf1_quantize.create_training_graph(graph)
    assert graph.as_graph_def().SerializeToString(deterministic=True) == before
    assert report.folded == [] and report.affine == []
    names = {op.name for op in graph.get_operations()}
    for quant in ('weights_quant', 'mul_quant', 'offset_quant', 'act_quant'):
        assert 'BatchNorm/affine/%s/FakeQuantWithMinMaxVars' % quant in names


def test_bn_after_activation_exports_fully_integer():
    graph, x, logits = _build_bn_after_relu(training=False)
    tf1_quantize.experimental_create_eval_graph(graph, symmetric=True)
    with graph.as_default(), v1.Session() as sess:
        sess.run(v1.global_variables_initializer())
        frozen = export.freeze_session(sess, ['fc/act_quant/'
                                              'FakeQuantWithMinMaxVars'])
    model = export.convert_to_tflite(
        frozen, ['x'], ['fc/act_quant/FakeQuantWithMinMaxVars'],
        inference_type=tf.int8, input_ranges={'x': (-4.0, 4.0)})
    assert export.find_float_ops(model) == []


def _conv_graph(per_channel):
    rng = np.random.RandomState(3)
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [1, 5, 5, 2], name='x')
        with v1.variable_scope('conv'):
            # Output channels with very different magnitudes.
            w = _variable('weights', rng.randn(3, 3, 2, 3) *
                          np.array([0.01, 1.0, 10.0]))
            y = tf.nn.relu6(tf.nn.conv2d(x, w, 1, 'SAME'), name='Relu6')
        tf.reduce_mean(y, [1, 2], name='pool')
    tf1_quantize.experimental_create_training_graph(
        graph, symmetric=True, per_channel_weights=per_channel)
    return graph, w


def test_per_channel_weights_get_one_symmetric_range_per_output_channel():
    graph, w = _conv_graph(per_channel=True)
    quant = graph.get_operation_by_name(
        'conv/weights_quant/FakeQuantWithMinMaxVarsPerChannel')
    assert graph.get_operation_by_name('conv/Conv2D').inputs[1].op is quant
    with graph.as_default(), v1.Session() as sess:
        sess.run(v1.global_variables_initializer())
        feed = {graph.get_tensor_by_name('x:0'): np.ones([1, 5, 5, 2])}
        weights, quantized = sess.run([w, quant.outputs[0]], feed)
        low = _variable_value(sess, 'conv/weights_quant/min')
        high = _variable_value(sess, 'conv/weights_quant/max')
    bound = np.abs(weights).reshape(-1, 3).max(axis=0)
    np.testing.assert_allclose(high, bound, rtol=1e-6)
    np.testing.assert_allclose(low, -bound, rtol=1e-6)
    # Each channel is quantized on its own grid: error <= half a step.
    step = 2 * bound / 254
    error = np.abs(quantized - weights).reshape(-1, 3).max(axis=0)
    assert np.all(error <= step / 2 + 1e-7)


def test_per_channel_is_off_by_default():
    graph, _ = _conv_graph(per_channel=False)
    types = {op.type for op in graph.get_operations()}
    assert 'FakeQuantWithMinMaxVarsPerChannel' not in types


def test_mean_output_is_quantized_after_a_quantized_activation():
    graph, _ = _conv_graph(per_channel=False)
    pool_quant = graph.get_operation_by_name(
        'pool/activation_Mean_quant/FakeQuantWithMinMaxVars')
    assert pool_quant.inputs[0].op.name == 'pool'


def test_report_lists_folded_affine_quantized_and_float_ops():
    graph, x, _ = _build_bn_after_relu(training=True)
    with graph.as_default():
        frozen_weights = tf.constant(np.ones([3, 3, 1, 2], np.float32))
        tf.nn.relu(tf.nn.conv2d(x, frozen_weights, 1, 'SAME'),
                   name='const_conv')
    tf1_quantize.create_training_graph(graph)
    report = tf1_quantize.last_report(graph)
    assert report.affine == ['BatchNorm/FusedBatchNormV3']
    assert report.layers == ['conv/Conv2D', 'fc/MatMul']
    quantized = {q.tensor for q in report.fake_quants}
    assert {'conv/Relu:0', 'fc/logits:0'} <= quantized
    float_op, = report.float_ops
    assert float_op.name == 'Conv2D' and 'Const' in float_op.reason
    assert 'stays float: Conv2D' in str(report)
    assert tf1_quantize.last_report(tf.Graph()) is None


def test_per_channel_weights_reach_tflite_as_per_channel_scales():
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [1, 5, 5, 2], name='x')
        with v1.variable_scope('conv'):
            w = _variable('weights', np.random.RandomState(3).randn(3, 3, 2, 3)
                          * np.array([0.01, 1.0, 10.0]))
            tf.nn.relu6(tf.nn.conv2d(x, w, 1, 'SAME'), name='Relu6')
    tf1_quantize.experimental_create_eval_graph(
        graph, symmetric=True, per_channel_weights=True)
    output = 'conv/act_quant/FakeQuantWithMinMaxVars'
    with graph.as_default(), v1.Session() as sess:
        sess.run(v1.global_variables_initializer())
        frozen = export.freeze_session(sess, [output])
    model = export.convert_to_tflite(frozen, ['x'], [output],
                                     inference_type=tf.int8,
                                     input_ranges={'x': (-1.0, 1.0)})
    interpreter = export.tflite_interpreter(model)
    scales = [len(t['quantization_parameters']['scales'])
              for t in interpreter.get_tensor_details()
              if t['shape'].tolist() == [3, 3, 3, 2]]
    assert scales == [3]


def _transposed_fc(training):
    """x [4, 6] @ w^T (w is [5, 6], transpose_b) -> unfused BN -> Relu."""
    rng = np.random.RandomState(5)
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [4, 6], name='x')
        with v1.variable_scope('fc'):
            w = _variable('weights', rng.randn(5, 6))
            y = tf.matmul(x, w, transpose_b=True, name='MatMul')
            with v1.variable_scope('BatchNorm'):
                gamma = _variable('gamma', 1 + 0.3 * rng.randn(5))
                beta = _variable('beta', 0.1 * rng.randn(5))
                moving_mean = _variable('moving_mean', rng.randn(5), False)
                moving_var = _variable('moving_variance', 1 + rng.rand(5),
                                       False)
                if training:
                    mean, var = tf.nn.moments(y, [0])
                    for moving, stat in ((moving_mean, mean), (moving_var,
                                                               var)):
                        tf.__internal__.train.assign_moving_average(
                            moving, stat, 0.9, zero_debias=False)
                else:
                    mean, var = moving_mean, moving_var
                y = tf.nn.batch_normalization(y, mean, var, beta, gamma, EPS)
            out = tf.nn.relu(y, name='Relu')
    return graph, x, out


@pytest.mark.parametrize('training', [True, False])
def test_transposed_matmul_folds_per_output_channel(training):
    feed = np.random.RandomState(6).randn(4, 6).astype(np.float32)
    outputs = []
    for fold in (False, True):
        graph, x, out = _transposed_fc(training)
        if fold:
            report = tf1_quantize.fold_batch_norms(graph, is_training=training)
            assert report.folded == ['fc/MatMul']
        with graph.as_default(), v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            outputs.append(sess.run(out, {x: feed}))
    _assert_close(outputs[0], outputs[1], 1e-4)
    assert graph.get_operation_by_name('fc/MatMul_Fold').get_attr(
        'transpose_b')


def test_dilated_conv_keeps_its_dilation_when_folded():
    rng = np.random.RandomState(7)
    feed = rng.randn(1, 9, 9, 2).astype(np.float32)
    outputs = []
    for fold in (False, True):
        graph = tf.Graph()
        with graph.as_default():
            x = v1.placeholder(tf.float32, [1, 9, 9, 2], name='x')
            with v1.variable_scope('conv'):
                w = _variable('weights', np.random.RandomState(8).randn(
                    3, 3, 2, 3))
                y = tf.nn.conv2d(x, w, 1, 'SAME', dilations=2, name='Conv2D')
                y, _, _ = v1.nn.fused_batch_norm(
                    y, tf.constant([1.0, 2.0, 0.5]), tf.constant([0.1] * 3),
                    tf.constant([0.2] * 3), tf.constant([1.5] * 3),
                    epsilon=EPS, is_training=False)
                out = tf.nn.relu(y)
            if fold:
                tf1_quantize.fold_batch_norms(graph, is_training=False)
                assert graph.get_operation_by_name(
                    'conv/Conv2D_Fold').get_attr('dilations') == [1, 2, 2, 1]
            with v1.Session() as sess:
                sess.run(v1.global_variables_initializer())
                outputs.append(sess.run(out, {x: feed}))
    _assert_close(outputs[0], outputs[1], 1e-4)
