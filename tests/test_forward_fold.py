"""A batch norm that follows no layer, folded forward into the MatMul or
VALID Conv2D reading it, where that is exact; elsewhere it stays affine."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

import builders
import tf1_quantize
from tf1_quantize import export

v1 = tf.compat.v1
BATCH, SIZE, IN_CHANNELS, CHANNELS, UNITS = 4, 6, 2, 3, 5
FUTURE = 10**6
INPUT = np.random.RandomState(1).randn(BATCH, SIZE, SIZE,
                                       IN_CHANNELS).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class Case:
    """first layer -> Relu -> BN [-> MaxPool] -> consumer.

    Attributes:
        first: 'conv' (Conv2D, SAME: a 4-D BN) or 'fc' (Flatten + MatMul: a
            2-D BN).
        consumer: 'fc' (Flatten + MatMul + bias) or 'conv' (Conv2D + bias +
            Relu).
        bn: 'fused' or 'unfused'.
        stride: stride of the consuming Conv2D.
        padding: padding of the consuming Conv2D.
        maxpool: a MaxPool between the BN and the consumer.
        second_reader: another op reads the BN output too.
        keras: Keras 2 layers instead of raw tf.compat.v1 ops.
        next_bn: the consuming Conv2D has a batch norm (instead of a bias).
    """
    consumer: str = 'fc'
    bn: str = 'fused'
    stride: int = 1
    padding: str = 'VALID'
    maxpool: bool = False
    second_reader: bool = False
    keras: bool = False
    first: str = 'conv'
    next_bn: bool = False


@dataclasses.dataclass
class Built:
    """A built case: its outputs and the names of its BN and next layer."""
    graph: tf.Graph
    inputs: tf.Tensor
    outputs: list
    bn_name: str
    layer_name: str


def _bn_values(values, channels=CHANNELS):
    """gamma of both signs, so that exactness cannot rely on its sign."""
    return dict(gamma=values.normal([channels], 1.0),
                beta=values.normal([channels]),
                moving_mean=values.normal([channels]),
                moving_variance=values.positive([channels]))


def _raw_batch_norm(fused, h, values, training):
    """A fused (2-D input: reshaped to [-1, 1, 1, C] and back, as contrib
    did) or unfused batch norm with moving-average updates in training."""
    channels = h.shape[-1]
    variables = {
        name: builders.variable(name, value,
                                      trainable=not name.startswith('moving'))
        for name, value in _bn_values(values, channels).items()
    }
    mean, variance = variables['moving_mean'], variables['moving_variance']
    if fused:
        shape = h.shape.as_list()
        h, batch_mean, batch_variance = v1.nn.fused_batch_norm(
            tf.reshape(h, [-1, 1, 1, channels]) if len(shape) == 2 else h,
            variables['gamma'], variables['beta'],
            None if training else mean, None if training else variance,
            epsilon=builders.EPSILON, is_training=training)
        h = tf.reshape(h, shape) if len(shape) == 2 else h
    else:
        if training:
            batch_mean, batch_variance = tf.nn.moments(
                h, list(range(h.shape.rank - 1)))
        else:
            batch_mean, batch_variance = mean, variance
        h = tf.nn.batch_normalization(
            h, batch_mean, batch_variance, variables['beta'],
            variables['gamma'], builders.EPSILON)
    if training:
        for moving, statistic, name in (
                (mean, batch_mean, 'AssignMovingAvg'),
                (variance, batch_variance, 'AssignMovingAvg_1')):
            v1.add_to_collection(
                v1.GraphKeys.UPDATE_OPS,
                builders.assign_moving_average(
                    moving, statistic, builders.MOMENTUM, name))
    return h


def _build_raw(case, training, values, x):
    with v1.variable_scope('first'):
        if case.first == 'conv':
            w = builders.variable(
                'weights', values.normal([3, 3, IN_CHANNELS, CHANNELS]))
            h = tf.nn.conv2d(x, w, 1, 'SAME')
        else:
            h = tf.reshape(x, [BATCH, -1])
            w = builders.variable(
                'weights', values.normal([h.shape[1], CHANNELS]))
            h = tf.matmul(h, w)
        b = builders.variable('biases', values.normal([CHANNELS]))
        h = tf.nn.relu(tf.nn.bias_add(h, b))
    with v1.variable_scope('BatchNorm'):
        h = _raw_batch_norm(case.bn == 'fused', h, values, training)
    bn_name = builders.find_op_upstream(
        h, 'FusedBatchNormV3' if case.bn == 'fused' else 'AddV2').name
    extra = [tf.reduce_sum(h, [1, 2], name='second_reader')] if (
        case.second_reader) else []
    if case.maxpool:
        h = tf.nn.max_pool2d(h, 2, 1, 'VALID')
    with v1.variable_scope('next'):
        if case.consumer == 'fc':
            h = tf.reshape(h, [BATCH, -1])
            w = builders.variable(
                'weights', values.normal([h.shape[1], UNITS]))
            b = builders.variable('biases', values.normal([UNITS]))
            out = tf.nn.bias_add(tf.matmul(h, w), b, name='logits')
        else:
            w = builders.variable(
                'weights', values.normal([2, 2, CHANNELS, UNITS]))
            out = tf.nn.conv2d(h, w, case.stride, case.padding)
            if case.next_bn:
                with v1.variable_scope('BatchNorm'):
                    out = _raw_batch_norm(True, out, values, training)
            else:
                b = builders.variable('biases', values.normal([UNITS]))
                out = tf.nn.bias_add(out, b)
            out = tf.nn.relu(out)
    layer = builders.find_op_upstream(
        out, 'MatMul' if case.consumer == 'fc' else 'Conv2D')
    return [out] + extra, bn_name, layer.name


def _build_keras(case, training, values, x):
    keras = builders.keras_module()
    layers, const = keras.layers, v1.constant_initializer
    if case.first == 'conv':
        h = layers.Conv2D(
            CHANNELS, 3, padding='same', activation='relu',
            kernel_initializer=const(
                values.normal([3, 3, IN_CHANNELS, CHANNELS])))(x)
    else:
        h = layers.Flatten()(x)
        h = layers.Dense(CHANNELS, activation='relu', kernel_initializer=const(
            values.normal([h.shape[1], CHANNELS])))(h)
    bn_values = _bn_values(values)
    h = layers.BatchNormalization(
        epsilon=builders.EPSILON, momentum=builders.MOMENTUM,
        fused=case.bn == 'fused',
        **{name + '_initializer': const(value)
           for name, value in bn_values.items()})(h, training=training)
    bn_name = builders.find_op_upstream(
        h, 'FusedBatchNormV3' if case.bn == 'fused' else 'AddV2').name
    if case.maxpool:
        h = layers.MaxPooling2D(2, 1)(h)
    if case.consumer == 'fc':
        h = layers.Flatten()(h)
        out = layers.Dense(UNITS, kernel_initializer=const(
            values.normal([h.shape[1], UNITS])))(h)
    else:
        out = layers.Conv2D(
            UNITS, 2, strides=case.stride, padding=case.padding.lower(),
            activation='relu',
            kernel_initializer=const(
                values.normal([2, 2, CHANNELS, UNITS])))(h)
    layer = builders.find_op_upstream(
        out, 'MatMul' if case.consumer == 'fc' else 'Conv2D')
    if training:
        for op in out.graph.get_operations():
            if op.type == 'AssignSubVariableOp':
                v1.add_to_collection(v1.GraphKeys.UPDATE_OPS, op)
    return [out], bn_name, layer.name


def build(case: Case, training: bool, seed: int = 0) -> Built:
    """Builds `case` in a new graph (same values for the same seed)."""
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, INPUT.shape, name='x')
        make = _build_keras if case.keras else _build_raw
        outputs, bn_name, layer_name = make(
            case, training, builders.Values(seed), x)
    return Built(graph, x, outputs, bn_name, layer_name)


def _loss(built):
    rng = np.random.RandomState(7)
    return tf.add_n([
        tf.reduce_sum(out * rng.randn(*out.shape.as_list()).astype(
            np.float32)) for out in built.outputs])


def _run(built, steps=0):
    """Outputs, then gradients w.r.t. the input and every trainable
    variable (by name), then the moving statistics after `steps` update
    runs."""
    with built.graph.as_default():
        variables = sorted(v1.trainable_variables(), key=lambda v: v.name)
        grads = v1.gradients(_loss(built), [built.inputs] + variables)
        updates = v1.get_collection(v1.GraphKeys.UPDATE_OPS)
        moving = sorted([v for v in v1.global_variables()
                         if 'moving_' in v.op.name], key=lambda v: v.name)
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            values = sess.run(built.outputs + grads, {built.inputs: INPUT})
            for _ in range(steps):
                sess.run(updates, {built.inputs: INPUT})
            return values, sess.run(moving)


def _relative_error(expected, actual):
    return np.abs(actual - expected).max() / max(np.abs(expected).max(),
                                                 1e-6)


def _assert_close(expected, actual, tolerance):
    assert len(expected) == len(actual)
    for index, (want, got) in enumerate(zip(expected, actual)):
        error = _relative_error(want, got)
        assert error <= tolerance, 'tensor %d: relative error %.3g' % (
            index, error)


EXACT_CASES = [
    Case('fc', 'fused'),
    Case('fc', 'unfused'),
    Case('fc', 'fused', first='fc'),
    Case('fc', 'unfused', first='fc'),
    Case('conv', 'fused', stride=1),
    Case('conv', 'unfused', stride=2),
    Case('conv', 'fused', stride=2),
    Case('fc', 'fused', keras=True),
    Case('fc', 'unfused', keras=True),
    Case('fc', 'unfused', keras=True, first='fc'),
    Case('conv', 'fused', stride=2, keras=True),
    Case('conv', 'unfused', stride=1, keras=True),
]
AFFINE_CASES = [
    Case('fc', maxpool=True),
    Case('conv', padding='SAME'),
    Case('fc', second_reader=True),
    Case('conv', maxpool=True, keras=True),
    Case('conv', next_bn=True),
]


def _ids(cases):
    return ['%s-%s-%s-s%d-%s%s%s%s%s' % (
        c.first, c.consumer, c.bn, c.stride, c.padding,
        '-maxpool' * c.maxpool, '-two_readers' * c.second_reader,
        '-next_bn' * c.next_bn, '-keras' * c.keras) for c in cases]


@pytest.mark.parametrize('case', EXACT_CASES, ids=_ids(EXACT_CASES))
def test_eval_fold_forward_matches_original(case):
    expected, _ = _run(build(case, training=False))
    built = build(case, training=False)
    report = tf1_quantize.fold_batch_norms(built.graph, is_training=False)
    assert report.folded_forward == [built.bn_name]
    assert report.forward_layers == [built.layer_name]
    assert report.affine == []
    actual, _ = _run(built)
    _assert_close(expected, actual, 1e-4)


@pytest.mark.parametrize('case', EXACT_CASES, ids=_ids(EXACT_CASES))
def test_training_fold_forward_matches_original(case):
    """Outputs, gradients and moving-average updates before the delays."""
    expected, expected_moving = _run(build(case, training=True), steps=2)
    built = build(case, training=True)
    tf1_quantize.experimental_create_training_graph(
        built.graph, quant_delay=FUTURE, freeze_bn_delay=FUTURE)
    report = tf1_quantize.last_report(built.graph)
    assert report.folded_forward == [built.bn_name]
    actual, moving = _run(built, steps=2)
    _assert_close(expected, actual, 2e-4)
    _assert_close(expected_moving, moving, 1e-5)


@pytest.mark.parametrize('case', [Case('fc', 'fused'),
                                  Case('conv', 'unfused', stride=2)],
                         ids=['fc-fused', 'conv-unfused'])
def test_fold_batch_norms_training_fold_forward_matches_original(case):
    expected, _ = _run(build(case, training=True))
    built = build(case, training=True)
    report = tf1_quantize.fold_batch_norms(built.graph)
    assert report.folded_forward == [built.bn_name]
    actual, _ = _run(built)
    _assert_close(expected, actual, 2e-4)


def _variable_values(sess, names):
    variables = {v.op.name: v for v in v1.global_variables()}
    return [sess.run(variables[name]) for name in names]


@pytest.mark.parametrize('case', [Case('fc', 'fused'),
                                  Case('conv', 'unfused', stride=2)],
                         ids=['fc-fused', 'conv-unfused'])
def test_moving_statistics_used_and_frozen_after_freeze(case):
    statistics = ['BatchNorm/moving_mean', 'BatchNorm/moving_variance']
    built = build(case, training=True)
    tf1_quantize.experimental_create_training_graph(
        built.graph, quant_delay=FUTURE, freeze_bn_delay=2)
    feed = {built.inputs: INPUT}
    with built.graph.as_default(), v1.Session() as sess:
        sess.run(v1.global_variables_initializer())
        initial = _variable_values(sess, statistics)
        updates = v1.get_collection(v1.GraphKeys.UPDATE_OPS)
        sess.run(updates, feed)  # step 1: batch statistics, still updating
        moving = _variable_values(sess, statistics)
        frozen, _ = sess.run([built.outputs, updates], feed)  # step 2
        after = _variable_values(sess, statistics)
    assert not np.allclose(initial[0], moving[0])
    for before, now in zip(moving, after):
        np.testing.assert_array_equal(before, now)
    # An inference-mode BN with those statistics computes the same.
    reference = build(case, training=False)
    with reference.graph.as_default(), v1.Session() as sess:
        sess.run(v1.global_variables_initializer())
        variables = {v.op.name: v for v in v1.global_variables()}
        for name, value in zip(statistics, moving):
            sess.run(variables[name].assign(value))
        expected = sess.run(reference.outputs, {reference.inputs: INPUT})
    _assert_close(expected, frozen, 1e-4)


def _quantize(graph, training):
    """The contrib training or eval rewrite; returns its report."""
    rewrite = (tf1_quantize.create_training_graph if training else
               tf1_quantize.create_eval_graph)
    rewrite(graph)
    return tf1_quantize.last_report(graph)


@pytest.mark.parametrize('case', AFFINE_CASES, ids=_ids(AFFINE_CASES))
@pytest.mark.parametrize('training', [True, False])
def test_inexact_cases_stay_affine(case, training):
    built = build(case, training=training)
    report = _quantize(built.graph, training)
    assert report.folded_forward == []
    assert report.affine == [built.bn_name]
    assert report.folded == ([built.layer_name] if case.next_bn else [])
    assert 'folded forward:' not in str(report)
    assert 'affine (not after a layer): %s' % built.bn_name in str(report)


@pytest.mark.parametrize('case', [Case('fc', 'fused'),
                                  Case('conv', 'unfused', keras=True)],
                         ids=['fc-fused', 'conv-unfused-keras'])
@pytest.mark.parametrize('training', [True, False])
def test_second_rewrite_changes_nothing(case, training):
    built = build(case, training=training)
    report = _quantize(built.graph, training)
    assert 'folded forward: %s into %s' % (
        built.bn_name, built.layer_name) in str(report)
    # The folded layer is quantized like any other: its weights are the
    # folded product.
    layer = built.graph.get_operation_by_name(built.layer_name)
    assert layer.inputs[1].op.type == 'FakeQuantWithMinMaxVars'
    assert layer.inputs[1].op.inputs[0].op.name.endswith('mul_fold')
    before = built.graph.as_graph_def().SerializeToString(deterministic=True)
    second = _quantize(built.graph, training)
    after = built.graph.as_graph_def().SerializeToString(deterministic=True)
    assert before == after
    assert second.folded_forward == [] and second.affine == []


def test_eval_graph_exports_fully_integer():
    """Keras Conv2D -> Relu -> BN -> Flatten -> Dense: no float op left."""
    case = Case('fc', 'fused', keras=True)
    built = build(case, training=False)
    tf1_quantize.experimental_create_eval_graph(built.graph, symmetric=True)
    assert tf1_quantize.last_report(built.graph).folded_forward == [
        built.bn_name]
    output = '%s/act_quant/FakeQuantWithMinMaxVars' % (
        built.layer_name.rpartition('/')[0])
    with built.graph.as_default(), v1.Session() as sess:
        sess.run(v1.global_variables_initializer())
        model, result = export.export_session(
            sess, 'x', output, inference_type=tf.int8,
            input_ranges={'x': (-4.0, 4.0)}, parity_inputs=INPUT)
    assert result.float_ops == ()
    assert export.find_float_ops(model) == []
