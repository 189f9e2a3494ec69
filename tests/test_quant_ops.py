"""Tests for the FakeQuant builders, the step counter and v1 conditionals."""

import functools

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.ops import control_flow_util

from tf1_quantize import conditionals
from tf1_quantize import quant_ops
from tf1_quantize import step_counter

GLOBAL = tf.compat.v1.GraphKeys.GLOBAL_VARIABLES
UPDATE_OP_MARKERS = ('AssignMinLast', 'AssignMaxLast', 'AssignMinEma',
                     'AssignMaxEma', 'BatchMin', 'BatchMax')
# The two range rules of `quant_ops.fake_quantize` (contrib's defaults).
last_value_quantize = quant_ops.fake_quantize
moving_avg_quantize = functools.partial(quant_ops.fake_quantize,
                                        ema_decay=0.999)
QUANTIZERS = {
    'last_value': last_value_quantize,
    'moving_avg': moving_avg_quantize,
}


@pytest.fixture(params=[True, False], ids=['resource', 'ref'])
def graph(request):
    """A fresh default graph whose variables are resource or ref variables."""
    g = tf.Graph()
    with g.as_default():
        tf.compat.v1.get_variable_scope().set_use_resource(request.param)
        yield g


@pytest.fixture
def plain_graph():
    """A fresh default graph with TensorFlow's default variable kind."""
    g = tf.Graph()
    with g.as_default():
        yield g


def _variable(graph, name):
    """Returns the global variable whose name is `name` (without `:0`)."""
    matches = [v for v in graph.get_collection(GLOBAL) if v.op.name == name]
    assert len(matches) == 1, name
    return matches[0]


def _global_names(graph):
    return sorted(v.op.name for v in graph.get_collection(GLOBAL))


def _op_types(graph):
    return {op.type for op in graph.get_operations()}


def _run_batches(graph, output, placeholder, batches, prefix='P'):
    """Runs `output` once per batch; returns the final (min, max) values."""
    min_var = _variable(graph, prefix + '/min')
    max_var = _variable(graph, prefix + '/max')
    with tf.compat.v1.Session(graph=graph) as sess:
        sess.run(tf.compat.v1.global_variables_initializer())
        for batch in batches:
            sess.run(output, {placeholder: batch})
        return sess.run([min_var, max_var])


def _fake_quant_reference(x, range_min, range_max, num_bits, narrow_range):
    """numpy version of FakeQuantWithMinMaxVars (spec section 4.3)."""
    x = np.asarray(x, np.float32)
    range_min = np.float32(range_min)
    range_max = np.float32(range_max)
    quant_min = np.float32(1 if narrow_range else 0)
    quant_max = np.float32(2**num_bits - 1)
    scale = (range_max - range_min) / (quant_max - quant_min)
    zero_point = np.clip(np.floor(quant_min - range_min / scale + 0.5),
                         quant_min, quant_max)
    nudged_min = (quant_min - zero_point) * scale
    nudged_max = (quant_max - zero_point) * scale
    clamped = np.clip(x, nudged_min, nudged_max)
    return np.floor((clamped - nudged_min) / scale + 0.5) * scale + nudged_min


# --- Range learning -------------------------------------------------------

@pytest.mark.parametrize('symmetric, narrow_range, batch, expected', [
    (False, False, [-1.0, 0.25, 1.0], (-1.0, 1.0)),
    (False, False, [0.5, 2.0], (0.0, 2.0)),
    (True, False, [-0.9921875, 0.9921875], (-1.0, 0.9921875)),
    (True, True, [-1.0, 0.5], (-1.0, 1.0)),
], ids=['asymmetric', 'asymmetric_contains_zero', 'symmetric_wide',
        'symmetric_narrow'])
def test_last_value_assigns_exact_batch_range(graph, symmetric, narrow_range,
                                              batch, expected):
    x = tf.compat.v1.placeholder(tf.float32, [len(batch)])
    q = last_value_quantize(
        x, name_prefix='P', is_training=True, symmetric=symmetric,
        narrow_range=narrow_range)
    np.testing.assert_array_equal(_run_batches(graph, q, x, [batch]),
                                  expected)


