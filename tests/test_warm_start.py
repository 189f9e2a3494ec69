"""Warm-starting a QAT graph from a float checkpoint (`warm_start`): with a
Saver, with `tf.compat.v1.train.warm_start` (what Estimator's
`WarmStartSettings` runs), and with an Estimator where it still exists."""

import os

import numpy as np
import pytest
import tensorflow as tf

import cluster_task
import builders as gb
import tf1_quantize
from tf1_quantize import warm_start

v1 = tf.compat.v1


def _train_float(directory, steps=2):
    """A float model trained with Momentum; returns its checkpoint."""
    graph = tf.Graph()
    with graph.as_default():
        global_step = v1.train.get_or_create_global_step()
        loss = cluster_task.build_model(training=True)
        train_op = tf.group(
            v1.train.MomentumOptimizer(0.1, 0.9).minimize(
                loss, global_step=global_step),
            *v1.get_collection(v1.GraphKeys.UPDATE_OPS))
        with v1.Session() as session:
            session.run(v1.global_variables_initializer())
            for step in range(steps):
                session.run(train_op, cluster_task.feed(0, step))
            return v1.train.Saver().save(session,
                                         os.path.join(directory, 'float'))


def _qat_graph():
    """The same model, rewritten for QAT, with its own optimizer."""
    graph = tf.Graph()
    with graph.as_default():
        global_step = v1.train.get_or_create_global_step()
        loss = cluster_task.build_model(training=True)
        tf1_quantize.experimental_create_training_graph(quant_delay=5)
        v1.train.AdamOptimizer().minimize(loss, global_step=global_step)
    return graph


@pytest.fixture(scope='module')
def float_checkpoint(tmp_path_factory):
    return _train_float(str(tmp_path_factory.mktemp('float')))


def _check_restored(session, graph, checkpoint):
    """Every model variable holds the float checkpoint's value; the model
    variables are what the float checkpoint has but its global step and
    Momentum slots."""
    reader = tf.train.load_checkpoint(checkpoint)
    names = [v.op.name for v in warm_start.model_variables(graph)]
    assert sorted(names) == sorted(
        name for name in reader.get_variable_to_shape_map()
        if name != 'global_step' and 'Momentum' not in name)
    for variable in warm_start.model_variables(graph):
        np.testing.assert_array_equal(session.run(variable),
                                      reader.get_tensor(variable.op.name))


def _restore_with_saver(session, checkpoint):
    v1.train.Saver(warm_start.model_variables()).restore(session, checkpoint)


def _restore_with_slim(session, checkpoint):
    slim = pytest.importorskip('tf_slim', reason='tf-slim is not installed')
    slim.assign_from_checkpoint_fn(checkpoint,
                                   warm_start.model_variables())(session)


@pytest.mark.parametrize('restore', [_restore_with_saver, _restore_with_slim])
def test_model_variables_restore(float_checkpoint, restore):
    graph = _qat_graph()
    with graph.as_default(), v1.Session() as session:
        session.run(v1.global_variables_initializer())
        restore(session, float_checkpoint)
        _check_restored(session, graph, float_checkpoint)
        # The rewrite's variables keep their initial values.
        ranges = cluster_task.range_variables(graph)
        assert session.run(ranges['conv1/weights_quant/max']) == 6.0


def test_vars_to_warm_start_with_warm_start_util(float_checkpoint):
    graph = _qat_graph()
    with graph.as_default():
        v1.train.warm_start(float_checkpoint,
                            vars_to_warm_start=warm_start.vars_to_warm_start())
        with v1.Session() as session:
            session.run(v1.global_variables_initializer())
            _check_restored(session, graph, float_checkpoint)
            assert session.run(v1.train.get_global_step()) == 0


def test_restoring_everything_fails_without_the_helper(float_checkpoint):
    graph = _qat_graph()
    with graph.as_default():
        with pytest.raises(ValueError, match='is not found in'):
            v1.train.warm_start(float_checkpoint, vars_to_warm_start=['.*'])


