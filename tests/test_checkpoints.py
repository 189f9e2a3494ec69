"""Checkpoint compatibility of the rewritten graphs (spec 1.3, 4.2, 6, 10).

* A checkpoint saved from a quantization-aware training graph restores into
  the eval graph of the same model, which then computes the fake-quantized
  eval numbers from the trained ranges.
* A checkpoint laid out as a TF 1.15 `tf.contrib.quantize` model is written
  from the spec's name list and restores into our training (and eval) graph
  with no missing or unexpected variable; training then continues from the
  restored moving averages and step counter.
"""

import os

import numpy as np
import pytest
import tensorflow as tf

import tf1_quantize
from tf1_quantize import checkpoints
from tf1_quantize import cli
import builders as gb

v1 = tf.compat.v1

FQ = 'FakeQuantWithMinMaxVars'
GLOBAL = v1.GraphKeys.GLOBAL_VARIABLES
STEP = 'fake_quantization_step'


def _ema_shadows(prefix):
    return {'%s/%s/%s/%s' % (prefix, prefix, bound, kind)
            for bound in ('min', 'max') for kind in ('biased', 'local_step')}


def _variables(graph):
    return {v.op.name: v for v in graph.get_collection(GLOBAL)}


def _checkpoint_variables(path):
    return dict(tf.train.list_variables(path))


def _fq_inputs(graph, prefix):
    """(input, output, min, max) tensors of the FakeQuant of `prefix`."""
    op = graph.get_operation_by_name(prefix + '/' + FQ)
    return [op.inputs[0], op.outputs[0], op.inputs[1], op.inputs[2]]


def _train_op(graph, loss_source, update_ops):
    """A loss and an optimizer, built after the rewrite (as required)."""
    with graph.as_default():
        loss = tf.reduce_mean(tf.square(loss_source))
        with tf.control_dependencies(update_ops):
            return v1.train.GradientDescentOptimizer(0.05).minimize(loss)


def _folded_weights(weights, gamma, moving_variance):
    """The eval fold's ``mul_fold``: w * gamma / sqrt(var + eps)."""
    return weights * gamma / np.sqrt(moving_variance + gb.EPSILON)


# ---------------------------------------------------------------------------
# Training checkpoint -> eval graph.


PREFIXES = ('test/test/weights_quant', 'test/act_quant',
            'test/test/conv_quant')


@pytest.mark.parametrize('delay,resource', [(0, False), (2, True)],
                         ids=['nodelay-ref', 'delay-resource'])