@pytest.mark.parametrize('static_shape', [[2], None],
                         ids=['static', 'unknown'])
def test_moving_avg_two_steps_is_zero_debiased_average(graph, static_shape):
    x = tf.compat.v1.placeholder(tf.float32, static_shape)
    q = moving_avg_quantize(x, name_prefix='P', is_training=True,
                            init_min=0.0, init_max=0.0)
    range_min, range_max = _run_batches(graph, q, x, [[-1.0, 1.0], [0.0, 0.0]])
    np.testing.assert_allclose([range_min, range_max], [-0.5, 0.5], atol=1e-3)


def test_moving_avg_first_step_equals_batch_range(graph):
    x = tf.compat.v1.placeholder(tf.float32, [3])
    q = moving_avg_quantize(x, name_prefix='P', is_training=True)
    np.testing.assert_allclose(_run_batches(graph, q, x, [[-2.0, 0.5, 3.0]]),
                               [-2.0, 3.0], rtol=1e-4)


@pytest.mark.parametrize('narrow_range, max_over_min', [
    (False, -127.0 / 128.0), (True, -1.0)], ids=['wide', 'narrow'])
def test_moving_avg_symmetric_keeps_ratio(graph, narrow_range, max_over_min):
    x = tf.compat.v1.placeholder(tf.float32, [2])
    q = moving_avg_quantize(
        x, name_prefix='P', is_training=True, symmetric=True,
        narrow_range=narrow_range, init_min=0.0, init_max=0.0)
    range_min, range_max = _run_batches(graph, q, x, [[-1.0, 0.5], [0.0, 0.0]])
    assert range_min == pytest.approx(-0.5, abs=1e-3)
    assert range_max == pytest.approx(range_min * max_over_min, rel=1e-5)


@pytest.mark.parametrize('kind', sorted(QUANTIZERS))
@pytest.mark.parametrize('num_bits, narrow_range', [(8, False), (4, True)])
def test_training_output_matches_fake_quant_math(plain_graph, kind, num_bits,
                                                 narrow_range):
    batch = np.random.RandomState(0).uniform(-3.0, 5.0, [4, 8])
    x = tf.compat.v1.placeholder(tf.float32, batch.shape)
    q = QUANTIZERS[kind](x, name_prefix='P', is_training=True,
                         num_bits=num_bits, narrow_range=narrow_range)
    with tf.compat.v1.Session() as sess:
        sess.run(tf.compat.v1.global_variables_initializer())
        output = sess.run(q, {x: batch})
        range_min, range_max = sess.run(
            [_variable(plain_graph, 'P/min'), _variable(plain_graph, 'P/max')])
    np.testing.assert_allclose(range_min, batch.min(), rtol=1e-4)
    expected = _fake_quant_reference(batch, range_min, range_max, num_bits,
                                     narrow_range)
    np.testing.assert_allclose(output, expected, atol=1e-6)
    assert not np.allclose(output, batch)


@pytest.mark.parametrize('kind', sorted(QUANTIZERS))
def test_eval_quantizes_with_stored_range(plain_graph, kind):
    batch = np.linspace(-7.0, 7.0, 29, dtype=np.float32)
    x = tf.constant(batch)
    q = QUANTIZERS[kind](x, name_prefix='P', is_training=False,
                         init_min=-2.0, init_max=3.0)
    with tf.compat.v1.Session() as sess:
        sess.run(tf.compat.v1.global_variables_initializer())
        output = sess.run(q)
    np.testing.assert_allclose(
        output, _fake_quant_reference(batch, -2.0, 3.0, 8, False), atol=1e-6)


# --- Names, collections, structure ----------------------------------------