_ESTIMATOR = getattr(v1, 'estimator', None)
_IMAGES = np.random.RandomState(0).normal(size=(8, 4, 4, 3)).astype(
    np.float32)
_LABELS = np.arange(8, dtype=np.int64) % 4


def _model_fn(features, labels, mode, params):
    """A small classifier; with params['quantize'], the QAT version."""
    keys = _ESTIMATOR.ModeKeys
    training = mode == keys.TRAIN
    values = gb.Values(0)
    first = gb.conv_layer(features, 'conv1', 4, values, batch_norm=True,
                          bn_training=training)
    second = gb.conv_layer(first.output, 'conv2', 4, values,
                           activation='Relu')
    logits = tf.reduce_mean(second.output, axis=[1, 2])
    if mode == keys.PREDICT:
        if params['quantize']:
            tf1_quantize.create_eval_graph()
        return _ESTIMATOR.EstimatorSpec(
            mode, predictions={'logits': logits},
            export_outputs={'logits': _ESTIMATOR.export.PredictOutput(
                {'logits': logits})})
    loss = v1.losses.sparse_softmax_cross_entropy(labels, logits)
    if not training:
        if params['quantize']:
            tf1_quantize.create_eval_graph()
        return _ESTIMATOR.EstimatorSpec(mode, loss=loss)
    if params['quantize']:
        tf1_quantize.experimental_create_training_graph(
            quant_delay=1, freeze_bn_delay=0, delay_counter='global_step')
    optimizer = v1.train.GradientDescentOptimizer(params['learning_rate'])
    train_op = tf.group(
        optimizer.minimize(loss, global_step=v1.train.get_global_step()),
        *v1.get_collection(v1.GraphKeys.UPDATE_OPS))
    return _ESTIMATOR.EstimatorSpec(mode, loss=loss, train_op=train_op)


def _input_fn():
    return tf.data.Dataset.from_tensors((_IMAGES, _LABELS)).repeat()


def _serving_input_fn():
    images = v1.placeholder(tf.float32, [None, 4, 4, 3], name='images')
    return _ESTIMATOR.export.TensorServingInputReceiver(images,
                                                        {'images': images})


@pytest.mark.skipif(_ESTIMATOR is None,
                    reason='tf.compat.v1.estimator is gone in TF >= 2.16 '
                    '(this is TF %s)' % tf.__version__)
def test_estimator_qat_warm_started_from_float(tmp_path):
    float_dir, qat_dir = str(tmp_path / 'float'), str(tmp_path / 'qat')
    _ESTIMATOR.Estimator(_model_fn, float_dir, params={
        'quantize': False, 'learning_rate': 0.1}).train(_input_fn, steps=3)
    # Learning rate 0 and the batch norms frozen from the start: training
    # changes no model variable, so the QAT checkpoint must hold the float
    # values if (and only if) every one was warm-started.
    qat = _ESTIMATOR.Estimator(
        _model_fn, qat_dir, params={'quantize': True, 'learning_rate': 0.0},
        warm_start_from=_ESTIMATOR.WarmStartSettings(
            float_dir, vars_to_warm_start=warm_start.vars_to_warm_start()))
    qat.train(_input_fn, steps=2)
    floats = tf.train.load_checkpoint(float_dir)
    qats = tf.train.load_checkpoint(qat_dir)
    model = [n for n in floats.get_variable_to_shape_map()
             if n != 'global_step']
    assert len(model) == 7
    for name in model:
        np.testing.assert_array_equal(qats.get_tensor(name),
                                      floats.get_tensor(name))
    assert qats.get_tensor('global_step') == 2
    assert qats.get_tensor('conv1/act_quant/max') > 0.0
    assert np.isfinite(qat.evaluate(_input_fn, steps=1)['loss'])
    exported = qat.export_saved_model(str(tmp_path / 'export'),
                                      _serving_input_fn)
    graph = tf.Graph()
    with graph.as_default(), v1.Session() as session:
        v1.saved_model.loader.load(session, ['serve'], exported)
        assert 'FakeQuantWithMinMaxVars' in {
            op.type for op in graph.get_operations()}