def test_training_checkpoint_restores_into_eval_graph(tmp_path, delay,
                                                      resource):
    # Training: conv + fused BN, bypass, Relu6 (weights_quant, conv_quant,
    # act_quant), rewritten, then an optimizer.
    train = gb.build_placement_graph('conv', 'Relu6', True, True, resource)
    graph = train.graph
    tf1_quantize.create_training_graph(graph, quant_delay=delay)
    output = graph.get_operation_by_name('output').inputs[0]
    train_op = _train_op(graph, output, train.built.update_ops)
    with graph.as_default():
        init = v1.global_variables_initializer()
        saver = v1.train.Saver()
    path = os.path.join(str(tmp_path), 'train.ckpt')
    with v1.Session(graph=graph) as sess:
        sess.run(init)
        for feed in train.built.feeds(3, seed=7):
            sess.run(train_op, feed)
        saver.save(sess, path)
        trained = sess.run(_variables(graph))
    ckpt = _checkpoint_variables(path)
    assert set(ckpt) == set(trained)
    for prefix in PREFIXES:
        assert {prefix + '/min', prefix + '/max'} <= set(ckpt)
    assert (STEP in ckpt) == bool(delay)
    if delay:
        assert tf.train.load_variable(path, STEP) == 3

    # Eval: the same model with an inference-mode BN.
    evaluation = gb.build_placement_graph('conv', 'Relu6', True, True,
                                          resource, bn_training=False)
    eval_graph = evaluation.graph
    if delay:
        tf1_quantize.experimental_create_eval_graph(eval_graph,
                                                    quant_delay=delay)
    else:
        tf1_quantize.create_eval_graph(eval_graph)
    eval_vars = _variables(eval_graph)
    shadows = set().union(*(_ema_shadows(p) for p in PREFIXES[1:]))
    assert set(eval_vars) <= set(ckpt)
    assert set(ckpt) - set(eval_vars) == shadows
    for name, var in eval_vars.items():
        assert var.shape.as_list() == ckpt[name], name
    with eval_graph.as_default():
        eval_saver = v1.train.Saver(var_list=list(eval_vars.values()))
    op = eval_graph.get_operation_by_name
    fetches = {p: _fq_inputs(eval_graph, p) for p in PREFIXES}
    fetches['conv_weights'] = op('test/test/Conv2D_Fold').inputs[1]
    fetches['add_fold'] = op('test/test/add_fold').outputs[0]
    fetches['bypass_input'] = op('test/AddV2').inputs[0]
    fetches['output'] = op('output').inputs[0]
    feed_value = evaluation.built.feeds(1, seed=11)[0][evaluation.built.inputs]
    with v1.Session(graph=eval_graph) as sess:
        eval_saver.restore(sess, path)  # No NotFoundError.
        restored = sess.run(eval_vars)
        values = sess.run(fetches, {evaluation.built.inputs: feed_value})
    for name, value in restored.items():
        np.testing.assert_array_equal(value, trained[name], err_msg=name)

    # The eval numbers: fold with the moving statistics, then fake-quantize
    # with the trained ranges.
    for prefix in PREFIXES:
        np.testing.assert_array_equal(values[prefix][2:], (
            trained[prefix + '/min'], trained[prefix + '/max']))
    w = trained['test/test/weights']
    gamma = trained['test/test/BatchNorm/gamma']
    beta = trained['test/test/BatchNorm/beta']
    mean = trained['test/test/BatchNorm/moving_mean']
    variance = trained['test/test/BatchNorm/moving_variance']
    mul_fold = _folded_weights(w, gamma, variance)
    weights_in, weights_out, w_min, w_max = values['test/test/weights_quant']
    np.testing.assert_allclose(weights_in, mul_fold, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        weights_out, gb.numpy_fake_quant(weights_in, w_min, w_max, 8, True),
        rtol=0, atol=1e-5)
    np.testing.assert_array_equal(values['conv_weights'], weights_out)
    bias = beta - mean * gamma / np.sqrt(variance + gb.EPSILON)
    expected_add = tf.nn.conv2d(feed_value, weights_out, [1, 1, 1, 1],
                                'SAME').numpy() + bias
    np.testing.assert_allclose(values['add_fold'], expected_add, rtol=1e-4,
                               atol=1e-4)
    conv_in, conv_out, c_min, c_max = values['test/test/conv_quant']
    np.testing.assert_array_equal(conv_in, values['add_fold'])
    np.testing.assert_allclose(
        conv_out, gb.numpy_fake_quant(conv_in, c_min, c_max, 8, False),
        rtol=0, atol=1e-5)
    np.testing.assert_array_equal(values['bypass_input'], conv_out)
    act_in, act_out, a_min, a_max = values['test/act_quant']
    np.testing.assert_allclose(
        act_in, np.clip(conv_out + feed_value, 0.0, 6.0), rtol=1e-5,
        atol=1e-5)
    np.testing.assert_allclose(
        act_out, gb.numpy_fake_quant(act_in, a_min, a_max, 8, False),
        rtol=0, atol=1e-5)
    np.testing.assert_array_equal(values['output'], act_out)


# ---------------------------------------------------------------------------
# A TF 1.15 contrib-layout checkpoint -> our graphs.

SCOPE = 'MobilenetV1/Conv2d_0'
WEIGHTS_QUANT = SCOPE + '/weights_quant'
ACT_QUANT = SCOPE + '/act_quant'
CONTRIB_STEP = 1000
CONTRIB_LOCAL_STEP = 200.0
QUANT_DELAY = 500