@pytest.mark.parametrize('kind, is_training, expected', [
    ('last_value', True, ['S/P/max', 'S/P/min']),
    ('last_value', False, ['S/P/max', 'S/P/min']),
    ('moving_avg', True, ['S/P/S/P/max/biased', 'S/P/S/P/max/local_step',
                          'S/P/S/P/min/biased', 'S/P/S/P/min/local_step',
                          'S/P/max', 'S/P/min']),
    ('moving_avg', False, ['S/P/max', 'S/P/min']),
])
def test_checkpoint_names_and_collections(graph, kind, is_training, expected):
    x = tf.compat.v1.placeholder(tf.float32, [2, 3])
    QUANTIZERS[kind](x, name_prefix='S/P', is_training=is_training,
                     vars_collection='my_vars')
    assert _global_names(graph) == expected
    assert sorted(v.op.name for v in graph.get_collection('my_vars')) == [
        'S/P/max', 'S/P/min']
    assert not graph.get_collection(
        tf.compat.v1.GraphKeys.TRAINABLE_VARIABLES)
    assert not graph.get_collection(
        tf.compat.v1.GraphKeys.MOVING_AVERAGE_VARIABLES)
    for var in graph.get_collection(GLOBAL):
        assert var.dtype.base_dtype == tf.float32
        assert var.shape == []


@pytest.mark.parametrize('kind', sorted(QUANTIZERS))
def test_default_collection_is_global_only(plain_graph, kind):
    x = tf.compat.v1.placeholder(tf.float32, [2])
    QUANTIZERS[kind](x, name_prefix='P', is_training=True)
    assert {'P/min', 'P/max'} <= set(_global_names(plain_graph))
    assert not plain_graph.get_collection(
        tf.compat.v1.GraphKeys.MOVING_AVERAGE_VARIABLES)


def _quantize_batches(kind, activation, batches, **kwargs):
    """Trains a quantizer of `activation(x)` on `batches`; returns the range
    variables, the FakeQuant output and its input gradient after each."""
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, batches[0].shape)
        q = QUANTIZERS[kind](activation(x), name_prefix='P', is_training=True,
                             **kwargs)
        gradient, = tf.compat.v1.gradients(q * q, x)
        min_var, max_var = _variable(graph, 'P/min'), _variable(graph, 'P/max')
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            values = []
            for batch in batches:
                values += sess.run([q, gradient], {x: batch})
                values += sess.run([min_var, max_var])
    return values, [op.type for op in graph.get_operations()]


@pytest.mark.parametrize('kind', sorted(QUANTIZERS))
@pytest.mark.parametrize('activation', [tf.nn.relu, tf.nn.relu6])
@pytest.mark.parametrize('symmetric, narrow_range, per_channel', [
    (False, False, False), (True, False, False), (True, True, False),
    (False, False, True), (True, True, True)])
def test_relu_range_skips_the_minimum_with_the_same_numbers(
        kind, activation, symmetric, narrow_range, per_channel):
    """A Relu/Relu6 output is never negative, so its batch minimum is not
    reduced; the ranges and outputs equal those of the general formulas
    (the same values behind an Identity)."""
    rng = np.random.RandomState(3)
    batches = [rng.uniform(-2, 8, [4, 3, 5]).astype(np.float32)
               for _ in range(3)]
    batches.append(np.full([4, 3, 5], -1.0, np.float32))  # All zero.
    kwargs = dict(symmetric=symmetric, narrow_range=narrow_range,
                  per_channel=per_channel)
    relu, relu_types = _quantize_batches(kind, activation, batches, **kwargs)
    general, general_types = _quantize_batches(
        kind, lambda x: tf.identity(activation(x)), batches, **kwargs)
    assert 'Min' not in relu_types and 'Min' in general_types
    for got, want in zip(relu, general):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize('kind', sorted(QUANTIZERS))
def test_eval_builds_no_update_ops(graph, kind):
    x = tf.compat.v1.placeholder(tf.float32, [2, 3])
    q = QUANTIZERS[kind](x, name_prefix='P', is_training=False)
    assert q.op.name == 'P/FakeQuantWithMinMaxVars'
    assert q.op.type == 'FakeQuantWithMinMaxVars'
    names = [op.name for op in graph.get_operations()]
    assert not [n for n in names if any(m in n for m in UPDATE_OP_MARKERS)]


@pytest.mark.parametrize('kind, update', [
    ('last_value', 'Last'), ('moving_avg', 'Ema')])
