"""`check` as a migration doctor: the verdict on quantization state.

A float checkpoint and two QAT checkpoints (one from the training graph,
which holds the moving-average state, one from the eval graph, which does
not) meet training and eval rewrites of the same model (Conv + fused BN +
Relu6). The report's claims are then checked by running the graphs: the
printed `init_from_checkpoint` mapping restores everything else, and a
range reported as losing its moving-average state does take the first
batch's range on the first training step.
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

SCOPE = 'Net/Conv'
WEIGHTS = SCOPE + '/weights_quant'
ACT = SCOPE + '/act_quant'
STEP = 'fake_quantization_step'
FLOAT_VARIABLES = {SCOPE + '/weights'} | {
    SCOPE + '/BatchNorm/' + name
    for name in ('gamma', 'beta', 'moving_mean', 'moving_variance')}


def _model(rewrite=None, quant_delay=0):
    """(graph, input, output, update ops); `rewrite`: None, 'train', 'eval'.
    """
    graph = tf.Graph()
    with graph.as_default():
        x = gb.input_placeholder()
        layer = gb.conv_layer(x, SCOPE, 4, gb.Values(3), batch_norm=True,
                              bn_training=rewrite != 'eval',
                              activation='Relu6', resource=True)
        output = tf.identity(layer.output, name='output')
    if rewrite == 'train':
        tf1_quantize.create_training_graph(graph, quant_delay=quant_delay)
    elif rewrite == 'eval':
        tf1_quantize.create_eval_graph(graph)
    return graph, x, output, layer.update_ops


def _train_op(graph, output, update_ops):
    with graph.as_default():
        with tf.control_dependencies(update_ops):
            return v1.train.GradientDescentOptimizer(0.01).minimize(
                tf.reduce_mean(tf.square(output)))


def _save(graph, path, train_op=None, feeds=()):
    with graph.as_default():
        init = v1.global_variables_initializer()
        saver = v1.train.Saver()
    with v1.Session(graph=graph) as sess:
        sess.run(init)
        for feed in feeds:
            sess.run(train_op, feed)
        saver.save(sess, path)
    return path


@pytest.fixture(scope='module')
def saved(tmp_path_factory):
    """Checkpoints: float (trained), QAT training, QAT eval."""
    folder = tmp_path_factory.mktemp('migration')
    paths = {}
    graph, x, output, updates = _model()
    paths['float'] = _save(graph, os.path.join(str(folder), 'float.ckpt'),
                           _train_op(graph, output, updates),
                           gb.random_feeds(x, 2, seed=5))
    graph, x, output, updates = _model('train', quant_delay=1)
    paths['qat'] = _save(graph, os.path.join(str(folder), 'qat.ckpt'),
                         _train_op(graph, output, updates),
                         gb.random_feeds(x, 3, seed=6))
    # An eval-graph checkpoint holding the QAT ranges (e.g. written by an
    # export script): no moving-average state, no step counter.
    graph, _, _, _ = _model('eval')
    with graph.as_default():
        init = v1.global_variables_initializer()
        saver = v1.train.Saver()
    with v1.Session(graph=graph) as sess:
        sess.run(init)
        v1.train.Saver(var_list=graph.get_collection(
            v1.GraphKeys.GLOBAL_VARIABLES)).restore(sess, paths['qat'])
        paths['qat_eval'] = saver.save(
            sess, os.path.join(str(folder), 'qat_eval.ckpt'))
    return paths


def _fresh(report):
    return {r.prefix: r for r in report.fresh_ranges}


def test_float_checkpoint_starts_qat_and_maps_the_rest(saved):
    graph, x, output, updates = _model('train', quant_delay=100)
    report = checkpoints.check_checkpoint(graph, saved['float'])
    assert report.problems == [] and report.lost == [] and report.ok
    assert not report.quantized_checkpoint and report.fresh_step_counter
    assert report.training_graph
    fresh = _fresh(report)
    assert set(fresh) == {WEIGHTS, ACT}
    assert fresh[WEIGHTS].training and not fresh[WEIGHTS].lost
    assert fresh[WEIGHTS].initial == (-6.0, 6.0)
    assert fresh[ACT].training and not fresh[ACT].lost
    assert fresh[ACT].initial == (0.0, 6.0)
    assert fresh[ACT].step == pytest.approx(6.0 / 255)
    text = str(report)
    assert 'harmless in training' in text
    assert 'until it settles' in text and 'accuracy dips' in text
    assert 'Verdict: no trained quantization range is lost.' in text
    assert report.assignment_map == {n: n for n in FLOAT_VARIABLES}
    assert "tf.compat.v1.train.init_from_checkpoint(%r, {" % (
        saved['float']) in text

    # The printed mapping restores every float variable; the ranges start
    # from their initializers.
    _train_op(graph, output, updates)
    with graph.as_default():
        v1.train.init_from_checkpoint(saved['float'], report.assignment_map)
        init = v1.global_variables_initializer()
        variables = {v.op.name: v for v in v1.global_variables()}
    with v1.Session(graph=graph) as sess:
        sess.run(init)
        values = sess.run(variables)
    for name in FLOAT_VARIABLES:
        np.testing.assert_array_equal(
            values[name], tf.train.load_variable(saved['float'], name))
    assert (values[ACT + '/min'], values[ACT + '/max']) == (0.0, 6.0)
    assert values[STEP] == 0


def test_float_checkpoint_in_an_eval_graph_loses_every_range(saved, tmp_path,
                                                             capsys):
    graph, _, _, _ = _model('eval')
    report = checkpoints.check_checkpoint(graph, saved['float'])
    assert report.problems == [] and not report.ok
    assert report.lost == [ACT, WEIGHTS] and not report.training_graph
    fresh = _fresh(report)
    assert not fresh[WEIGHTS].training
    # 8-bit narrow range over [-6, 6]: 254 steps.
    assert fresh[WEIGHTS].step == pytest.approx(12.0 / 254)
    text = str(report)
    assert '    LOST %s: starts from [-6, 6] (step 0.0472)\n' % WEIGHTS in text
    assert ('  1 weight range(s) read by the eval graph: weights under half '
            'a step in magnitude become 0' in text)
    assert '    LOST %s: starts from [0, 6] (step 0.0235)\n' % ACT in text
    assert 'Verdict: 2 trained quantization value(s) would be LOST' in text

    meta = str(tmp_path / 'float.meta')
    graph, _, _, _ = _model()
    with graph.as_default():
        v1.train.export_meta_graph(meta)
    status = cli.main(['check', '--meta', meta, '--rewrite', 'eval',
                       '--checkpoint', saved['float']])
    captured = capsys.readouterr()
    assert status == 2
    assert 'Verdict: 2 trained' in captured.out
    assert captured.err.strip().endswith(
        '2 trained quantization value(s) would be lost: %s, %s' % (ACT,
                                                                  WEIGHTS))


def test_qat_training_checkpoint_restores_everything(saved, tmp_path,
                                                     capsys):
    for rewrite in ('train', 'eval'):
        graph, _, _, _ = _model(rewrite, quant_delay=1)
        report = checkpoints.check_checkpoint(graph, saved['qat'])
        assert report.ok and report.fresh_ranges == []
        assert not report.fresh_step_counter
        assert 'every range and counter the graph has restores' in str(report)
    meta = str(tmp_path / 'float.meta')
    graph, _, _, _ = _model()
    with graph.as_default():
        v1.train.export_meta_graph(meta)
    assert cli.main(['check', '--meta', meta, '--rewrite', 'train',
                     '--quant_delay', '1', '--checkpoint', saved['qat']]) == 0
    assert 'init_from_checkpoint' not in capsys.readouterr().out


def test_eval_checkpoint_loses_the_moving_averages_in_training(saved):
    graph, x, output, updates = _model('train', quant_delay=1)
    report = checkpoints.check_checkpoint(graph, saved['qat_eval'])
    assert report.problems == [] and report.quantized_checkpoint
    assert report.lost == [ACT, STEP]
    fresh = _fresh(report)
    assert set(fresh) == {ACT}  # The weight range restores.
    assert fresh[ACT].restored and fresh[ACT].lost
    text = str(report)
    assert ("1 activation range(s) restored without their moving-average "
            "state: the first training step replaces each with that batch's "
            "range (restore from a training checkpoint" in text)
    assert '    LOST %s: restored from the checkpoint\n' % ACT in text
    assert 'LOST %s: counts from 0' % STEP in text
    assert set(report.assignment_map) == FLOAT_VARIABLES | {
        WEIGHTS + '/min', WEIGHTS + '/max', ACT + '/min', ACT + '/max'}

    # What the report says happens: restored with the mapping, the trained
    # range is there before the first step and gone after it.
    train_op = _train_op(graph, output, updates)
    with graph.as_default():
        v1.train.init_from_checkpoint(saved['qat_eval'],
                                      report.assignment_map)
        init = v1.global_variables_initializer()
        act_max = {v.op.name: v for v in v1.global_variables()}[ACT + '/max']
    relu6 = graph.get_operation_by_name(SCOPE + '/Relu6').outputs[0]
    trained = tf.train.load_variable(saved['qat_eval'], ACT + '/max')
    feed = gb.random_feeds(x, 1, seed=9)[0]
    with v1.Session(graph=graph) as sess:
        sess.run(init)
        assert sess.run(act_max) == trained
        sess.run(train_op, feed)
        after = sess.run(act_max)
    with graph.as_default(), v1.Session(graph=graph) as sess:
        sess.run(init)
        batch_max = np.max(sess.run(relu6, feed))
    assert after == pytest.approx(batch_max, rel=1e-4)  # Debiasing rounds.
    assert abs(after - trained) > 1e-3


def test_numbered_quantizers_of_one_scope(tmp_path):
    # Three layers in one name scope: `weights_quant`, `weights_quant_1`,
    # ... A float checkpoint into the eval rewrite loses all six ranges.
    def build():
        graph = tf.Graph()
        with graph.as_default():
            x = v1.placeholder(tf.float32, [2, 6, 6, 3])
            weights = [v1.get_variable('w%d' % i, [1, 1, 3, 3])
                       for i in range(3)]
            with tf.name_scope('block'):
                for w in weights:
                    x = tf.nn.relu(tf.nn.conv2d(x, w, 1, 'SAME') + 1.0)
        return graph
    path = _save(build(), str(tmp_path / 'float.ckpt'))
    graph = build()
    tf1_quantize.create_eval_graph(graph)
    report = checkpoints.check_checkpoint(graph, path)
    fresh = _fresh(report)
    assert sorted(fresh) == sorted(report.lost) == sorted(
        'block/%s%s' % (kind, suffix) for kind in ('weights_quant',
                                                   'act_quant')
        for suffix in ('', '_1', '_2'))
    assert [p for p, r in sorted(fresh.items()) if r.weights] == [
        'block/weights_quant', 'block/weights_quant_1',
        'block/weights_quant_2']
    assert report.problems == []
    assert report.assignment_map == {'w0': 'w0', 'w1': 'w1', 'w2': 'w2'}
