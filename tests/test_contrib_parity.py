"""The last two places where contrib 1.15.5 computed or created something
else: the kind of the new variables, and the eval rewrite of a fused batch
norm left in training mode."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

import tf1_quantize

v1 = tf.compat.v1

# --- 1. New variables follow the caller's use_resource ----------------------

_KIND = {'VarHandleOp': 'resource', 'VariableV2': 'ref'}


def _new_variable_kinds(use_resource, rewrite: str, quant_delay: int):
    """Builds a conv + BN + Relu6 model with resource variables and rewrites
    it inside `variable_scope('outer', use_resource=use_resource)`.

    Returns:
        {variable name: 'resource' or 'ref'} of the variables the rewrite
        created.
    """
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [2, 4, 4, 3])
        with v1.variable_scope('model', use_resource=True):
            w = v1.get_variable('weights', [1, 1, 3, 2])
        y = tf.nn.relu6(tf.nn.conv2d(x, w, 1, 'SAME') + 1.0)
        tf.identity(y)
        before = {v.op.name for v in v1.global_variables()}
        with v1.variable_scope('outer', use_resource=use_resource):
            if rewrite == 'training':
                tf1_quantize.experimental_create_training_graph(
                    quant_delay=quant_delay)
            else:
                tf1_quantize.experimental_create_eval_graph(
                    quant_delay=quant_delay)
        return {v.op.name: _KIND[v.op.type] for v in v1.global_variables()
                if v.op.name not in before}


@pytest.mark.parametrize('rewrite', ['training', 'eval'])
@pytest.mark.parametrize('use_resource, expected',
                         [(True, 'resource'), (False, 'ref'),
                          (None, 'resource')],
                         ids=['resource', 'ref', 'unset'])
def test_new_variables_follow_the_callers_use_resource(use_resource, expected,
                                                       rewrite):
    kinds = _new_variable_kinds(use_resource, rewrite, quant_delay=5)
    expected_names = {'weights_quant/min', 'weights_quant/max',
                      'act_quant/min', 'act_quant/max',
                      'fake_quantization_step'}
    if rewrite == 'training':
        expected_names |= {'act_quant/act_quant/%s/%s' % (bound, shadow)
                           for bound in ('min', 'max')
                           for shadow in ('biased', 'local_step')}
    # Names stay at the root, whatever scope the caller had open.
    assert set(kinds) == expected_names
    assert set(kinds.values()) == {expected}


_TF1_BEHAVIOUR_SCRIPT = textwrap.dedent('''
    import json, sys
    import tensorflow as tf
    tf.compat.v1.disable_v2_behavior()
    import test_contrib_parity as t
    result = {}
    for use_resource in (True, False, None):
        for rewrite in ('training', 'eval'):
            kinds = t._new_variable_kinds(use_resource, rewrite, 5)
            result['%s-%s' % (use_resource, rewrite)] = sorted(
                set(kinds.values()))
    print(json.dumps(result))
''')


def test_new_variables_under_tf1_behaviour_follow_use_resource():
    """`disable_v2_behavior()` makes ref variables the default; an explicit
    `use_resource=True` still gives resource variables (a subprocess: the
    switch is process-wide)."""
    import json  # pylint: disable=import-outside-toplevel
    import os  # pylint: disable=import-outside-toplevel
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ,
               PYTHONPATH=os.pathsep.join(
                   [tests_dir, os.path.dirname(tests_dir)] +
                   sys.path))
    result = subprocess.run([sys.executable, '-c', _TF1_BEHAVIOUR_SCRIPT],
                            capture_output=True, text=True, timeout=300,
                            env=env, cwd=tests_dir, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    kinds = json.loads(result.stdout.strip().splitlines()[-1])
    for rewrite in ('training', 'eval'):
        assert kinds['True-%s' % rewrite] == ['resource']
        assert kinds['False-%s' % rewrite] == ['ref']
        assert kinds['None-%s' % rewrite] == ['ref']


# --- 2. Eval rewrite of a training-mode fused batch norm --------------------

EPSILON = 1e-3
CHANNELS_IN = 3


def _layer(kind: str, x, weights):
    if kind == 'conv':
        return tf.nn.conv2d(x, weights, 1, 'SAME')
    if kind == 'depthwise':
        return tf.nn.depthwise_conv2d(x, weights, [1, 1, 1, 1], 'SAME')
    return tf.matmul(x, weights)


def _weight_shape(kind: str):
    return {'conv': [3, 3, CHANNELS_IN, 4], 'depthwise': [3, 3, CHANNELS_IN, 2],
            'fc': [CHANNELS_IN * 4, 5]}[kind]


def _training_bn_model(kind: str, version: str):
    """Layer, then a training-mode fused BN (op `version`) with
    moving-average updates, then Relu; in scope `L`."""
    rng = np.random.RandomState(11)
    graph = tf.Graph()
    with graph.as_default():
        shape = [4, CHANNELS_IN * 4] if kind == 'fc' else [2, 5, 5, CHANNELS_IN]
        x = v1.placeholder(tf.float32, shape, name='input')
        with v1.variable_scope('L'):
            w = v1.get_variable('weights', initializer=rng.uniform(
                -1, 1, _weight_shape(kind)).astype(np.float32))
            y = _layer(kind, x, w)
            channels = y.shape[-1]
            params = {name: v1.get_variable(name, initializer=rng.uniform(
                low, high, [channels]).astype(np.float32))
                      for name, low, high in (('gamma', 0.5, 1.5),
                                              ('beta', -1, 1),
                                              ('moving_mean', -1, 1),
                                              ('moving_variance', 0.5, 2))}
            bn_input = tf.reshape(y, [-1, 1, 1, channels]) if kind == 'fc' else y
            empty = tf.constant([], tf.float32)
            bn = getattr(tf.raw_ops, version)(
                x=bn_input, scale=params['gamma'], offset=params['beta'],
                mean=empty, variance=empty, epsilon=EPSILON, is_training=True)
            for name, stat in (('moving_mean', bn[1]),
                               ('moving_variance', bn[2])):
                var = params[name]
                v1.add_to_collection(
                    v1.GraphKeys.UPDATE_OPS,
                    v1.assign_sub(var, (var - stat) * 0.1))
            out = tf.reshape(bn[0], tf.shape(y)) if kind == 'fc' else bn[0]
            tf.nn.relu(out, name='Relu')
    return graph, x, w, params


def _contrib_reference(kind, x, w, params, weight_range):
    """contrib >= 1.15.3's eval fold of a training-mode fused BN, written
    with plain ops: conv(x, FQ(w * gamma / sigma_mv)) * sigma_mv / sigma_B
    + (beta - mu_B * gamma / sigma_B)."""
    y = _layer(kind, x, w)
    axes = list(range(y.shape.rank - 1))
    mean, variance = tf.nn.moments(y, axes)
    sigma_b = tf.sqrt(variance + EPSILON)
    sigma_mv = tf.sqrt(params['moving_variance'] + EPSILON)
    scale = params['gamma'] / sigma_mv
    if kind == 'depthwise':
        scale_w = tf.reshape(scale, w.shape[2:])
    else:
        scale_w = scale
    folded = tf.quantization.fake_quant_with_min_max_vars(
        w * scale_w, weight_range[0], weight_range[1], narrow_range=True)
    return (_layer(kind, x, folded) * (sigma_mv / sigma_b)
            + (params['beta'] - mean * params['gamma'] / sigma_b))


@pytest.mark.parametrize('api', ['create_eval_graph',
                                 'experimental_create_eval_graph'])
@pytest.mark.parametrize('version', ['FusedBatchNorm', 'FusedBatchNormV3'])
@pytest.mark.parametrize('kind', ['conv', 'depthwise', 'fc'])
def test_eval_rewrite_of_a_training_mode_fused_bn_matches_contrib(
        kind, version, api):
    graph, x, w, params = _training_bn_model(kind, version)
    getattr(tf1_quantize, api)(graph)
    report = tf1_quantize.last_report(graph)
    assert len(report.folded) == 1 and not report.float_ops
    with graph.as_default():
        folded = graph.get_tensor_by_name('L/add_fold:0')
        ranges = {v.op.name: v for v in v1.global_variables()}
        weight_range = [ranges['L/weights_quant/min'],
                        ranges['L/weights_quant/max']]
        reference = _contrib_reference(kind, x, w, params, weight_range)
        head = tf.constant(np.random.RandomState(5).randn(
            *folded.shape.as_list()).astype(np.float32))
        sources = [x, w, params['gamma'], params['beta']]
        grads = tf.gradients(tf.reduce_sum(folded * head), sources)
        ref_grads = tf.gradients(tf.reduce_sum(reference * head), sources)
        # The update ops keep reading the batch statistics (no freeze).
        updates = v1.get_collection(v1.GraphKeys.UPDATE_OPS)
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            # A trained range, narrower than the [-6, 6] initial one.
            for variable, value in zip(weight_range, (-0.9, 0.9)):
                variable.load(value, sess)
            feed = {x: np.random.RandomState(3).randn(
                *x.shape.as_list()).astype(np.float32)}
            got, want, got_grads, want_grads = sess.run(
                [folded, reference, grads, ref_grads], feed)
            moving_before = sess.run(params['moving_mean'])
            sess.run(updates, feed)
            moving_after = sess.run(params['moving_mean'])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    for g, r in zip(got_grads, want_grads):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4)
    assert not np.allclose(moving_before, moving_after)
