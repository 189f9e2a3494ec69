"""Tests for `shared_constants`: one Const per value during a rewrite."""

import numpy as np
import pytest
import tensorflow as tf

import builders as gb
import graph_checks
import tf1_quantize
from tf1_quantize import names
from tf1_quantize import shared_constants

SCOPE = names.SHARED_CONSTANTS_SCOPE + '/'


def _value_key(op: tf.Operation):
    value = tf.make_ndarray(op.get_attr('value'))
    return op.get_attr('dtype'), value.shape, value.tobytes()


def _rewrite_consts(graph, before):
    """Consts the rewrite built, less the variable initializers and the
    per-quantizer delay thresholds (contrib's tests look for those)."""
    return [op for op in graph.get_operations()
            if op.type == 'Const' and op.name not in before
            and '/Initializer/' not in op.name
            and not op.name.startswith(names.STEP_COUNTER + '/')
            and not op.name.endswith(names.ACTIVATE_QUANT + '/y')]


@pytest.mark.parametrize('create', [
    lambda: tf1_quantize.create_training_graph(quant_delay=5),
    lambda: tf1_quantize.experimental_create_training_graph(
        quant_delay=5, freeze_bn_delay=7, symmetric=True,
        per_channel_weights=True),
    lambda: tf1_quantize.experimental_create_training_graph(
        one_conv_fold=True),
    lambda: tf1_quantize.create_eval_graph(),
], ids=['training', 'training_freeze_symmetric', 'one_conv', 'eval'])
def test_rewrite_builds_each_value_once(create):
    graph = gb.rich_graph()
    before = {op.name for op in graph.get_operations()}
    with graph.as_default():
        create()
    consts = _rewrite_consts(graph, before)
    keys = [_value_key(op) for op in consts]
    assert len(keys) == len(set(keys)), sorted(op.name for op in consts)
    assert all(op.name.startswith(SCOPE) for op in consts), [
        op.name for op in consts if not op.name.startswith(SCOPE)]


def test_quantizers_read_one_zero():
    """Each weight quantizer widens its range to 0 twice (Minimum and
    Maximum); all of them read one zero."""
    graph = gb.rich_graph()
    with graph.as_default():
        tf1_quantize.create_training_graph()
    widen = [op for op in graph.get_operations()
             if op.type in ('Minimum', 'Maximum')
             and '/weights_quant/' in op.name]
    assert len(widen) == 2 * len(gb.RICH_WEIGHT_PREFIXES)
    zeros = {op.inputs[1].op for op in widen}
    assert len(zeros) == 1
    zero = zeros.pop()
    assert zero.name.startswith(SCOPE)
    assert tf.make_ndarray(zero.get_attr('value')) == 0.0


def test_shared_constants_carry_no_control_inputs():
    """A rewrite called inside a control_dependencies block must not tie
    every quantizer to it through the constants they share."""
    graph = gb.rich_graph()
    with graph.as_default():
        barrier = tf.no_op(name='barrier')
        with tf.control_dependencies([barrier]):
            tf1_quantize.create_training_graph(quant_delay=5)
    shared = [op for op in graph.get_operations()
              if op.name.startswith(SCOPE)]
    assert shared
    assert not [op.name for op in shared if op.control_inputs]


def test_fold_gradient_constants_skip_the_update_ops_block():
    """A script builds its gradients under `control_dependencies(update_ops)`:
    the fold gradient's constants take none of those edges, and the train op
    still runs after every update op."""
    graph = gb.rich_graph()
    with graph.as_default():
        tf1_quantize.create_training_graph()
        loss = graph.get_tensor_by_name('output:0')
        updates = tf.compat.v1.get_collection(
            tf.compat.v1.GraphKeys.UPDATE_OPS)
        assert updates
        with tf.control_dependencies(updates):
            train = tf.compat.v1.train.GradientDescentOptimizer(
                0.1).minimize(loss)
    fold_grad = [op for op in graph.get_operations()
                 if op.name.startswith('gradients/')
                 and '/FusedBatchNormV3_grad/' in op.name]
    consts = {t.op for op in fold_grad for t in op.inputs
              if t.op.type == 'Const'}
    assert consts, [op.name for op in fold_grad]
    assert not [op.name for op in consts if op.control_inputs]
    assert set(updates) <= graph_checks.ancestors(train)