def test_training_fake_quant_reads_update_ops(graph, kind, update):
    x = tf.compat.v1.placeholder(tf.float32, [2, 3])
    q = QUANTIZERS[kind](x, name_prefix='P', is_training=True)
    assert q.op.name == 'P/FakeQuantWithMinMaxVars'
    assert graph.get_operation_by_name('P/BatchMin').type == 'Min'
    assert graph.get_operation_by_name('P/BatchMax').type == 'Max'
    # Ref variables: the assign op is the input. Resource variables: a read
    # that runs after the assign op.
    for bound, value in zip(('Min', 'Max'), q.op.inputs[1:]):
        assign = f'P/Assign{bound}{update}'
        assert (value.op.name == assign
                or assign in [c.name for c in value.op.control_inputs])


def test_symmetric_op_names(plain_graph):
    x = tf.compat.v1.placeholder(tf.float32, [2])
    last_value_quantize(x, name_prefix='P', is_training=True,
                        symmetric=True)
    for name, op_type in [('P/truediv', 'RealDiv'), ('P/Minimum', 'Minimum'),
                          ('P/mul', 'Mul'), ('P/Maximum', 'Maximum')]:
        assert plain_graph.get_operation_by_name(name).type == op_type


def test_second_quantizer_gets_unique_scope(plain_graph):
    x = tf.compat.v1.placeholder(tf.float32, [2])
    first = last_value_quantize(x, name_prefix='P',
                                is_training=False)
    second = last_value_quantize(x, name_prefix='P',
                                 is_training=False)
    assert first.op.name == 'P/FakeQuantWithMinMaxVars'
    assert second.op.name == 'P_1/FakeQuantWithMinMaxVars'
    assert _global_names(plain_graph) == ['P/max', 'P/min', 'P_1/max',
                                          'P_1/min']


@pytest.mark.parametrize('kind', sorted(QUANTIZERS))
def test_partitioned_scope_is_not_inherited(plain_graph, kind):
    partitioner = tf.compat.v1.fixed_size_partitioner(2)
    with tf.compat.v1.variable_scope('part', partitioner=partitioner):
        x = tf.compat.v1.placeholder(tf.float32, [4, 6])
        q = QUANTIZERS[kind](x, name_prefix='P', is_training=True,
                             per_channel=True)
    assert q.op.name == 'part/P/FakeQuantWithMinMaxVarsPerChannel'
    assert _variable(plain_graph, 'part/P/min').shape == [6]


# --- Per-channel ----------------------------------------------------------

@pytest.mark.parametrize('shape', [[5], [3, 5], [2, 3, 5], [2, 2, 3, 5]])
def test_per_channel_last_value_ranges(graph, shape):
    batch = np.random.RandomState(1).uniform(-2.0, 2.0, shape)
    x = tf.compat.v1.placeholder(tf.float32, shape)
    q = last_value_quantize(x, name_prefix='P', is_training=True,
                            per_channel=True)
    assert q.op.type == 'FakeQuantWithMinMaxVarsPerChannel'
    assert q.op.name == 'P/FakeQuantWithMinMaxVarsPerChannel'
    assert _variable(graph, 'P/min').shape == [5]
    flat = batch.reshape(-1, 5)
    range_min, range_max = _run_batches(graph, q, x, [batch])
    np.testing.assert_allclose(range_min, np.minimum(flat.min(axis=0), 0.0),
                               rtol=1e-6)
    np.testing.assert_allclose(range_max, np.maximum(flat.max(axis=0), 0.0),
                               rtol=1e-6)


def test_per_channel_output_matches_fake_quant_math(plain_graph):
    batch = np.random.RandomState(2).uniform(-1.0, 3.0, [6, 3])
    batch[:, 1] *= 10.0
    x = tf.constant(batch, tf.float32)
    q = moving_avg_quantize(x, name_prefix='P', is_training=True,
                            per_channel=True)
    with tf.compat.v1.Session() as sess:
        sess.run(tf.compat.v1.global_variables_initializer())
        output = sess.run(q)
        range_min, range_max = sess.run(
            [_variable(plain_graph, 'P/min'), _variable(plain_graph, 'P/max')])
    for channel in range(3):
        expected = _fake_quant_reference(batch[:, channel], range_min[channel],
                                         range_max[channel], 8, False)
        np.testing.assert_allclose(output[:, channel], expected, atol=1e-5)