def _contrib_values():
    """name -> value of every variable a contrib QAT checkpoint holds for
    ``conv2d(..., scope=SCOPE, normalizer_fn=batch_norm(fused),
    activation_fn=relu6)`` after ``create_training_graph(quant_delay=...)``
    (spec 3.9 and 10)."""
    values = gb.Values(42)
    decay_power = gb.EMA_DECAY**CONTRIB_LOCAL_STEP
    act_min, act_max = 0.0, 5.25
    result = {
        SCOPE + '/weights': values.normal([3, 3, 3, 4]),
        SCOPE + '/BatchNorm/gamma': values.positive([4]),
        SCOPE + '/BatchNorm/beta': values.normal([4]),
        SCOPE + '/BatchNorm/moving_mean': values.normal([4]),
        SCOPE + '/BatchNorm/moving_variance': values.positive([4]),
        WEIGHTS_QUANT + '/min': np.float32(-0.875),
        WEIGHTS_QUANT + '/max': np.float32(0.75),
        ACT_QUANT + '/min': np.float32(act_min),
        ACT_QUANT + '/max': np.float32(act_max),
        STEP: np.int64(CONTRIB_STEP),
    }
    for bound, value in (('min', act_min), ('max', act_max)):
        shadow = '%s/%s/%s' % (ACT_QUANT, ACT_QUANT, bound)
        result[shadow + '/biased'] = np.float32(value * (1.0 - decay_power))
        result[shadow + '/local_step'] = np.float32(CONTRIB_LOCAL_STEP)
    return result


@pytest.fixture(scope='module')
def contrib_checkpoint(tmp_path_factory):
    """Writes the contrib-layout checkpoint with ref variables, as TF 1.15
    did. Returns (path, values)."""
    values = _contrib_values()
    graph = tf.Graph()
    with graph.as_default():
        variables = [
            v1.get_variable(name, initializer=tf.constant(value),
                            use_resource=False,
                            trainable=name.endswith(('weights', 'gamma',
                                                     'beta')))
            for name, value in values.items()]
        for var in variables:
            assert var.op.type == 'VariableV2', var.op.name
        saver = v1.train.Saver(var_list=variables)
        init = v1.global_variables_initializer()
    path = os.path.join(str(tmp_path_factory.mktemp('contrib')),
                        'model.ckpt-%d' % CONTRIB_STEP)
    with v1.Session(graph=graph) as sess:
        sess.run(init)
        saver.save(sess, path)
    return path, values


def _mobilenet_graph(bn_training):
    graph = tf.Graph()
    with graph.as_default():
        x = gb.input_placeholder()
        layer = gb.conv_layer(x, SCOPE, 4, gb.Values(0), batch_norm=True,
                              bn_training=bn_training, activation='Relu6',
                              resource=False)
        tf.reduce_sum(layer.output, name='output')
    return graph, x, layer


def test_contrib_checkpoint_layout_is_the_spec_list(contrib_checkpoint):
    path, values = contrib_checkpoint
    ckpt = _checkpoint_variables(path)
    assert set(ckpt) == set(values)
    reader = tf.train.load_checkpoint(path)
    dtypes = reader.get_variable_to_dtype_map()
    assert dtypes[STEP] == tf.int64
    assert {n for n, d in dtypes.items() if d != tf.float32} == {STEP}


