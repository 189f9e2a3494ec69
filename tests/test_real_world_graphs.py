"""Graph shapes real training scripts produce (issue: real-world graphs).

Layers sharing a name scope, an Identity before the batch norm, partitioned
weights, long Add chains and Add/Mul DAGs, layers inside control flow v2, a
second rewrite in the other mode, and a failure in the middle of a rewrite.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import pytest
import tensorflow as tf

import graph_generator as gen

import tf1_quantize
from tf1_quantize import checkpoints
from tf1_quantize import cli
from tf1_quantize import quant_ops

v1 = tf.compat.v1

REWRITES = {
    'training': tf1_quantize.create_training_graph,
    'eval': tf1_quantize.create_eval_graph,
}
both_modes = pytest.mark.parametrize('mode', list(REWRITES))


def _variable(name, shape, seed, partitioner=None, use_resource=None):
    return v1.get_variable(name, shape, tf.float32,
                           v1.random_uniform_initializer(0.5, 1.5, seed=seed),
                           partitioner=partitioner, use_resource=use_resource)


def _batch_norm(y, training: bool, fused: bool, seed: int):
    """A batch norm with moving-average updates, in the current scopes."""
    channels = y.shape[-1]
    gamma = _variable('gamma', [channels], seed)
    beta = _variable('beta', [channels], seed + 1)
    moving_mean = _variable('moving_mean', [channels], seed + 2)
    moving_var = _variable('moving_variance', [channels], seed + 3)
    if not training:
        if fused:
            return v1.nn.fused_batch_norm(y, gamma, beta, moving_mean,
                                          moving_var, is_training=False)[0]
        return tf.nn.batch_normalization(y, moving_mean, moving_var, beta,
                                         gamma, 1e-3)
    if fused:
        y, mean, variance = v1.nn.fused_batch_norm(y, gamma, beta,
                                                   is_training=True)[:3]
    else:
        mean, variance = tf.nn.moments(y, [0, 1, 2])
        y = tf.nn.batch_normalization(y, mean, variance, beta, gamma, 1e-3)
    for var, value in ((moving_mean, mean), (moving_var, variance)):
        v1.add_to_collection(v1.GraphKeys.UPDATE_OPS,
                             v1.assign_sub(var, (var - value) * 0.1))
    return y


def _conv_bn_relu(x, channels: int, training: bool, *, fused: bool = True,
                  identity: bool = False, partitioner=None, seed: int = 0,
                  use_resource: Optional[bool] = None):
    weights = _variable('weights', [3, 3, x.shape[-1], channels], seed,
                        partitioner, use_resource)
    y = tf.nn.conv2d(x, weights, 1, 'SAME')
    if identity:
        y = tf.identity(y)
    return tf.nn.relu(_batch_norm(y, training, fused, seed))


def _two_raw_layers(training: bool, graph: Optional[tf.Graph] = None):
    """Two conv layers built with raw ops and no scope: both in scope ''."""
    graph = graph or tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [2, 6, 6, 3], name='input')
        with v1.variable_scope('first'):
            w1 = _variable('weights', [3, 3, 3, 4], 0)
        with v1.variable_scope('second'):
            w2 = _variable('weights', [3, 3, 4, 4], 1)
        y = tf.nn.relu(tf.nn.conv2d(x, w1, 1, 'SAME') + 0.5)
        y = tf.nn.relu(tf.nn.conv2d(y, w2, 1, 'SAME') + 0.5)
        # Reads the quantized activation (the last FakeQuant's consumer).
        y = tf.reshape(y, [-1], name='output')
    return graph, x, y


def _quant_variables(graph):
    return sorted(v.op.name for v in graph.get_collection('variables')
                  if '_quant' in v.op.name)


def _feed(x, seed=3):
    shape = x.shape.as_list()
    return {x: np.random.RandomState(seed).randn(*shape).astype(np.float32)}


# --- 1. Several layers in one name scope ----------------------------------


def test_layers_in_one_scope_get_numbered_quantizers():
    graph, _, _ = _two_raw_layers(training=True)
    tf1_quantize.create_training_graph(graph)
    fake_quants = [q.name for q in tf1_quantize.last_report(graph).fake_quants]
    assert fake_quants == [
        'weights_quant/FakeQuantWithMinMaxVars',
        'act_quant/FakeQuantWithMinMaxVars',
        'weights_quant_1/FakeQuantWithMinMaxVars',
        'act_quant_1/FakeQuantWithMinMaxVars',
    ]


def test_training_checkpoint_of_same_scope_layers_restores_into_eval(
        tmp_path):
    train_graph, x, y = _two_raw_layers(training=True)
    tf1_quantize.create_training_graph(train_graph)
    with train_graph.as_default(), v1.Session() as sess:
        sess.run(v1.global_variables_initializer())
        sess.run(y, _feed(x))  # Moves the activation ranges.
        trained = {v.op.name: sess.run(v) for v in v1.global_variables()}
        path = v1.train.Saver().save(sess, str(tmp_path / 'model'))
    eval_graph, x, y = _two_raw_layers(training=False)
    tf1_quantize.create_eval_graph(eval_graph)
    assert set(_quant_variables(eval_graph)) <= set(trained)
    with eval_graph.as_default(), v1.Session() as sess:
        v1.train.Saver().restore(sess, path)
        for var in v1.global_variables():
            np.testing.assert_array_equal(sess.run(var), trained[var.op.name])
    assert trained['act_quant_1/max'] != 6.0


def test_three_layers_in_one_named_scope():
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [2, 6, 6, 3])
        weights = [_variable('w%d' % i, [1, 1, 3, 3], i) for i in range(3)]
        with tf.name_scope('block'):
            for w in weights:
                x = tf.nn.relu(tf.nn.conv2d(x, w, 1, 'SAME') + 1.0)
    tf1_quantize.create_eval_graph(graph)
    assert _quant_variables(graph) == sorted(
        'block/%s/%s' % (kind, bound)
        for kind in ('weights_quant', 'weights_quant_1', 'weights_quant_2',
                     'act_quant', 'act_quant_1', 'act_quant_2')
        for bound in ('min', 'max'))


# --- 2. An Identity between the layer and its batch norm -------------------


@both_modes
@pytest.mark.parametrize('fused', [True, False], ids=['fused', 'unfused'])
def test_identity_before_batch_norm_second_rewrite_is_a_no_op(mode, fused):
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [2, 6, 6, 3])
        with v1.variable_scope('L1'):
            y = _conv_bn_relu(x, 4, mode == 'training', fused=fused,
                              identity=True)
        with v1.variable_scope('L2'):
            _conv_bn_relu(y, 4, mode == 'training', fused=fused,
                          identity=True, seed=5)
    REWRITES[mode](graph)
    report = tf1_quantize.last_report(graph)
    assert len(report.folded) == 2 and not report.float_ops
    before = gen.graph_state(graph)
    REWRITES[mode](graph)
    assert gen.graph_state(graph) == before
    assert not tf1_quantize.last_report(graph).fake_quants


# --- 3. Partitioned weights -------------------------------------------------


def _partitioned_model(training: bool, resource: bool, parts: int,
                       partitioned: bool = True):
    graph = tf.Graph()
    partitioner = (v1.fixed_size_partitioner(parts, axis=3)
                   if partitioned else None)
    with graph.as_default():
        x = v1.placeholder(tf.float32, [2, 6, 6, 3], name='input')
        with v1.variable_scope('conv', use_resource=resource):
            y = _conv_bn_relu(x, 6, training, partitioner=partitioner)
    return graph, x, y


@pytest.mark.parametrize('resource', [True, False], ids=['resource', 'ref'])
@pytest.mark.parametrize('parts', [2, 3])
@both_modes
def test_partitioned_weights_are_folded_and_quantized(mode, resource, parts):
    graph, _, _ = _partitioned_model(mode == 'training', resource, parts)
    REWRITES[mode](graph)
    report = tf1_quantize.last_report(graph)
    assert report.folded == ['conv/Conv2D'] and not report.float_ops
    weights_quant = graph.get_operation_by_name(
        'conv/weights_quant/FakeQuantWithMinMaxVars')
    folded = weights_quant.inputs[0].op
    assert folded.name == 'conv/mul_fold'
    # The fold scales the concatenation; the parts stay the variables.
    concat = [op for op in graph.get_operations() if op.type == 'ConcatV2']
    assert len(concat) == 1 and len(concat[0].inputs) == parts + 1
    variables = {v.op.name for v in graph.get_collection('variables')}
    assert {'conv/weights/part_%d' % i for i in range(parts)} <= variables


@pytest.mark.parametrize('resource', [True, False], ids=['resource', 'ref'])
def test_partitioned_fold_computes_the_batch_norm(resource):
    """Folding the concatenated weights is exact: the same numbers as the
    same model with one weight variable, folded and unfolded."""
    weights = np.random.RandomState(7).randn(3, 3, 3, 6).astype(np.float32)
    outputs = []
    for partitioned, rewrite in ((True, True), (False, True), (False, False)):
        graph, x, y = _partitioned_model(False, resource, 3, partitioned)
        if rewrite:
            tf1_quantize.fold_batch_norms(graph, is_training=False)
        with graph.as_default(), v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            parts = [v for v in v1.global_variables()
                     if v.op.name.startswith('conv/weights')]
            for part, value in zip(parts, np.split(weights, len(parts), 3)):
                part.load(value, sess)
            outputs.append(sess.run(y, _feed(x)))
    np.testing.assert_allclose(outputs[0], outputs[2], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(outputs[0], outputs[1], rtol=1e-6, atol=1e-6)


# --- 4, 5. Long Add chains and Add/Mul DAGs ---------------------------------


def _quantized_relu(x):
    weights = _variable('w', [1, 1, x.shape[-1], 2], 0)
    return tf.nn.relu(tf.nn.conv2d(x, weights, 1, 'SAME') + 1.0)


def test_a_weight_decay_chain_of_1500_adds_rewrites():
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [1, 4, 4, 2])
        y = _quantized_relu(x)
        loss = tf.reduce_sum(y)
        for i in range(1500):
            loss = loss + 1e-4 * tf.reduce_sum(
                tf.square(v1.get_variable('decay%d' % i, [2])))
    tf1_quantize.create_training_graph(graph)
    report = tf1_quantize.last_report(graph)
    # The chain does not read a quantized tensor: nothing in it is quantized.
    assert len(report.fake_quants) == 2


def test_a_deep_add_mul_dag_from_an_unquantized_tensor_is_left_alone():
    """40 levels of `s = s + s * 0.5`: 2^40 paths; a walk that visits each
    path once would not finish (the test would time out)."""
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [1, 4, 4, 2])
        _quantized_relu(x)
        s = x
        for _ in range(40):
            s = s + s * 0.5
    tf1_quantize.create_training_graph(graph)
    assert len(tf1_quantize.last_report(graph).fake_quants) == 2


def test_a_deep_add_mul_dag_from_a_quantized_tensor_is_quantized_throughout():
    levels = 24
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [1, 4, 4, 2])
        s = _quantized_relu(x)
        for _ in range(levels):
            s = s + s * 0.5
    tf1_quantize.create_eval_graph(graph)
    report = tf1_quantize.last_report(graph)
    kinds = [q.name.split('/')[-2] for q in report.fake_quants]
    assert kinds.count('activation_Mul_quant') == levels
    # The first Add follows the activation: a post-activation bypass.
    assert kinds.count('post_activation_bypass_quant') == 1
    assert kinds.count('activation_AddV2_quant') == levels - 1
    before = gen.graph_state(graph)
    tf1_quantize.create_eval_graph(graph)
    assert gen.graph_state(graph) == before


# --- 6. Layers inside control flow v2 ----------------------------------------


def _control_flow_v2_model(kind: str):
    graph = tf.Graph()
    with graph.as_default():
        assert v1.control_flow_v2_enabled()
        x = v1.placeholder(tf.float32, [2, 6, 6, 3])
        flag = v1.placeholder(tf.bool, [])
        weights = _variable('w', [3, 3, 3, 3], 0)

        def layer(t):
            return tf.nn.relu(tf.nn.conv2d(t, weights, 1, 'SAME') + 1.0)

        if kind == 'cond':
            y = tf.cond(flag, lambda: layer(x), lambda: x)
        elif kind == 'while':
            y = tf.while_loop(lambda i, t: i < 2,
                              lambda i, t: (i + 1, layer(t)), (0, x))[1]
        else:  # A cond inside a while loop.
            y = tf.while_loop(
                lambda i, t: i < 2,
                lambda i, t: (i + 1, tf.cond(flag, lambda: layer(t),
                                             lambda: t)), (0, x))[1]
        layer(y)  # One layer outside, which is quantized.
    return graph


@pytest.mark.parametrize('kind', ['cond', 'while', 'nested'])
def test_layers_in_control_flow_v2_are_reported_float_with_the_fix(kind):
    graph = _control_flow_v2_model(kind)
    tf1_quantize.create_training_graph(graph)
    report = tf1_quantize.last_report(graph)
    assert len(report.layers) == 1
    inside = [f for f in report.float_ops if f.type == 'Conv2D']
    assert len(inside) == 1, report
    assert 'disable_control_flow_v2' in inside[0].reason
    assert inside[0].name.endswith('/Conv2D')
    assert 'stays float: ' + inside[0].name in str(report)


# --- 7. A second rewrite in the other mode ----------------------------------


@pytest.mark.parametrize('first, second', [('training', 'eval'),
                                           ('eval', 'training')])
@pytest.mark.parametrize('imported', [False, True],
                         ids=['same_graph', 'from_graph_def'])
def test_a_rewrite_in_the_other_mode_is_refused(first, second, imported):
    graph, _, _ = _two_raw_layers(training=first == 'training')
    REWRITES[first](graph)
    if imported:  # No collections: the mode is read from the ops.
        graph_def = graph.as_graph_def()
        graph = tf.Graph()
        with graph.as_default():
            tf.graph_util.import_graph_def(graph_def, name='')
    before = gen.graph_state(graph)
    with pytest.raises(tf1_quantize.QuantizeError,
                       match='already rewritten for %s' % first):
        REWRITES[second](graph)
    assert gen.graph_state(graph) == before


def test_fold_for_training_then_quantize_for_eval_is_refused():
    graph, _, _ = _partitioned_model(True, True, 2)
    tf1_quantize.fold_batch_norms(graph, is_training=True)
    before = gen.graph_state(graph)
    with pytest.raises(tf1_quantize.QuantizeError, match='for training'):
        tf1_quantize.create_eval_graph(graph)
    assert gen.graph_state(graph) == before
    tf1_quantize.create_training_graph(graph)  # The same mode is fine.


# --- 8. Failures ------------------------------------------------------------


def test_a_refused_rewrite_leaves_the_graph_def_unchanged():
    graph, _, _ = _two_raw_layers(training=True)
    with graph.as_default():
        v1.train.GradientDescentOptimizer(0.1).minimize(
            tf.add_n([tf.reduce_sum(v) for v in v1.trainable_variables()]))
    before = graph.as_graph_def().SerializeToString(deterministic=True)
    with pytest.raises(tf1_quantize.QuantizeError, match='Training op'):
        tf1_quantize.create_training_graph(graph)
    assert graph.as_graph_def().SerializeToString(
        deterministic=True) == before


def _canonical(node_def) -> str:
    """A NodeDef as text, with input `x:0` written `x`: TensorFlow spells a
    rerouted input `x:0` even once it is routed back."""
    node_def = type(node_def).FromString(node_def.SerializeToString())
    for i, name in enumerate(node_def.input):
        if name.endswith(':0'):
            node_def.input[i] = name[:-2]
    return str(node_def)


@both_modes
def test_a_failure_during_mutation_restores_what_the_graph_computes(
        mode, monkeypatch):
    """An error the checks did not foresee (here: the third FakeQuant fails
    to build) undoes every reroute and collection change."""
    graph, x, y = _partitioned_model(mode == 'training', True, 2)
    with graph.as_default():
        y = _quantized_relu(y)
    with graph.as_default(), v1.Session() as sess:
        sess.run(v1.global_variables_initializer())
        expected = sess.run(y, _feed(x))
    original = {op.name: _canonical(op.node_def)
                for op in graph.get_operations()}
    collections = gen.graph_state(graph)[1]
    real_fake_quant = quant_ops._fake_quant  # pylint: disable=protected-access
    calls = []

    def failing_fake_quant(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError('unforeseen failure')
        return real_fake_quant(*args, **kwargs)

    monkeypatch.setattr(quant_ops, '_fake_quant', failing_fake_quant)
    with pytest.raises(tf1_quantize.RewriteAbortedError,
                       match='unforeseen failure'):
        REWRITES[mode](graph)
    assert len(calls) == 3
    for name, node_def in original.items():
        op = graph.get_operation_by_name(name)
        assert _canonical(op.node_def) == node_def
    assert gen.graph_state(graph)[1] == collections
    assert tf1_quantize.last_report(graph) is None
    with graph.as_default(), v1.Session() as sess:
        sess.run(v1.global_variables_initializer())
        np.testing.assert_array_equal(sess.run(y, _feed(x)), expected)


@pytest.mark.parametrize('resource', [True, False], ids=['resource', 'ref'])
def test_check_finds_partitioned_weights_in_the_checkpoint(resource,
                                                          tmp_path):
    graph, _, _ = _partitioned_model(True, resource, 3)
    tf1_quantize.create_training_graph(graph)
    with graph.as_default(), v1.Session() as sess:
        sess.run(v1.global_variables_initializer())
        path = v1.train.Saver().save(sess, str(tmp_path / 'model'))
    eval_graph, _, _ = _partitioned_model(False, resource, 3)
    tf1_quantize.create_eval_graph(eval_graph)
    report = checkpoints.check_checkpoint(eval_graph, path)
    assert report.ok, str(report)
    assert not [p for p in report.problems if 'weights' in p.name]


@pytest.mark.parametrize('rewrite', ['none', 'train'])
def test_check_names_layers_in_control_flow_v2(rewrite, tmp_path, capsys):
    graph = _control_flow_v2_model('cond')
    with graph.as_default(), v1.Session() as sess:
        sess.run(v1.global_variables_initializer())
        path = v1.train.Saver().save(sess, str(tmp_path / 'model'))
        v1.train.export_meta_graph(str(tmp_path / 'model.meta'))
    status = cli.main(['check', '--meta', str(tmp_path / 'model.meta'),
                       '--checkpoint', path, '--rewrite', rewrite])
    out = capsys.readouterr().out
    line = [l for l in out.splitlines() if 'stays float' in l]
    assert len(line) == 1 and 'disable_control_flow_v2' in line[0], out
    assert status == 0