# --- Argument validation --------------------------------------------------

@pytest.mark.parametrize('kind', sorted(QUANTIZERS))
@pytest.mark.parametrize('num_bits', [1, 17, 8.0])
def test_invalid_num_bits(plain_graph, kind, num_bits):
    x = tf.compat.v1.placeholder(tf.float32, [2])
    with pytest.raises(ValueError, match=repr(num_bits)):
        QUANTIZERS[kind](x, name_prefix='P', is_training=True,
                         num_bits=num_bits)


@pytest.mark.parametrize('shape, message', [
    ([], 'rank 0'), ([1, 1, 1, 1, 2], 'rank 5'), (None, 'rank None'),
    ([2, None], 'channel count')])
def test_per_channel_rejects_shape(plain_graph, shape, message):
    x = tf.compat.v1.placeholder(tf.float32, shape)
    with pytest.raises(ValueError, match=message):
        last_value_quantize(x, name_prefix='P', is_training=True,
                            per_channel=True)


def test_rejects_non_float32_inputs(plain_graph):
    x = tf.compat.v1.placeholder(tf.int32, [2])
    with pytest.raises(TypeError, match='float32'):
        moving_avg_quantize(x, name_prefix='P', is_training=True)


def test_rejects_inverted_initial_range(plain_graph):
    x = tf.compat.v1.placeholder(tf.float32, [2])
    with pytest.raises(ValueError, match='init_min'):
        last_value_quantize(x, name_prefix='P', is_training=True,
                            init_min=1.0, init_max=-1.0)


@pytest.mark.parametrize('ema_decay', [1.0, -0.1])
def test_rejects_invalid_ema_decay(plain_graph, ema_decay):
    x = tf.compat.v1.placeholder(tf.float32, [2])
    with pytest.raises(ValueError, match='ema_decay'):
        moving_avg_quantize(x, name_prefix='P', is_training=True,
                            ema_decay=ema_decay)


def test_failed_validation_creates_nothing(plain_graph):
    x = tf.compat.v1.placeholder(tf.float32, [2])
    with pytest.raises(ValueError):
        last_value_quantize(x, name_prefix='P', is_training=True,
                            num_bits=20)
    assert [op.name for op in plain_graph.get_operations()] == [x.op.name]


# --- Step counter ---------------------------------------------------------

def test_step_counter_created_once(graph):
    ops_before = len(graph.get_operations())
    step = step_counter.get_or_create_quantization_step()
    ops_after_first = len(graph.get_operations())
    assert ops_after_first > ops_before
    assert step.name == 'fake_quantization_step/Identity:0'
    assert step.dtype == tf.int64
    assert step_counter.get_or_create_quantization_step() is step
    assert len(graph.get_operations()) == ops_after_first


def test_step_counter_variable(graph):
    step_counter.get_or_create_quantization_step()
    assert _global_names(graph) == ['fake_quantization_step']
    var = _variable(graph, 'fake_quantization_step')
    assert var.dtype.base_dtype == tf.int64
    assert var.shape == []
    assert not graph.get_collection(
        tf.compat.v1.GraphKeys.TRAINABLE_VARIABLES)


def test_step_counter_increments_once_per_run(graph):
    step = step_counter.get_or_create_quantization_step()
    first = step + 0
    second = step * 1
    with tf.compat.v1.Session() as sess:
        sess.run(tf.compat.v1.global_variables_initializer())
        assert sess.run(step) == 1
        assert sess.run([first, second]) == [2, 2]
        assert sess.run(_variable(graph, 'fake_quantization_step')) == 2


def test_step_counter_created_at_root_inside_scopes(graph):
    with tf.compat.v1.variable_scope('V'), tf.compat.v1.name_scope('N'):
        step = step_counter.get_or_create_quantization_step()
        again = step_counter.get_or_create_quantization_step()
        assert tf.compat.v1.get_variable_scope().name == 'V'
    assert step.name == 'fake_quantization_step/Identity:0'
    assert again is step
    assert _global_names(graph) == ['fake_quantization_step']