def test_contrib_checkpoint_restores_into_training_graph(contrib_checkpoint):
    path, written = contrib_checkpoint
    graph, x, layer = _mobilenet_graph(bn_training=True)
    tf1_quantize.create_training_graph(graph, quant_delay=QUANT_DELAY)
    op = graph.get_operation_by_name
    output = op('output').inputs[0]
    train_op = _train_op(graph, output, layer.update_ops)
    variables = _variables(graph)
    # No missing and no unexpected variable, same shapes and dtypes.
    ckpt = _checkpoint_variables(path)
    assert set(variables) == set(ckpt)
    for name, var in variables.items():
        assert var.shape.as_list() == ckpt[name], name
    assert variables[STEP].dtype.base_dtype == tf.int64
    with graph.as_default():
        saver = v1.train.Saver()
    fetches = {
        'train': train_op,
        'output': output,
        'relu6': op(SCOPE + '/Relu6').outputs[0],
        'mul_fold': op(SCOPE + '/mul_fold').outputs[0],
        'conv_weights': op(SCOPE + '/Conv2D_Fold').inputs[1],
        'weights_range': _fq_inputs(graph, WEIGHTS_QUANT)[2:],
        'act_range': _fq_inputs(graph, ACT_QUANT)[2:],
    }
    feed = {x: gb.random_feeds(x, 1, seed=13)[0][x]}
    with v1.Session(graph=graph) as sess:
        saver.restore(sess, path)
        restored = sess.run(variables)
        for name, value in written.items():
            np.testing.assert_array_equal(restored[name], value,
                                          err_msg=name)
        values = sess.run(fetches, feed)
        after = sess.run(variables)

    # The counter continues from the checkpoint: past the delay, quantized.
    assert after[STEP] == CONTRIB_STEP + 1
    # The moving averages continue from the restored shadow variables.
    batch = gb.batch_range(values['relu6'], 8, False, False)
    for index, bound in enumerate(('min', 'max')):
        shadow = '%s/%s/%s' % (ACT_QUANT, ACT_QUANT, bound)
        reference = gb.EmaReference(biased=float(written[shadow + '/biased']),
                                    local_step=CONTRIB_LOCAL_STEP)
        expected = reference.update(batch[index])
        np.testing.assert_allclose(values['act_range'][index], expected,
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(after[ACT_QUANT + '/' + bound], expected,
                                   rtol=1e-5, atol=1e-6)
        assert after[shadow + '/local_step'] == CONTRIB_LOCAL_STEP + 1
        np.testing.assert_allclose(after[shadow + '/biased'],
                                   reference.biased, rtol=1e-5, atol=1e-7)
    # The restored range is close to the written one (weight 0.001 on the
    # new batch), not a fresh first-batch range.
    assert abs(values['act_range'][1] - written[ACT_QUANT + '/max']) < 0.01
    np.testing.assert_allclose(
        values['weights_range'],
        gb.batch_range(values['mul_fold'], 8, True, False), rtol=1e-6,
        atol=1e-7)
    np.testing.assert_allclose(
        values['conv_weights'],
        gb.numpy_fake_quant(values['mul_fold'], *values['weights_range'], 8,
                            True), rtol=0, atol=1e-5)
    np.testing.assert_allclose(
        values['output'],
        gb.numpy_fake_quant(values['relu6'], *values['act_range'], 8, False),
        rtol=0, atol=1e-5)
    # The step trained the weights.
    assert not np.array_equal(after[SCOPE + '/weights'],
                              written[SCOPE + '/weights'])


def test_contrib_checkpoint_restores_into_eval_graph(contrib_checkpoint):
    path, written = contrib_checkpoint
    graph, x, _ = _mobilenet_graph(bn_training=False)
    tf1_quantize.create_eval_graph(graph)
    variables = _variables(graph)
    ckpt = _checkpoint_variables(path)
    assert set(variables) <= set(ckpt)
    assert set(ckpt) - set(variables) == _ema_shadows(ACT_QUANT) | {STEP}
    with graph.as_default():
        saver = v1.train.Saver(var_list=list(variables.values()))
    op = graph.get_operation_by_name
    fetches = {
        'output': op('output').inputs[0],
        'relu6': op(SCOPE + '/Relu6').outputs[0],
        'conv_weights': op(SCOPE + '/Conv2D_Fold').inputs[1],
    }
    feed_value = gb.random_feeds(x, 1, seed=17)[0][x]
    with v1.Session(graph=graph) as sess:
        saver.restore(sess, path)
        values = sess.run(fetches, {x: feed_value})
    mul_fold = _folded_weights(written[SCOPE + '/weights'],
                               written[SCOPE + '/BatchNorm/gamma'],
                               written[SCOPE + '/BatchNorm/moving_variance'])
    weights = gb.numpy_fake_quant(mul_fold, written[WEIGHTS_QUANT + '/min'],
                                  written[WEIGHTS_QUANT + '/max'], 8, True)
    np.testing.assert_allclose(values['conv_weights'], weights, rtol=0,
                               atol=1e-5)
    gamma = written[SCOPE + '/BatchNorm/gamma']
    variance = written[SCOPE + '/BatchNorm/moving_variance']
    bias = (written[SCOPE + '/BatchNorm/beta'] -
            written[SCOPE + '/BatchNorm/moving_mean'] * gamma /
            np.sqrt(variance + gb.EPSILON))
    conv = tf.nn.conv2d(feed_value, values['conv_weights'], [1, 1, 1, 1],
                        'SAME').numpy()
    np.testing.assert_allclose(values['relu6'],
                               np.clip(conv + bias, 0.0, 6.0), rtol=1e-4,
                               atol=1e-4)
    np.testing.assert_allclose(
        values['output'],
        gb.numpy_fake_quant(values['relu6'], written[ACT_QUANT + '/min'],
                            written[ACT_QUANT + '/max'], 8, False),
        rtol=0, atol=1e-5)
    # Outputs above the learned range are clamped to it.
    assert values['output'].max() <= written[ACT_QUANT + '/max'] + 1e-6


# ---------------------------------------------------------------------------
# The checkpoint check (tf1_quantize.checkpoints, `python -m tf1_quantize
# check`) on the contrib-layout checkpoint.


def test_check_finds_the_contrib_checkpoint_fits_the_training_graph(
        contrib_checkpoint):
    path, values = contrib_checkpoint
    graph, _, _ = _mobilenet_graph(bn_training=True)
    tf1_quantize.create_training_graph(graph, quant_delay=QUANT_DELAY)
    report = checkpoints.check_checkpoint(graph, path)
    assert report.ok and report.problems == [] and report.ignored == []
    assert report.ranges[WEIGHTS_QUANT + '/min'] == pytest.approx(-0.875)
    assert report.ranges[ACT_QUANT + '/max'] == pytest.approx(5.25)
    mean = values[SCOPE + '/BatchNorm/moving_mean']
    assert report.batch_norm_statistics[SCOPE + '/BatchNorm/moving_mean'] == (
        pytest.approx((mean.min(), mean.mean(), mean.max())))


def test_check_ignores_training_state_for_the_eval_graph(contrib_checkpoint):
    path, _ = contrib_checkpoint
    graph, _, _ = _mobilenet_graph(bn_training=False)
    tf1_quantize.create_eval_graph(graph)
    report = checkpoints.check_checkpoint(graph, path)
    assert report.ok
    ignored = {p.name for p in report.ignored}
    assert ignored == {STEP} | {
        '%s/%s/%s/%s' % (ACT_QUANT, ACT_QUANT, bound, kind)
        for bound in ('min', 'max') for kind in ('biased', 'local_step')}
    assert all('training-only' in p.reason for p in report.ignored)


def test_check_refuses_a_renamed_scope_and_says_why(contrib_checkpoint,
                                                    tmp_path, capsys):
    path, _ = contrib_checkpoint
    graph = tf.Graph()
    with graph.as_default():
        x = gb.input_placeholder()
        layer = gb.conv_layer(x, 'MobilenetV2/Conv2d_0', 4, gb.Values(0),
                              batch_norm=True, bn_training=True,
                              activation='Relu6', resource=False)
        tf.reduce_sum(layer.output, name='output')
        meta = str(tmp_path / 'renamed.meta')
        v1.train.export_meta_graph(meta)
    report = checkpoints.check_checkpoint(graph, path)
    assert not report.ok
    weights = [p for p in report.problems
               if p.name == 'MobilenetV2/Conv2d_0/weights']
    assert weights and weights[0].kind == 'missing'
    assert 'renamed scope' in weights[0].reason
    assert SCOPE + '/weights' in weights[0].reason
    status = cli.main(['check', '--meta', meta, '--rewrite', 'train',
                       '--checkpoint', path])
    _, err = capsys.readouterr()
    assert status == 2 and 'would not restore' in err


def test_check_reports_an_unreadable_checkpoint(tmp_path):
    with pytest.raises(ValueError, match='Cannot read checkpoint'):
        checkpoints.check_checkpoint(tf.Graph(), str(tmp_path / 'nothing'))