def test_shared_constants_keep_the_callers_device():
    graph = gb.rich_graph()
    with graph.as_default(), tf.device('/cpu:0'):
        tf1_quantize.create_training_graph()
    shared = [op for op in graph.get_operations()
              if op.name.startswith(SCOPE)]
    assert shared
    assert {op.device for op in shared} == {'/device:CPU:0'}


def test_constant_is_shared_per_value_and_graph():
    graph, other = tf.Graph(), tf.Graph()
    with graph.as_default():
        first = shared_constants.constant(1.0)
        again = shared_constants.constant(np.float32(1.0), name='other')
        other_dtype = shared_constants.constant(1.0, tf.int32)
        vector = shared_constants.constant([1.0, 1.0])
    with other.as_default():
        in_other = shared_constants.constant(1.0)
    assert first is again
    assert first.name == SCOPE + 'Const:0'
    assert len({id(t) for t in (first, other_dtype, vector)}) == 3
    assert other_dtype.dtype == tf.int32 and vector.shape == [2]
    assert in_other is not first and in_other.graph is other


def test_constant_is_shared_per_device_scope():
    """Ops built under another device scope (a tower's gradients) read a
    constant placed there; under a colocation each gets its own."""
    graph = tf.Graph()
    with graph.as_default():
        tower = {}
        for device in ('/cpu:0', '/gpu:1', '/cpu:0'):
            with tf.device(device):
                tower.setdefault(device, []).append(
                    shared_constants.constant(2.0))
        unplaced = shared_constants.constant(2.0)
        with tf.device('/gpu:1'):
            anchor = tf.compat.v1.placeholder(tf.float32, name='anchor')
        with tf.compat.v1.colocate_with(anchor):
            colocated = [shared_constants.constant(2.0) for _ in range(2)]
    cpu, gpu = tower['/cpu:0'], tower['/gpu:1']
    assert cpu[0] is cpu[1]
    assert len({id(t) for t in (cpu[0], gpu[0], unplaced)}) == 3
    assert cpu[0].device == '/device:CPU:0'
    assert gpu[0].device == '/device:GPU:1'
    assert unplaced.device == ''
    assert colocated[0] is not colocated[1]
    assert colocated[0].op.colocation_groups() == [b'loc:@anchor']


def test_gradients_of_the_rewrite_read_shared_constants():
    """The folds' and quantizers' gradients, built by the optimizer after
    the rewrite, build no Const of their own."""
    graph = gb.rich_graph()
    with graph.as_default():
        tf1_quantize.create_training_graph(quant_delay=5)
        loss = graph.get_tensor_by_name('output:0')
        tf.compat.v1.train.GradientDescentOptimizer(0.1).minimize(loss)
    ours = [op for op in graph.get_operations()
            if op.name.startswith('gradients/') and op.type != 'Const'
            and any(part in op.name for part in (
                '_Fold', 'mul_fold', 'post_conv_mul', 'correction_',
                'add_fold', 'delayed_quant'))]
    assert ours
    consts = {t.op for op in ours for t in op.inputs if t.op.type == 'Const'}
    assert consts
    assert not [op.name for op in consts if not op.name.startswith(SCOPE)]


def test_constant_inside_a_cond_is_built_there():
    """An op in a TF1 cond branch cannot read an outside Const without a
    Switch; the constant is built in the branch instead."""
    graph = tf.Graph()
    with graph.as_default():
        outside = shared_constants.constant(3.0)
        branch = []
        with gb.control_flow_v1():
            tf.compat.v1.cond(
                tf.compat.v1.placeholder(tf.bool, []),
                lambda: branch.append(shared_constants.constant(3.0))
                or branch[-1] + 1.0,
                lambda: tf.constant(0.0))
    assert branch[0] is not outside
    assert not branch[0].name.startswith(SCOPE)
    assert branch[0].op._get_control_flow_context() is not None  # pylint: disable=protected-access