def test_step_counter_ignores_caller_control_dependencies(plain_graph):
    gate = tf.constant(0.0, name='gate')
    with tf.control_dependencies([gate]):
        step = step_counter.get_or_create_quantization_step()
    created = [op for op in plain_graph.get_operations()
               if op.name.startswith('fake_quantization_step')]
    assert all(gate.op not in op.control_inputs for op in created)
    assert step.op in created


def test_step_counter_uses_given_graph(plain_graph):
    other = tf.Graph()
    step = step_counter.get_or_create_quantization_step(other)
    assert step.graph is other
    assert not plain_graph.get_operations()


# --- Smart conditionals ---------------------------------------------------

@pytest.mark.parametrize('pred, expected', [(True, 't'), (False, 'f')])
def test_smart_cond_python_bool_builds_one_branch(plain_graph, pred, expected):
    calls = []

    def branch(tag):
        calls.append(tag)
        return tf.constant(1.0, name=tag)

    result = conditionals.smart_cond(pred, lambda: branch('t'),
                                     lambda: branch('f'), name='cond')
    assert calls == [expected]
    assert [op.name for op in plain_graph.get_operations()] == [expected]
    assert result.op.name == expected


def test_smart_cond_tensor_builds_v1_cond(plain_graph):
    pred = tf.compat.v1.placeholder(tf.bool, [])
    a = tf.constant(1.0)
    b = tf.constant(2.0)
    flag_before = control_flow_util.ENABLE_CONTROL_FLOW_V2
    result = conditionals.smart_cond(pred, lambda: a, lambda: b, name='c')
    assert control_flow_util.ENABLE_CONTROL_FLOW_V2 == flag_before
    assert result.name == 'c/Merge:0'
    assert plain_graph.get_operation_by_name('c/Switch_1').type == 'Switch'
    assert not _op_types(plain_graph) & {'If', 'StatelessIf'}
    with tf.compat.v1.Session() as sess:
        assert sess.run(result, {pred: True}) == 1.0
        assert sess.run(result, {pred: False}) == 2.0


def test_smart_cond_restores_flag_when_branch_raises(plain_graph):
    flag_before = control_flow_util.ENABLE_CONTROL_FLOW_V2

    def failing_branch():
        raise RuntimeError('boom')

    with pytest.raises(RuntimeError, match='boom'):
        conditionals.smart_cond(tf.constant(True), failing_branch,
                                lambda: tf.constant(0.0))
    assert control_flow_util.ENABLE_CONTROL_FLOW_V2 == flag_before


def test_smart_cond_gradient(plain_graph):
    pred = tf.compat.v1.placeholder(tf.bool, [])
    x = tf.constant([1.0, 2.0])
    y = conditionals.smart_cond(pred, lambda: 3.0 * x, lambda: x * x)
    (grad,) = tf.compat.v1.gradients(y, x)
    with tf.compat.v1.Session() as sess:
        np.testing.assert_allclose(sess.run(grad, {pred: True}), [3.0, 3.0])
        np.testing.assert_allclose(sess.run(grad, {pred: False}), [2.0, 4.0])


@pytest.mark.parametrize('pred', [1, tf.constant(1.0), None])
def test_smart_cond_rejects_non_boolean_pred(pred):
    with tf.Graph().as_default():
        with pytest.raises(TypeError, match='pred'):
            conditionals.smart_cond(pred, lambda: 1, lambda: 2)


def test_smart_cond_rejects_eager_tensor():
    with pytest.raises(RuntimeError, match='graph'):
        conditionals.smart_cond(tf.constant(True), lambda: tf.constant(1),
                                lambda: tf.constant(2))


# --- Delayed quantization -------------------------------------------------

@pytest.mark.parametrize('quant_delay', [None, 0])
def test_no_delay_builds_nothing(plain_graph, quant_delay):
    x = tf.compat.v1.placeholder(tf.float32, [2])
    q = last_value_quantize(x, name_prefix='P', is_training=True)
    ops_before = len(plain_graph.get_operations())
    assert quant_ops.delay_quantization(q, x, quant_delay, 'P') is q
    assert len(plain_graph.get_operations()) == ops_before


@pytest.mark.parametrize('switch_merge', [False, True],
                         ids=['select', 'switch_merge'])
def test_delay_names(plain_graph, switch_merge):
    x = tf.compat.v1.placeholder(tf.float32, [2])
    q = last_value_quantize(x, name_prefix='S/P', is_training=True)
    with conditionals.switch_merge_conds(switch_merge):
        delayed = quant_ops.delay_quantization(q, x, 100, 'S/P')
    activate = plain_graph.get_operation_by_name('S/P/activate_quant')
    assert activate.type == 'GreaterEqual'
    assert activate.inputs[0].name == 'fake_quantization_step/Identity:0'
    delay = plain_graph.get_operation_by_name('S/P/activate_quant/y')
    assert delay.get_attr('dtype') == tf.int64
    assert tf.make_ndarray(delay.get_attr('value')) == 100
    if not switch_merge:
        assert delayed.name == 'S/P/delayed_quant:0'
        assert delayed.op.type == 'Select'
        assert list(delayed.op.inputs) == [activate.outputs[0], q, x]
        return
    # contrib's v1 cond, for code that inspects it.
    assert delayed.name == 'S/P/delayed_quant/Merge:0'
    switch_1 = plain_graph.get_operation_by_name('S/P/delayed_quant/Switch_1')
    switch_2 = plain_graph.get_operation_by_name('S/P/delayed_quant/Switch_2')
    assert switch_1.inputs[0] is q
    assert switch_2.inputs[0] is x


@pytest.mark.parametrize('kind', sorted(QUANTIZERS))
def test_delay_switches_to_quantized_at_delay(graph, kind):
    batch = np.array([-1.0, -0.3, 0.4, 1.0], np.float32)
    x = tf.compat.v1.placeholder(tf.float32, [4])
    q = QUANTIZERS[kind](x, name_prefix='P', is_training=True, num_bits=2,
                         init_min=0.0, init_max=0.0)
    delayed = quant_ops.delay_quantization(q, x, 3, 'P')
    min_var = _variable(graph, 'P/min')
    with tf.compat.v1.Session() as sess:
        sess.run(tf.compat.v1.global_variables_initializer())
        # Steps 1 and 2 are before the delay; ranges are learned anyway.
        for _ in range(2):
            np.testing.assert_array_equal(sess.run(delayed, {x: batch}), batch)
            assert sess.run(min_var) == pytest.approx(-1.0, rel=1e-4)
        for _ in range(2):
            output, quantized = sess.run([delayed, q], {x: batch})
            np.testing.assert_array_equal(output, quantized)
            assert not np.allclose(output, batch)


def test_gradient_through_delayed_output(graph):
    x = tf.compat.v1.placeholder(tf.float32, [3])
    q = moving_avg_quantize(x, name_prefix='P', is_training=True)
    delayed = quant_ops.delay_quantization(q, x, 2, 'P')
    (grad,) = tf.compat.v1.gradients(tf.reduce_sum(delayed * delayed), x)
    batch = np.array([-1.0, 0.5, 1.0], np.float32)
    inner_batch = np.array([-0.5, 0.25, 0.75], np.float32)
    with tf.compat.v1.Session() as sess:
        sess.run(tf.compat.v1.global_variables_initializer())
        np.testing.assert_allclose(sess.run(grad, {x: batch}), 2.0 * batch)
        # Quantized: straight-through inside the learned range (about
        # [-1, 1]), so d/dx sum(q^2) = 2q.
        grad_value, q_value = sess.run([grad, q], {x: inner_batch})
        np.testing.assert_allclose(grad_value, 2.0 * q_value, rtol=1e-6)


@pytest.mark.parametrize('quant_delay, error', [
    (-1, ValueError), (1.5, TypeError), (True, TypeError)])
def test_delay_rejects_invalid_delay(plain_graph, quant_delay, error):
    x = tf.compat.v1.placeholder(tf.float32, [2])
    with pytest.raises(error, match='quant_delay'):
        quant_ops.delay_quantization(x, x, quant_delay, 'P')
