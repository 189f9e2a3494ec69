"""Tests of the public rewrite API and of FakeQuant placement.

Covers spec sections 1 (API), 3 (placement), 4 (numbers of the inserted
quantizers), 5.3 (step counter) and 7.1 / 7.3 / 7.4 (the original tests'
assertions). Checkpoint compatibility is in test_checkpoints.py.
"""

import inspect
import itertools

import numpy as np
import pytest
import tensorflow as tf

import tf1_quantize
import graph_builders as gb
import quantize_builders as qb

v1 = tf.compat.v1

FQ = 'FakeQuantWithMinMaxVars'
GLOBAL = v1.GraphKeys.GLOBAL_VARIABLES
STEP = 'fake_quantization_step'
UPDATE_MARKERS = ('AssignMinLast', 'AssignMaxLast', 'AssignMinEma',
                  'AssignMaxEma')
API_NAMES = ('create_training_graph', 'create_eval_graph',
             'experimental_create_training_graph',
             'experimental_create_eval_graph')
TRAINING_API = ('create_training_graph', 'experimental_create_training_graph')
EXPERIMENTAL_API = ('experimental_create_training_graph',
                    'experimental_create_eval_graph')
LAYER_OP_NAMES = {'conv': 'Conv2D', 'fc': 'MatMul', 'depthwise': 'depthwise',
                  'atrous': 'depthwise'}
WEIGHT_NAMES = {'conv': 'weights', 'fc': 'weights',
                'depthwise': 'depthwise_weights',
                'atrous': 'depthwise_weights'}


# ---------------------------------------------------------------------------
# Helpers.


def _api(name):
    return getattr(tf1_quantize, name)


def _fake_quants(graph):
    return {op.name: op for op in graph.get_operations() if op.type == FQ}


def _fq_prefixes(graph):
    """The quantizer scopes P of every FakeQuant (name minus '/FakeQuant')."""
    return {name.rpartition('/')[0] for name in _fake_quants(graph)}


def _graph_bytes(graph):
    return graph.as_graph_def().SerializeToString(deterministic=True)


def _global_names(graph):
    return {v.op.name for v in graph.get_collection(GLOBAL)}


def _consumer_names(tensor):
    return sorted(op.name for op in tensor.consumers())


def _reads(op, tensor):
    return any(t is tensor for t in op.inputs)


def _range_source(tensor):
    """(update op name or None, range variable name) behind a FakeQuant
    min/max input.

    In training the input is the update op itself (ref range variables, as in
    TF1) or a read of the range variable ordered after the update op by a
    control dependency (resource range variables, TF2's default). In eval it
    is a plain read of the variable.
    """
    op = tensor.op
    if op.type in ('Assign', 'AssignAdd', 'AssignSub'):  # ref variable
        return op.name, op.inputs[0].op.name
    if op.type == 'ReadVariableOp':
        controls = [c.name for c in op.control_inputs]
        assert len(controls) <= 1, controls
        return (controls[0] if controls else None), op.inputs[0].op.name
    if op.type == 'Identity' and op.inputs[0].op.type in ('VariableV2',
                                                          'Variable'):
        return None, op.inputs[0].op.name
    raise AssertionError('unexpected range input %s (%s)' %
                         (op.name, op.type))


def _ema_variables(prefix):
    return {'%s/%s/%s/%s' % (prefix, prefix, bound, kind)
            for bound in ('min', 'max') for kind in ('biased', 'local_step')}


def _assert_quantizer(graph, prefix, source, consumers, *, moving_avg,
                      is_training=True, delay=None, num_bits=8,
                      narrow_range=False):
    """Checks one quantizer `prefix` (spec 3.2, 3.3, 7.4).

    Args:
        graph: the rewritten graph.
        prefix: the quantizer scope P (`P/FakeQuantWithMinMaxVars`).
        source: name of the quantized tensor.
        consumers: names of the ops that must now read the quantized value.
        moving_avg: EMA (activations) or last-value (weights) ranges.
        is_training: whether range updates are expected.
        delay: the quant_delay (None or 0: no conditional).
        num_bits, narrow_range: expected FakeQuant attributes.
    """
    fq = graph.get_operation_by_name(prefix + '/' + FQ)
    src = graph.get_tensor_by_name(source)
    assert fq.inputs[0] is src, (prefix, fq.inputs[0].name, source)
    kind = 'Ema' if moving_avg else 'Last'
    for index, bound in ((1, 'min'), (2, 'max')):
        update, variable = _range_source(fq.inputs[index])
        assert variable == '%s/%s' % (prefix, bound)
        if is_training:
            assert update == '%s/Assign%s%s' % (prefix, bound.title(), kind)
        else:
            assert update is None
    assert fq.get_attr('num_bits') == num_bits
    assert fq.get_attr('narrow_range') == narrow_range
    if delay:
        select = graph.get_operation_by_name(prefix + '/delayed_quant')
        assert select.type == 'Select'
        assert _consumer_names(fq.outputs[0]) == [select.name]
        quantized = select.outputs[0]
        # Before the delay the original tensor passes through.
        assert select.inputs[1] is fq.outputs[0] and select.inputs[2] is src
        activate = graph.get_operation_by_name(prefix + '/activate_quant')
        assert select.inputs[0].op is activate
        assert activate.type == 'GreaterEqual'
        assert activate.inputs[0].name == STEP + '/Identity:0'
        threshold = graph.get_operation_by_name(prefix + '/activate_quant/y')
        assert threshold.get_attr('dtype') == tf.int64
        assert tf.make_ndarray(threshold.get_attr('value')) == delay
    else:
        assert not [op for op in graph.get_operations()
                    if op.name.startswith(prefix + '/delayed_quant')]
        quantized = fq.outputs[0]
    assert _consumer_names(quantized) == sorted(consumers), prefix
    for name in consumers:
        consumer = graph.get_operation_by_name(name)
        assert _reads(consumer, quantized)
        assert not _reads(consumer, src), (name, 'still reads', source)


def _assert_no_double_slash(graph):
    assert not [op.name for op in graph.get_operations() if '//' in op.name]


# ---------------------------------------------------------------------------
# Small graphs.


def _rich_graph(bn_training=True, resource=None, graph=None):
    """Every quantizer kind in one small graph.

    ``test/test``: conv + fused BN, bypass ``test/AddV2`` with the input,
    ``test/Relu6``; ``post``: conv + bias + Relu6, then the post-activation
    bypass ``post/add``; ``tail/Mul`` (intermediate op); ``output``.
    """
    graph = graph or tf.Graph()
    values = gb.Values(0)
    with graph.as_default():
        x = qb.input_placeholder()
        a = qb.conv_layer(x, 'test/test', 3, values, batch_norm=True,
                          bn_training=bn_training, activation=None,
                          resource=resource)
        with tf.name_scope('test/'):
            y = tf.nn.relu6(tf.add(a.output, x, name='AddV2'), name='Relu6')
        b = qb.conv_layer(y, 'post', 3, values, activation='Relu6',
                          resource=resource)
        with tf.name_scope('post/'):
            z = tf.add(b.output, y, name='add')
        with tf.name_scope('tail/'):
            m = tf.multiply(z, 2.0, name='Mul')
        tf.reduce_sum(m, name='output')
    return graph


RICH_PREFIXES = {
    'test/test/weights_quant', 'test/act_quant', 'test/test/conv_quant',
    'post/weights_quant', 'post/act_quant',
    'post/post_activation_bypass_quant',
    'tail/Mul/activation_Mul_quant'
}
RICH_WEIGHT_PREFIXES = {'test/test/weights_quant', 'post/weights_quant'}


def _simple_graph(graph=None, scope='test', batch_norm=True):
    """conv (+ fused BN) + Relu6 in `scope`, then ``output``."""
    graph = graph or tf.Graph()
    with graph.as_default():
        x = qb.input_placeholder()
        layer = qb.conv_layer(x, scope, 4, gb.Values(0),
                              batch_norm=batch_norm)
        tf.reduce_sum(layer.output, name='output')
    return graph


def _call(name, graph, **kwargs):
    result = _api(name)(graph, **kwargs)
    assert result is None
    return result


# ---------------------------------------------------------------------------
# API surface (spec 1).


EXPECTED_SIGNATURES = {
    'create_training_graph': [('input_graph', None), ('quant_delay', 0)],
    'create_eval_graph': [('input_graph', None)],
    'experimental_create_training_graph': [
        ('input_graph', None), ('weight_bits', 8), ('activation_bits', 8),
        ('symmetric', False), ('quant_delay', 0), ('freeze_bn_delay', None),
        ('scope', None)],
    'experimental_create_eval_graph': [
        ('input_graph', None), ('weight_bits', 8), ('activation_bits', 8),
        ('symmetric', False), ('quant_delay', None), ('scope', None)],
}


@pytest.mark.parametrize('name', API_NAMES)
def test_signature(name):
    """contrib's parameters, in contrib's order, with contrib's defaults.

    Only the experimental functions may take extra parameters (library
    extensions), and only after contrib's and with a default, so that every
    contrib call keeps working unchanged.
    """
    expected = EXPECTED_SIGNATURES[name]
    params = list(inspect.signature(_api(name)).parameters.values())
    assert [(p.name, p.default) for p in params[:len(expected)]] == expected
    for p, (_, default) in zip(params, expected):
        assert p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
        assert type(p.default) is type(default)
    extras = params[len(expected):]
    if name not in EXPERIMENTAL_API:
        assert not extras
    for p in extras:
        assert p.default is not inspect.Parameter.empty, p.name


def test_exports():
    for name in API_NAMES:
        assert callable(getattr(tf1_quantize, name))


@pytest.mark.parametrize('name', API_NAMES)
def test_rewrites_in_place_and_returns_none(name):
    graph = _rich_graph(bn_training=name in TRAINING_API)
    before = _global_names(graph)
    assert _api(name)(graph) is None
    assert _fq_prefixes(graph) == RICH_PREFIXES
    assert _global_names(graph) > before  # testRewrite: adds variables.


@pytest.mark.parametrize('name', API_NAMES)
def test_none_input_graph_uses_default_graph(name):
    graph = _simple_graph(batch_norm=False)
    other = _simple_graph(batch_norm=False)
    other_bytes = _graph_bytes(other)
    with graph.as_default():
        assert _api(name)() is None
    assert _fq_prefixes(graph) == {'test/weights_quant', 'test/act_quant'}
    assert _graph_bytes(other) == other_bytes
    with other.as_default():
        assert _api(name)(input_graph=None) is None
    assert _fq_prefixes(other) == {'test/weights_quant', 'test/act_quant'}


@pytest.mark.parametrize('pair,delay', [
    (('create_training_graph', 'experimental_create_training_graph'), 0),
    (('create_training_graph', 'experimental_create_training_graph'), 5),
    (('create_eval_graph', 'experimental_create_eval_graph'), None),
])
def test_create_equals_experimental_with_defaults(pair, delay):
    """Spec 1.1: create_X is experimental_create_X with default arguments."""
    training = pair[0] in TRAINING_API
    graphs = [_rich_graph(bn_training=training) for _ in pair]
    kwargs = {'quant_delay': delay} if training else {}
    for name, graph in zip(pair, graphs):
        _call(name, graph, **kwargs)
    assert _fq_prefixes(graphs[0]) == RICH_PREFIXES
    assert _graph_bytes(graphs[0]) == _graph_bytes(graphs[1])


@pytest.mark.parametrize('name,kwargs,freeze', [
    ('create_training_graph', {'quant_delay': 5}, None),
    ('experimental_create_training_graph', {}, None),
    ('experimental_create_training_graph', {'freeze_bn_delay': 7}, 7),
])
def test_freeze_bn_delay_reaches_folding(name, kwargs, freeze):
    """create_training_graph never freezes; the experimental function
    passes freeze_bn_delay to folding (spec 1.1, 2.4)."""
    graph = _simple_graph()
    _call(name, graph, **kwargs)
    freeze_ops = [op for op in graph.get_operations()
                  if op.name.endswith('use_moving_average')]
    if freeze is None:
        assert not freeze_ops
        assert not [op for op in graph.get_operations()
                    if 'freeze_moving' in op.name]
        return
    assert [op.name for op in freeze_ops] == [
        'test/BatchNorm_Fold/batch_norm_correction/use_moving_average']
    assert freeze_ops[0].type == 'GreaterEqual'
    assert freeze_ops[0].inputs[0].name == STEP + '/Identity:0'
    assert tf.get_static_value(freeze_ops[0].inputs[1]) == freeze


# --- Errors (spec 1.2, 1.3) -------------------------------------------------


def _graph_with_optimizer(resource):
    graph = _simple_graph()
    with graph.as_default():
        with v1.variable_scope('extra', use_resource=resource):
            w = v1.get_variable('w', [3], initializer=v1.ones_initializer())
        loss = graph.get_tensor_by_name('output:0') + tf.reduce_sum(w)
        v1.train.GradientDescentOptimizer(0.1).minimize(loss)
    return graph


@pytest.mark.parametrize('name', API_NAMES)
@pytest.mark.parametrize('resource', [False, True], ids=['ref', 'resource'])
def test_training_op_check(name, resource):
    graph = _graph_with_optimizer(resource)
    apply_type = ('ResourceApplyGradientDescent' if resource
                  else 'ApplyGradientDescent')
    assert apply_type in {op.type for op in graph.get_operations()}
    before = _graph_bytes(graph)
    with pytest.raises(ValueError) as error:
        _api(name)(graph)
    assert str(error.value).startswith('Training op found in graph')
    assert apply_type in str(error.value)
    assert _graph_bytes(graph) == before


@pytest.mark.parametrize('name', API_NAMES)
def test_finalized_graph(name):
    graph = _simple_graph()
    graph.finalize()
    before = _graph_bytes(graph)
    with pytest.raises(ValueError) as error:
        _api(name)(graph)
    assert 'finalized' in str(error.value).lower()
    assert _graph_bytes(graph) == before


@pytest.mark.parametrize('name', API_NAMES)
@pytest.mark.parametrize('argument', ['graph_def', 'string', 'session'])
def test_non_graph_argument(name, argument):
    graph = _simple_graph()
    value = {'graph_def': graph.as_graph_def(), 'string': 'test',
             'session': None}[argument]
    if argument == 'session':
        value = v1.Session(graph=graph)
    try:
        before = _graph_bytes(graph)
        with pytest.raises(TypeError):
            _api(name)(value)
        assert _graph_bytes(graph) == before
    finally:
        if argument == 'session':
            value.close()


def _invalid_calls():
    for name in EXPERIMENTAL_API:
        for arg in ('weight_bits', 'activation_bits'):
            for bits in (1, 17, 8.5, True, 0, -8):
                yield name, {arg: bits}
        yield name, {'quant_delay': -1}
    yield 'create_training_graph', {'quant_delay': -1}
    yield 'experimental_create_training_graph', {'freeze_bn_delay': -1}


@pytest.mark.parametrize('name,kwargs', list(_invalid_calls()),
                         ids=lambda v: str(v))
def test_invalid_arguments_raise_before_mutation(name, kwargs):
    graph = _simple_graph()
    op_count = len(graph.get_operations())
    before = _graph_bytes(graph)
    with pytest.raises(ValueError):
        _api(name)(graph, **kwargs)
    assert len(graph.get_operations()) == op_count
    assert _graph_bytes(graph) == before
    assert STEP not in _global_names(graph)


@pytest.mark.parametrize('name', EXPERIMENTAL_API)
def test_bit_extremes_are_accepted(name):
    graph = _simple_graph()
    _call(name, graph, weight_bits=2, activation_bits=16)
    fqs = _fake_quants(graph)
    assert fqs['test/weights_quant/' + FQ].get_attr('num_bits') == 2
    assert fqs['test/act_quant/' + FQ].get_attr('num_bits') == 16


# --- Idempotence (spec 1.3, 3.7) --------------------------------------------


IDEMPOTENCE_CALLS = [
    ('create_training_graph', {}),
    ('create_training_graph', {'quant_delay': 5}),
    ('create_eval_graph', {}),
    ('experimental_create_training_graph',
     {'weight_bits': 4, 'activation_bits': 6, 'symmetric': True,
      'quant_delay': 5, 'freeze_bn_delay': 7}),
    ('experimental_create_training_graph', {'scope': 'test'}),
    ('experimental_create_eval_graph',
     {'weight_bits': 4, 'symmetric': True, 'quant_delay': 5}),
    ('experimental_create_eval_graph', {'scope': 'post'}),
]


@pytest.mark.parametrize('name,kwargs', IDEMPOTENCE_CALLS,
                         ids=lambda v: str(v))
def test_second_call_changes_nothing(name, kwargs):
    graph = _rich_graph(bn_training=name in TRAINING_API)
    _call(name, graph, **kwargs)
    first = _graph_bytes(graph)
    variables = _global_names(graph)
    _call(name, graph, **kwargs)
    assert _graph_bytes(graph) == first
    assert _global_names(graph) == variables


# --- Training vs eval (spec 6, 7.1) ------------------------------------------


def test_quant_delay_constant():
    """testQuantDelay: the delay is an int64 Const under activate_quant."""
    for name in TRAINING_API + ('experimental_create_eval_graph',):
        graph = _simple_graph(batch_norm=name in TRAINING_API)
        _call(name, graph, quant_delay=100)
        consts = [op for op in graph.get_operations()
                  if op.type == 'Const' and 'activate_quant' in op.name]
        assert sorted(op.name for op in consts) == [
            'test/act_quant/activate_quant/y',
            'test/weights_quant/activate_quant/y']
        for op in consts:
            assert op.get_attr('dtype') == tf.int64
            assert tf.make_ndarray(op.get_attr('value')) == 100
        assert STEP in _global_names(graph)


@pytest.mark.parametrize('name,kwargs', [
    ('create_training_graph', {}),
    ('create_training_graph', {'quant_delay': 0}),
    ('create_eval_graph', {}),
    ('experimental_create_eval_graph', {'quant_delay': 0}),
])
def test_no_delay_builds_no_conditional_and_no_counter(name, kwargs):
    graph = _rich_graph(bn_training=name in TRAINING_API)
    _call(name, graph, **kwargs)
    assert STEP not in _global_names(graph)
    assert not [op.name for op in graph.get_operations()
                if op.type in ('Switch', 'Merge', 'If', 'StatelessIf', 'Select')
                or 'activate_quant' in op.name or STEP in op.name]


@pytest.mark.parametrize('delay', [None, 5])
def test_eval_graph_vs_training_graph(delay):
    train = _rich_graph(bn_training=True)
    evaluation = _rich_graph(bn_training=False)
    tf1_quantize.create_training_graph(train, quant_delay=delay or 0)
    if delay:
        tf1_quantize.experimental_create_eval_graph(evaluation,
                                                    quant_delay=delay)
    else:
        tf1_quantize.create_eval_graph(evaluation)
    # testTrainingQuantization / testEvalQuantization.
    train_names = [op.name for op in train.get_operations()]
    eval_names = [op.name for op in evaluation.get_operations()]
    for marker in UPDATE_MARKERS:
        assert any(marker in n for n in train_names), marker
        assert not any(marker in n for n in eval_names), marker
    assert not any('BatchMin' in n or 'BatchMax' in n for n in eval_names)
    assert _fq_prefixes(evaluation) == _fq_prefixes(train) == RICH_PREFIXES
    for prefix in RICH_PREFIXES:
        fq = evaluation.get_operation_by_name(prefix + '/' + FQ)
        assert _range_source(fq.inputs[1]) == (None, prefix + '/min')
        assert _range_source(fq.inputs[2]) == (None, prefix + '/max')
    train_vars = _global_names(train)
    eval_vars = _global_names(evaluation)
    assert not [n for n in eval_vars if 'biased' in n or 'local_step' in n]
    assert eval_vars <= train_vars
    shadows = set().union(*(_ema_variables(p)
                            for p in RICH_PREFIXES - RICH_WEIGHT_PREFIXES))
    assert train_vars - eval_vars == shadows
    assert (STEP in eval_vars) == bool(delay)
    assert STEP in train_vars if delay else STEP not in train_vars
    ranges = {'%s/%s' % (p, b) for p in RICH_PREFIXES for b in ('min', 'max')}
    assert ranges <= eval_vars
    if delay:
        for prefix in RICH_PREFIXES:
            _assert_quantizer(
                evaluation, prefix,
                evaluation.get_operation_by_name(prefix + '/' + FQ)
                .inputs[0].name,
                _consumer_names(evaluation.get_tensor_by_name(
                    prefix + '/delayed_quant:0')),
                moving_avg=prefix not in RICH_WEIGHT_PREFIXES,
                is_training=False, delay=delay,
                narrow_range=prefix in RICH_WEIGHT_PREFIXES)


def test_range_variables_collections_and_initial_values():
    """Spec 4 / 4.6: GLOBAL_VARIABLES only, non-trainable, init ranges."""
    graph = _rich_graph()
    trainable = {v.op.name for v in graph.get_collection(
        v1.GraphKeys.TRAINABLE_VARIABLES)}
    tf1_quantize.create_training_graph(graph, quant_delay=5)
    assert {v.op.name for v in graph.get_collection(
        v1.GraphKeys.TRAINABLE_VARIABLES)} == trainable
    for key in (v1.GraphKeys.MOVING_AVERAGE_VARIABLES,
                v1.GraphKeys.MODEL_VARIABLES, v1.GraphKeys.LOCAL_VARIABLES):
        assert not [v for v in graph.get_collection(key)
                    if 'quant' in v.op.name or STEP in v.op.name]
    variables = {v.op.name: v for v in graph.get_collection(GLOBAL)}
    with v1.Session(graph=graph) as sess:
        sess.run(v1.global_variables_initializer())
        for prefix in RICH_PREFIXES:
            init_min = 0.0 if prefix.endswith('/act_quant') else -6.0
            low, high = sess.run([variables[prefix + '/min'],
                                  variables[prefix + '/max']])
            assert (low, high) == (init_min, 6.0), prefix
        assert sess.run(variables[STEP]) == 0
    assert variables[STEP].dtype.base_dtype == tf.int64
    assert variables[STEP].shape == []
    for prefix in RICH_PREFIXES:
        for bound in ('min', 'max'):
            var = variables['%s/%s' % (prefix, bound)]
            assert var.shape == [] and var.dtype.base_dtype == tf.float32


# --- Bits, narrow range (spec 4.6, 7.1) -------------------------------------


@pytest.mark.parametrize('name', EXPERIMENTAL_API)
@pytest.mark.parametrize('symmetric', [False, True])
def test_bits_and_narrow_range(name, symmetric):
    graph = _rich_graph(bn_training=name in TRAINING_API)
    _call(name, graph, weight_bits=3, activation_bits=5,
          symmetric=symmetric)
    fqs = _fake_quants(graph)
    assert _fq_prefixes(graph) == RICH_PREFIXES
    for fq_name, op in fqs.items():
        is_weight = '/weights_quant/' in fq_name
        assert op.get_attr('num_bits') == (3 if is_weight else 5), fq_name
        assert op.get_attr('narrow_range') == is_weight, fq_name


# ---------------------------------------------------------------------------
# Placement, parameterized (spec 3.2, 3.9, 7.4).

# (quant_delay, resource variables, scope): the four rows cover every pair
# of values of these factors (delay None and 0 both mean "no delay"). Each
# layer/activation/bypass/BN combination runs with one pair of rows,
# alternating between the pairs, so every value of those factors also meets
# every value of these.
_SECONDARY_PAIRS = [[(None, False, None), (0, True, 'test')],
                    [(5, False, 'test'), (5, True, None)]]


def _placement_params():
    base = list(itertools.product(('conv', 'fc', 'depthwise'),
                                  qb.ACTIVATIONS, (False, True),
                                  (False, True)))
    base += [('atrous', 'Relu6', True, True), ('atrous', None, False, False)]
    for index, (layer, activation, bypass, bn) in enumerate(base):
        # Flip the pair every 4 combinations (the BN x bypass block), so
        # that both pairs meet every layer, activation, bypass and BN value.
        pair = _SECONDARY_PAIRS[(index + index // 4) % 2]
        for delay, resource, scope in pair:
            yield pytest.param(
                layer, activation, bypass, bn, delay, resource, scope,
                id='-'.join([layer, str(activation),
                             'bypass' if bypass else 'nobypass',
                             'bn' if bn else 'nobn', 'delay%s' % delay,
                             'res' if resource else 'ref',
                             'scope%s' % scope]))


def _expected_placement(layer, activation, bypass, bn, resource):
    """{prefix: (source tensor, consumers, moving_avg, narrow)} per spec."""
    s = 'test/test' if bypass else 'test'
    layer_op = '%s/%s%s' % (s, LAYER_OP_NAMES[layer], '_Fold' if bn else '')
    if bn:
        weights = s + '/mul_fold:0'
    elif resource:
        weights = '%s/%s/ReadVariableOp:0' % (s, LAYER_OP_NAMES[layer])
    else:
        weights = '%s/%s/read:0' % (s, WEIGHT_NAMES[layer])
    bias_add = s + ('/add_fold:0' if bn else '/BiasAdd:0')
    expected = {s + '/weights_quant': (weights, [layer_op], False, True)}
    if activation is not None:
        # The activation quantizer sits at the parent scope with a bypass.
        expected['test/act_quant'] = ('test/%s:0' % activation, ['output'],
                                      True, False)
        if bypass:
            expected[s + '/conv_quant'] = (bias_add, ['test/AddV2'], True,
                                           False)
    else:
        # Final layer: the bias add is quantized in the layer scope; a
        # bypass Add after it is an intermediate op.
        expected[s + '/act_quant'] = (
            bias_add, ['test/AddV2'] if bypass else ['output'], True, False)
        if bypass:
            expected['test/AddV2/activation_AddV2_quant'] = (
                'test/AddV2:0', ['output'], True, False)
    return expected


@pytest.mark.parametrize(
    'layer,activation,bypass,bn,delay,resource,scope',
    list(_placement_params()))
def test_placement(layer, activation, bypass, bn, delay, resource, scope):
    built = qb.build_placement_graph(layer, activation, bypass, bn, resource)
    graph = built.graph
    variables_before = _global_names(graph)
    tf1_quantize.experimental_create_training_graph(graph, quant_delay=delay,
                                                    scope=scope)
    expected = _expected_placement(layer, activation, bypass, bn, resource)
    assert _fq_prefixes(graph) == set(expected)
    for prefix, (source, consumers, moving_avg, narrow) in expected.items():
        _assert_quantizer(graph, prefix, source, consumers,
                          moving_avg=moving_avg, delay=delay,
                          narrow_range=narrow)
    new_variables = set()
    for prefix, (_, _, moving_avg, _) in expected.items():
        new_variables |= {prefix + '/min', prefix + '/max'}
        if moving_avg:
            new_variables |= _ema_variables(prefix)
    if delay:
        new_variables.add(STEP)
    assert _global_names(graph) - variables_before == new_variables
    _assert_no_double_slash(graph)


def _second_call_params():
    for layer, bn, (activation, bypass), training in itertools.product(
            ('conv', 'fc', 'depthwise', 'atrous'), (False, True),
            (('Relu6', True), (None, False)), (True, False)):
        yield pytest.param(
            layer, bn, activation, bypass, training,
            id='-'.join([layer, 'bn' if bn else 'nobn', str(activation),
                         'bypass' if bypass else 'nobypass',
                         'train' if training else 'eval']))


@pytest.mark.parametrize('layer,bn,activation,bypass,training',
                         list(_second_call_params()))
def test_placement_second_call_changes_nothing(layer, bn, activation, bypass,
                                               training):
    """Re-running fold + quantize leaves the GraphDef unchanged (spec 1.3,
    2.9, 3.7, 7.4), for every layer type."""
    built = qb.build_placement_graph(layer, activation, bypass, bn, False,
                                     bn_training=training)
    graph = built.graph
    if training:
        rewrite = lambda: tf1_quantize.create_training_graph(  # noqa: E731
            graph, quant_delay=5)
    else:
        rewrite = lambda: tf1_quantize.create_eval_graph(graph)  # noqa: E731
    rewrite()
    expected = _expected_placement(layer, activation, bypass, bn, False)
    assert _fq_prefixes(graph) == set(expected)
    first = _graph_bytes(graph)
    variables = _global_names(graph)
    rewrite()
    assert _global_names(graph) == variables
    assert _graph_bytes(graph) == first
    # The layers an earlier rewrite quantized are not reported as float.
    assert tf1_quantize.last_report(graph).float_ops == []


@pytest.mark.parametrize('activation,bypass', [('Relu6', True),
                                               (None, False)])
def test_eval_placement(activation, bypass):
    built = qb.build_placement_graph('conv', activation, bypass, True, False,
                                     bn_training=False)
    graph = built.graph
    tf1_quantize.create_eval_graph(graph)
    expected = _expected_placement('conv', activation, bypass, True, False)
    assert _fq_prefixes(graph) == set(expected)
    for prefix, (source, consumers, moving_avg, narrow) in expected.items():
        _assert_quantizer(graph, prefix, source, consumers,
                          moving_avg=moving_avg, is_training=False,
                          narrow_range=narrow)
    _assert_no_double_slash(graph)


# ---------------------------------------------------------------------------
# Placement, specific graphs (spec 3.4 - 3.8, 7.1, 7.3).


def test_worked_example_training_fused_relu6():
    """Spec 3.9, with quant_delay 0."""
    graph = _simple_graph(scope='S')
    tf1_quantize.create_training_graph(graph)
    op = graph.get_operation_by_name
    fq = op('S/weights_quant/' + FQ)
    assert fq.inputs[0].op is op('S/mul_fold')
    assert {t.op.name for t in op('S/mul_fold').inputs} == {
        'S/correction_mult', 'S/BatchNorm_Fold/mul'}
    assert _consumer_names(fq.outputs[0]) == ['S/Conv2D_Fold']
    act = op('S/act_quant/' + FQ)
    assert act.inputs[0].op is op('S/Relu6')
    assert op('S/Relu6').inputs[0].op is op('S/add_fold')
    assert _consumer_names(act.outputs[0]) == ['output']
    assert [n for n in _consumer_names(op('S/Relu6').outputs[0])
            if not n.startswith('S/act_quant/')] == []
    new = {'S/weights_quant/min', 'S/weights_quant/max', 'S/act_quant/min',
           'S/act_quant/max'} | _ema_variables('S/act_quant')
    assert new <= _global_names(graph)
    assert not [n for n in _global_names(graph)
                if 'quant' in n and n not in new]


def test_identity_between_conv_and_batch_norm():
    """testIdentityNode: conv -> Identity -> fused BN -> Identity bn_out."""
    built = gb.build_contrib_layer(gb.LayerSpec(identity=True,
                                                activation=None))
    graph = built.graph
    with graph.as_default():
        out = tf.identity(built.output, name='test/bn_out')
        tf.reduce_sum(out, name='output')
    tf1_quantize.create_training_graph(graph)
    assert _fq_prefixes(graph) == {'test/weights_quant', 'test/act_quant'}
    op = graph.get_operation_by_name
    assert [t.op.name for t in op('test/bn_out').inputs] == ['test/add_fold']
    assert op('test/act_quant/' + FQ).inputs[0].op is op('test/bn_out')
    # The conv -> Identity -> BN statistics path is no activation.
    assert 'test/BatchNorm/FusedBatchNormV3' in _consumer_names(
        op('test/Identity').outputs[0])
    assert not [c for c in op('test/Identity').outputs[0].consumers()
                if c.type == FQ]


def _activation_graph(scope_of_extra_ops='test'):
    """testActivationQuantization: conv + fused BN + Relu6, then
    ``2*a``, ``3*a`` and their sum (all in `scope_of_extra_ops`), plus an
    Add feeding a Relu (fused, not quantized) and a Sub (never quantized).
    """
    graph = tf.Graph()
    with graph.as_default():
        x = qb.input_placeholder()
        a = qb.conv_layer(x, 'test', 3, gb.Values(0), batch_norm=True).output
        with tf.name_scope(scope_of_extra_ops + '/'):
            mul = tf.multiply(2.0, a, name='Mul')
            mul_1 = tf.multiply(3.0, a, name='Mul_1')
            total = tf.add(mul, mul_1, name='add')
            fused = tf.nn.relu(tf.add(a, 1.0, name='add_relu'), name='Relu')
            sub = tf.subtract(a, 1.0, name='sub')
        tf.add_n([tf.reduce_sum(t) for t in (total, fused, sub)],
                 name='output')
    return graph


def test_intermediate_activations_quantized():
    graph = _activation_graph()
    consumers = {name: _consumer_names(graph.get_tensor_by_name(name + ':0'))
                 for name in ('test/Mul', 'test/Mul_1', 'test/add')}
    tf1_quantize.experimental_create_training_graph(graph, activation_bits=6,
                                                    symmetric=True)
    assert _fq_prefixes(graph) == {
        'test/weights_quant', 'test/act_quant',
        'test/Mul/activation_Mul_quant', 'test/Mul_1/activation_Mul_quant',
        'test/add/activation_AddV2_quant'}
    for name in ('test/Mul', 'test/Mul_1', 'test/add'):
        op = graph.get_operation_by_name(name)
        prefix = '%s/activation_%s_quant' % (name, op.type)
        _assert_quantizer(graph, prefix, name + ':0', consumers[name],
                          moving_avg=True, num_bits=6)
    # The Mul ops read the activation's FakeQuant.
    act = graph.get_tensor_by_name('test/act_quant/%s:0' % FQ)
    for name in ('test/Mul', 'test/Mul_1', 'test/add_relu', 'test/sub'):
        assert _reads(graph.get_operation_by_name(name), act)
    # add_relu feeds only a Relu (fused), sub is not an Add/Mul.
    for name in ('test/add_relu', 'test/sub', 'test/Relu'):
        assert not [c for c in graph.get_tensor_by_name(name + ':0')
                    .consumers() if c.type == FQ], name


def test_post_activation_bypass_quantized():
    """testWithPostActivationBypass / testPostActivationBypassQuantized."""
    graph = tf.Graph()
    with graph.as_default():
        x = qb.input_placeholder()
        a = qb.conv_layer(x, 'scope1', 3, gb.Values(0), activation='Relu6')
        with tf.name_scope('scope1/'):
            y = tf.add(a.output, x, name='add')
        b = qb.conv_layer(y, 'scope2', 3, gb.Values(1), activation='Relu')
        tf.reduce_sum(b.output, name='output')
    tf1_quantize.create_training_graph(graph, quant_delay=3)
    assert _fq_prefixes(graph) == {
        'scope1/weights_quant', 'scope1/act_quant',
        'scope1/post_activation_bypass_quant', 'scope2/weights_quant',
        'scope2/act_quant'}
    _assert_quantizer(graph, 'scope1/post_activation_bypass_quant',
                      'scope1/add:0', ['scope2/Conv2D'], moving_avg=True,
                      delay=3)
    _assert_quantizer(graph, 'scope1/act_quant', 'scope1/Relu6:0',
                      ['scope1/add'], moving_avg=True, delay=3)


def test_overlapping_post_activation_bypass():
    """testOverlappingPostActivationBypassQuantized: the Add feeds a Relu6,
    so it gets no FakeQuant of its own."""
    graph = tf.Graph()
    with graph.as_default():
        x = qb.input_placeholder()
        a = qb.conv_layer(x, 'test/test1', 3, gb.Values(0),
                          activation='Relu6')
        b = qb.conv_layer(x, 'test/test2', 3, gb.Values(1), activation=None)
        with tf.name_scope('test/'):
            y = tf.nn.relu6(tf.add(a.output, b.output, name='add'),
                            name='Relu6')
        tf.reduce_sum(y, name='output')
    tf1_quantize.create_training_graph(graph)
    assert _fq_prefixes(graph) == {
        'test/test1/weights_quant', 'test/test1/act_quant',
        'test/test2/weights_quant', 'test/test2/conv_quant',
        'test/act_quant'}
    add = graph.get_operation_by_name('test/add')
    assert any(t.op.type == FQ for t in add.inputs)
    assert _consumer_names(add.outputs[0]) == ['test/Relu6']
    _assert_quantizer(graph, 'test/test1/act_quant', 'test/test1/Relu6:0',
                      ['test/add'], moving_avg=True)
    _assert_quantizer(graph, 'test/act_quant', 'test/Relu6:0', ['output'],
                      moving_avg=True)
    _assert_quantizer(graph, 'test/test2/conv_quant', 'test/test2/BiasAdd:0',
                      ['test/add'], moving_avg=True)


def test_separable_conv():
    """testInsertQuantOpInSeparableConv2d: depthwise + pointwise conv, bias,
    bypass, Relu6; the depthwise output (no activation) is quantized."""
    graph = tf.Graph()
    values = gb.Values(0)
    with graph.as_default():
        x = qb.input_placeholder()
        with v1.variable_scope('test/test', use_resource=False):
            depthwise = v1.get_variable(
                'depthwise_weights', initializer=values.normal([3, 3, 3, 1]))
            pointwise = v1.get_variable(
                'pointwise_weights', initializer=values.normal([1, 1, 3, 3]))
            biases = v1.get_variable('biases', initializer=values.normal([3]))
            y = tf.nn.separable_conv2d(x, depthwise, pointwise, [1, 1, 1, 1],
                                       'SAME', name='separable_conv2d')
            y = tf.nn.bias_add(y, biases, name='BiasAdd')
        with tf.name_scope('test/'):
            y = tf.nn.relu6(tf.add(y, x, name='AddV2'), name='Relu6')
        tf.reduce_sum(y, name='output')
    tf1_quantize.create_training_graph(graph, quant_delay=2)
    sep = 'test/test/separable_conv2d'
    assert _fq_prefixes(graph) == {
        sep + '/weights_quant', sep + '/act_quant', 'test/test/weights_quant',
        'test/test/conv_quant', 'test/act_quant'}
    _assert_quantizer(graph, sep + '/weights_quant',
                      'test/test/depthwise_weights/read:0',
                      [sep + '/depthwise'], moving_avg=False,
                      narrow_range=True, delay=2)
    _assert_quantizer(graph, sep + '/act_quant', sep + '/depthwise:0', [sep],
                      moving_avg=True, delay=2)
    _assert_quantizer(graph, 'test/test/weights_quant',
                      'test/test/pointwise_weights/read:0', [sep],
                      moving_avg=False, narrow_range=True, delay=2)
    _assert_quantizer(graph, 'test/test/conv_quant', 'test/test/BiasAdd:0',
                      ['test/AddV2'], moving_avg=True, delay=2)
    _assert_quantizer(graph, 'test/act_quant', 'test/Relu6:0', ['output'],
                      moving_avg=True, delay=2)


def test_chained_depthwise_convs_sharing_a_resource_variable():
    """testSeparableConvWithResourceVar: each use of a resource variable has
    its own read, so each conv gets its own weights FakeQuant."""
    graph = tf.Graph()
    with graph.as_default():
        x = qb.input_placeholder()
        with v1.variable_scope('', use_resource=True):
            weights = v1.get_variable(
                'depthwise_weights',
                initializer=gb.Values(0).normal([3, 3, 3, 1]))
            with v1.variable_scope('depthwise_conv_1'):
                conv1 = tf.nn.depthwise_conv2d(x, weights, [1, 1, 1, 1],
                                               'SAME')
            with v1.variable_scope('depthwise_conv_2'):
                conv2 = tf.nn.depthwise_conv2d(conv1, weights, [1, 1, 1, 1],
                                               'SAME')
                total = tf.add(conv2, x, name='add')
        tf.reduce_sum(total, name='output')
    conv1_name, conv2_name = conv1.op.name, conv2.op.name
    tf1_quantize.create_training_graph(graph)
    assert _fq_prefixes(graph) == {
        'depthwise_conv_1/weights_quant', 'depthwise_conv_1/act_quant',
        'depthwise_conv_2/weights_quant', 'depthwise_conv_2/act_quant'}
    for prefix, layer in (('depthwise_conv_1', conv1_name),
                          ('depthwise_conv_2', conv2_name)):
        fq = graph.get_operation_by_name(prefix + '/weights_quant/' + FQ)
        assert fq.inputs[0].op.type == 'ReadVariableOp'
        assert fq.inputs[0].op.inputs[0].op.name == 'depthwise_weights'
        assert _consumer_names(fq.outputs[0]) == [layer]
    _assert_quantizer(graph, 'depthwise_conv_1/act_quant', conv1_name + ':0',
                      [conv2_name], moving_avg=True)
    _assert_quantizer(graph, 'depthwise_conv_2/act_quant',
                      'depthwise_conv_2/add:0', ['output'], moving_avg=True)


def test_batch_norm_forced_updates():
    """testBatchNormForcedUpdates: an Identity between the BN and the
    activation, then a post-activation bypass feeding another conv."""
    graph = tf.Graph()
    with graph.as_default():
        x = qb.input_placeholder()
        layer = qb.conv_layer(x, 'test', 3, gb.Values(0), batch_norm=True,
                              activation=None)
        with tf.name_scope('test/'):
            with tf.control_dependencies(layer.update_ops):
                y = tf.identity(layer.output, name='Identity')
            y = tf.nn.relu6(y, name='Relu6')
            y = tf.add(y, x, name='add')
        second = qb.conv_layer(y, 'second', 3, gb.Values(1))
        tf.reduce_sum(second.output, name='output')
    tf1_quantize.create_training_graph(graph)
    assert _fq_prefixes(graph) == {
        'test/weights_quant', 'test/act_quant',
        'test/post_activation_bypass_quant', 'second/weights_quant',
        'second/act_quant'}
    add = graph.get_operation_by_name('test/add')
    assert any(t.op.type == FQ for t in add.inputs)
    assert any(c.type == FQ for c in add.outputs[0].consumers())
    _assert_quantizer(graph, 'test/act_quant', 'test/Relu6:0', ['test/add'],
                      moving_avg=True)
    assert [t.op.name for t in graph.get_operation_by_name(
        'test/Identity').inputs] == ['test/add_fold']


def test_activation_without_consumers_gets_a_dangling_fake_quant():
    """Spec 3.3 step 8: with no consumers the FakeQuant is still built."""
    graph = tf.Graph()
    with graph.as_default():
        x = qb.input_placeholder()
        qb.conv_layer(x, 'test', 3, gb.Values(0))
    tf1_quantize.create_training_graph(graph)
    assert _fq_prefixes(graph) == {'test/weights_quant', 'test/act_quant'}
    fq = graph.get_operation_by_name('test/act_quant/' + FQ)
    assert fq.inputs[0].name == 'test/Relu6:0'
    assert not fq.outputs[0].consumers()


def test_user_fake_quant_after_reshape_is_respected():
    """testSkipReshapeQuantization (spec 3.7)."""
    for user_fake_quant in (True, False):
        graph = tf.Graph()
        with graph.as_default():
            x = qb.input_placeholder()
            a = qb.conv_layer(x, 'test', 3, gb.Values(0)).output
            r = tf.reshape(a, [2, -1], name='test/Reshape')
            if user_fake_quant:
                r = tf.quantization.fake_quant_with_min_max_args(
                    r, -6.0, 6.0, name='test/user_fq')
            tf.reduce_sum(r, name='output')
        tf1_quantize.create_training_graph(graph)
        if user_fake_quant:
            assert _fq_prefixes(graph) == {'test/weights_quant'}
            assert graph.get_operation_by_name('test/Reshape').inputs[0] \
                .name == 'test/Relu6:0'
        else:
            assert _fq_prefixes(graph) == {'test/weights_quant',
                                           'test/act_quant'}
            _assert_quantizer(graph, 'test/act_quant', 'test/Relu6:0',
                              ['test/Reshape'], moving_avg=True)


@pytest.mark.parametrize('partitions', [1, 2])
def test_partitioned_weights(partitions):
    graph = tf.Graph()
    with graph.as_default():
        x = qb.input_placeholder()
        with v1.variable_scope(
                'part', partitioner=v1.fixed_size_partitioner(partitions),
                use_resource=False):
            with v1.variable_scope('test'):
                w = v1.get_variable('weights', [3, 3, 3, 4])
                y = tf.nn.relu6(tf.nn.conv2d(x, w, [1, 1, 1, 1], 'SAME',
                                             name='Conv2D'), name='Relu6')
        tf.reduce_sum(y, name='output')
    tf1_quantize.create_training_graph(graph)
    assert _fq_prefixes(graph) == {'part/test/weights_quant',
                                   'part/test/act_quant'}
    _assert_quantizer(graph, 'part/test/weights_quant', 'part/test/weights:0',
                      ['part/test/Conv2D'], moving_avg=False,
                      narrow_range=True)


@pytest.mark.parametrize('delay', [None, 1])
def test_shared_weights(delay):
    """testWithSharedWeights: one weights FakeQuant feeds both convs."""
    graph = tf.Graph()
    with graph.as_default():
        x = qb.input_placeholder()
        init = v1.constant_initializer(gb.Values(0).normal([3, 3, 3, 3]))

        def conv(inputs):
            w = v1.get_variable('weights', [3, 3, 3, 3], initializer=init,
                                use_resource=False)
            return tf.nn.relu6(tf.nn.conv2d(inputs, w, [1, 1, 1, 1], 'SAME',
                                            name='Conv2D'), name='Relu6')

        template = v1.make_template('shared', conv)
        tf.reduce_sum(template(template(x)), name='output')
    tf1_quantize.experimental_create_training_graph(graph, quant_delay=delay)
    weight_fqs = [n for n in _fake_quants(graph) if 'weights_quant' in n]
    assert weight_fqs == ['shared/weights_quant/' + FQ]
    _assert_quantizer(graph, 'shared/weights_quant', 'shared/weights/read:0',
                      ['shared/Conv2D', 'shared_1/Conv2D'], moving_avg=False,
                      narrow_range=True, delay=delay)
    switches = [op.name for op in graph.get_operations()
                if op.type == 'Select' and 'weights_quant' in op.name]
    assert switches == (['shared/weights_quant/delayed_quant']
                        if delay else [])
    assert _fq_prefixes(graph) == {'shared/weights_quant',
                                   'shared/act_quant', 'shared_1/act_quant'}


def test_weights_quant_reroutes_every_consumer():
    """A regularizer reading the weights reads the quantized weights too
    (spec 3.2 step 1)."""
    graph = tf.Graph()
    with graph.as_default():
        x = qb.input_placeholder()
        layer = qb.conv_layer(x, 'scope1', 3, gb.Values(0), resource=False)
        l2 = tf.nn.l2_loss(layer.variables['weights'], name='l2')
        tf.add(tf.reduce_sum(layer.output), l2, name='output')
    tf1_quantize.create_training_graph(graph)
    _assert_quantizer(graph, 'scope1/weights_quant', 'scope1/weights/read:0',
                      ['l2', 'scope1/Conv2D'], moving_avg=False,
                      narrow_range=True)


def test_gradient_ops_are_never_rerouted():
    """Ops under `gradients/` (spec 5.3 skipped prefixes) keep reading the
    unquantized tensors, and do not count as unrerouted consumers."""
    graph = tf.Graph()
    with graph.as_default():
        x = qb.input_placeholder()
        layer = qb.conv_layer(x, 'test', 3, gb.Values(0), resource=False)
        output = tf.reduce_sum(layer.output, name='output')
        tf.gradients(output, [x])
    backprop = [op for op in graph.get_operations()
                if op.name.startswith('gradients/')
                and any(t.name == 'test/weights/read:0' for t in op.inputs)]
    assert backprop
    tf1_quantize.create_training_graph(graph)
    _assert_quantizer(graph, 'test/weights_quant', 'test/weights/read:0',
                      ['test/Conv2D'], moving_avg=False, narrow_range=True)
    for op in backprop:
        assert any(t.name == 'test/weights/read:0' for t in op.inputs)


# --- Scope filtering (spec 3.5, 7.1) ----------------------------------------


def test_scope_weights_need_every_consumer_in_scope():
    graph = tf.Graph()
    with graph.as_default():
        x = qb.input_placeholder()
        layer = qb.conv_layer(x, 'scope1', 3, gb.Values(0), resource=False)
        l2 = tf.nn.l2_loss(layer.variables['weights'], name='l2')
        tf.add(tf.reduce_sum(layer.output), l2, name='output')
    tf1_quantize.experimental_create_training_graph(graph, scope='scope1')
    # Not even partially: the conv keeps reading the raw weights.
    assert _fq_prefixes(graph) == {'scope1/act_quant'}
    conv = graph.get_operation_by_name('scope1/Conv2D')
    assert conv.inputs[1].name == 'scope1/weights/read:0'


@pytest.mark.parametrize('bn', [False, True])
def test_scope_producer_and_consumer_filters(bn):
    """scope = the layer scope of a bypass block: the weights are quantized
    (consumer inside), act_quant is not (producer test/Relu6 outside),
    conv_quant is not (its consumer test/AddV2 is outside)."""
    built = qb.build_placement_graph('conv', 'Relu6', True, bn, False)
    tf1_quantize.experimental_create_training_graph(built.graph,
                                                    scope='test/test')
    assert _fq_prefixes(built.graph) == {'test/test/weights_quant'}
    if bn:  # Folding ignores the scope.
        built.graph.get_operation_by_name('test/test/add_fold')


def test_scope_two_layers_and_prefix_rules():
    """testRewriteWithScope; 'scope1' must not match 'scope10/...'; the
    trailing slash is optional."""
    def build():
        graph = tf.Graph()
        with graph.as_default():
            x = qb.input_placeholder()
            a = qb.conv_layer(x, 'scope1/Conv', 3, gb.Values(0))
            b = qb.conv_layer(a.output, 'scope10/Conv', 3, gb.Values(1))
            c = qb.conv_layer(b.output, 'scope2/Conv', 3, gb.Values(2))
            tf.reduce_sum(c.output, name='output')
        return graph

    graphs = [build(), build()]
    tf1_quantize.experimental_create_training_graph(graphs[0],
                                                    scope='scope1')
    tf1_quantize.experimental_create_training_graph(graphs[1],
                                                    scope='scope1/')
    assert _fq_prefixes(graphs[0]) == {'scope1/Conv/weights_quant',
                                       'scope1/Conv/act_quant'}
    assert _graph_bytes(graphs[0]) == _graph_bytes(graphs[1])
    # act_quant's consumer (scope10/Conv/Conv2D) is outside: producer filter.
    _assert_quantizer(graphs[0], 'scope1/Conv/act_quant',
                      'scope1/Conv/Relu6:0', ['scope10/Conv/Conv2D'],
                      moving_avg=True)


def test_scope_intermediate_ops():
    """testActivationRewriteWithScope: intermediate ops outside the scope
    are not quantized; with no scope they are."""
    graph = _activation_graph('scope2')
    tf1_quantize.experimental_create_training_graph(graph, scope='test')
    assert _fq_prefixes(graph) == {'test/weights_quant', 'test/act_quant'}
    assert not [n for n in _fake_quants(graph) if n.startswith('scope2')]
    graph = _activation_graph('scope2')
    tf1_quantize.experimental_create_training_graph(graph)
    assert {'scope2/Mul/activation_Mul_quant',
            'scope2/add/activation_AddV2_quant'} <= _fq_prefixes(graph)


def test_scope_post_activation_bypass_producer_filter():
    graph = tf.Graph()
    with graph.as_default():
        x = qb.input_placeholder()
        a = qb.conv_layer(x, 'scope1', 3, gb.Values(0))
        y = tf.add(a.output, x, name='other/add')
        tf.reduce_sum(y, name='output')
    tf1_quantize.experimental_create_training_graph(graph, scope='scope1')
    assert _fq_prefixes(graph) == {'scope1/weights_quant', 'scope1/act_quant'}
    graph2 = tf.Graph()
    with graph2.as_default():
        x = qb.input_placeholder()
        a = qb.conv_layer(x, 'scope1', 3, gb.Values(0))
        y = tf.add(a.output, x, name='other/add')
        tf.reduce_sum(y, name='output')
    tf1_quantize.experimental_create_training_graph(graph2)
    assert 'other/post_activation_bypass_quant' in _fq_prefixes(graph2)


@pytest.mark.parametrize('name', EXPERIMENTAL_API)
def test_non_matching_scope(name):
    """testRewriteWithNonMatchingScope: a BN-free graph is unchanged; a BN
    is still folded (folding ignores the scope)."""
    graph = _simple_graph(batch_norm=False)
    before = _graph_bytes(graph)
    _call(name, graph, scope='NonExistingScope')
    assert _graph_bytes(graph) == before
    graph = _simple_graph(batch_norm=True)
    _call(name, graph, scope='NonExistingScope')
    assert not _fake_quants(graph)
    graph.get_operation_by_name('test/mul_fold')
    graph.get_operation_by_name('test/Conv2D_Fold')


# --- Caller scopes (spec 3.3 step 3, 5.3) -----------------------------------


def _strip_caller_scope(name):
    for scope in ('vs/name_scope/', 'name_scope/', 'vs/'):
        if name.startswith(scope):
            return name[len(scope):]
    return name


@pytest.mark.parametrize('caller_scope', ['name_scope', 'variable_scope',
                                          'both'])
def test_rewrite_inside_caller_scopes(caller_scope):
    """No doubled prefixes; the variables are those of a rewrite at the
    root (so checkpoints do not depend on where the rewrite was called);
    the step counter stays `fake_quantization_step` (contrib's variable
    scope bug is fixed), so a second call works and changes nothing."""
    reference = _rich_graph()
    tf1_quantize.create_training_graph(reference, quant_delay=5)
    graph = _rich_graph()
    snapshots = []
    for _ in range(2):
        with graph.as_default():
            if caller_scope == 'name_scope':
                scopes = [tf.name_scope('name_scope')]
            elif caller_scope == 'variable_scope':
                scopes = [v1.variable_scope('vs')]
            else:
                scopes = [v1.variable_scope('vs'),
                          tf.name_scope('name_scope')]
            with scopes[0]:
                if len(scopes) > 1:
                    with scopes[1]:
                        tf1_quantize.create_training_graph(quant_delay=5)
                else:
                    tf1_quantize.create_training_graph(quant_delay=5)
        snapshots.append(_graph_bytes(graph))
    assert snapshots[0] == snapshots[1]
    names = [op.name for op in graph.get_operations()]
    assert not [n for n in names if 'name_scope/name_scope' in n
                or 'vs/vs' in n or n.startswith('vs/name_scope/vs')]
    _assert_no_double_slash(graph)
    assert _global_names(graph) == _global_names(reference)
    assert STEP in _global_names(graph)
    counters = [op.name for op in graph.get_operations()
                if op.type in ('VariableV2', 'VarHandleOp')
                and STEP in op.name]
    assert counters == [STEP]
    assert {_strip_caller_scope(p) for p in _fq_prefixes(graph)} == \
        RICH_PREFIXES
    assert len(names) == len(reference.get_operations())


def test_model_built_in_name_scope_has_no_doubled_prefix():
    graph = tf.Graph()
    with graph.as_default():
        with tf.name_scope('name_scope'):
            _simple_graph(graph=graph)
            tf1_quantize.create_training_graph(quant_delay=5)
    names = [op.name for op in graph.get_operations()]
    assert not [n for n in names if 'name_scope/name_scope' in n]
    assert _fq_prefixes(graph) == {'name_scope/test/weights_quant',
                                   'name_scope/test/act_quant'}
    assert STEP in _global_names(graph)
    _assert_no_double_slash(graph)


def test_model_and_rewrite_in_name_scope_keep_variable_names():
    """Spec 3.3 step 3 + 4: the caller's name scope is stripped from the
    quantizer prefix before `variable_scope(None, default_name=prefix)`
    opens it under the (root) variable scope, so range variables are named
    like the model's own variables (which get_variable names without the
    name scope): `test/act_quant/min`, not `tower_0/test/act_quant/min`. A
    model built and rewritten inside a name scope (e.g. a TPU tower) thus
    restores contrib checkpoints. The ops stay under the name scope."""
    graph = tf.Graph()
    with graph.as_default():
        with tf.name_scope('tower_0'):
            x = qb.input_placeholder()
            qb.conv_layer(x, 'test', 3, gb.Values(0), resource=False)
            tf1_quantize.create_training_graph()
    assert _fq_prefixes(graph) == {'tower_0/test/weights_quant',
                                   'tower_0/test/act_quant'}
    assert _global_names(graph) == {
        'test/weights', 'test/biases', 'test/weights_quant/min',
        'test/weights_quant/max', 'test/act_quant/min', 'test/act_quant/max'
    } | _ema_variables('test/act_quant')


def test_rewrite_inside_null_name_scope():
    graph = _simple_graph()
    with graph.as_default():
        with graph.name_scope(None):
            tf1_quantize.create_training_graph()
    assert _fq_prefixes(graph) == {'test/weights_quant', 'test/act_quant'}


# ---------------------------------------------------------------------------
# Numbers (spec 4, 5.3).


def _fetch_quantizers(graph):
    """Tensors to fetch per FakeQuant: input, output, the ranges it used."""
    return {prefix: graph.get_operation_by_name(prefix + '/' + FQ)
            for prefix in _fq_prefixes(graph)}


@pytest.mark.parametrize('weight_bits,activation_bits,symmetric', [
    (8, 8, False), (4, 5, True)])
def test_training_numbers(weight_bits, activation_bits, symmetric):
    """Every FakeQuant output equals the numpy formula with the ranges it
    used; weight ranges are the current weights' range (0 included or
    symmetric); EMA ranges follow the zero-debiased formula; the
    intermediate-op quantizer stays asymmetric."""
    built = qb.build_placement_graph('conv', 'Relu6', True, True, False)
    graph = built.graph
    with graph.as_default():
        with tf.name_scope('test/'):
            mul = tf.multiply(built.block_output, 2.0, name='Mul')
        tf.reduce_sum(mul, name='output_2')
    tf1_quantize.experimental_create_training_graph(
        graph, weight_bits=weight_bits, activation_bits=activation_bits,
        symmetric=symmetric)
    quantizers = _fetch_quantizers(graph)
    assert set(quantizers) == {'test/test/weights_quant', 'test/act_quant',
                               'test/test/conv_quant',
                               'test/Mul/activation_Mul_quant'}
    variables = {v.op.name: v for v in graph.get_collection(GLOBAL)}
    emas = {}
    feeds = built.built.feeds(3, seed=3)
    fetches = {p: [op.inputs[0], op.outputs[0], op.inputs[1], op.inputs[2]]
               for p, op in quantizers.items()}
    # What the consumers read.
    fetches['read'] = [
        graph.get_operation_by_name('test/test/Conv2D_Fold').inputs[1],
        graph.get_operation_by_name('test/AddV2').inputs[0],
        graph.get_operation_by_name('test/Mul').inputs[0],
        graph.get_operation_by_name('output_2').inputs[0]]
    with v1.Session(graph=graph) as sess:
        sess.run(v1.global_variables_initializer())
        for feed in feeds:
            values = sess.run(fetches, feed)
            read = values.pop('read')
            stored = sess.run({p: (variables[p + '/min'],
                                   variables[p + '/max'])
                               for p in quantizers})
            for prefix, (x, out, low, high) in values.items():
                is_weight = prefix.endswith('weights_quant')
                bits = weight_bits if is_weight else activation_bits
                sym = symmetric and 'activation_Mul' not in prefix
                batch = qb.batch_range(x, bits, is_weight, sym)
                if is_weight:
                    expected = batch
                else:
                    refs = emas.setdefault(prefix, (qb.EmaReference(),
                                                    qb.EmaReference()))
                    expected = (refs[0].update(batch[0]),
                                refs[1].update(batch[1]))
                np.testing.assert_allclose((low, high), expected, rtol=2e-5,
                                           atol=1e-6, err_msg=prefix)
                np.testing.assert_allclose(stored[prefix], (low, high),
                                           rtol=0, atol=0, err_msg=prefix)
                if sym and is_weight:
                    assert low == -high
                if not sym:
                    assert low <= 0.0 <= high
                np.testing.assert_allclose(
                    out, qb.numpy_fake_quant(x, low, high, bits, is_weight),
                    rtol=0, atol=1e-5, err_msg=prefix)
            # The quantized values are what the consumers read.
            for tensor, prefix in zip(read, (
                    'test/test/weights_quant', 'test/test/conv_quant',
                    'test/act_quant', 'test/Mul/activation_Mul_quant')):
                np.testing.assert_array_equal(tensor, values[prefix][1])
        # Shadow variables hold the biased average and the step count.
        for prefix, (ref_min, ref_max) in emas.items():
            for bound, ref in (('min', ref_min), ('max', ref_max)):
                name = '%s/%s/%s' % (prefix, prefix, bound)
                biased, step = sess.run([variables[name + '/biased'],
                                         variables[name + '/local_step']])
                assert step == len(feeds)
                np.testing.assert_allclose(biased, ref.biased, rtol=2e-5,
                                           atol=1e-7)


def test_quant_delay_numbers():
    """Before the delay the output is the folded, unquantized one; from the
    delay on it is fake-quantized; the counter advances once per run."""
    quantized = qb.build_placement_graph('conv', 'Relu6', False, True, False)
    folded = qb.build_placement_graph('conv', 'Relu6', False, True, False)
    tf1_quantize.create_training_graph(quantized.graph, quant_delay=3)
    tf1_quantize.fold_batch_norms(folded.graph, is_training=True)
    assert not _fake_quants(folded.graph)
    graph = quantized.graph
    op = graph.get_operation_by_name
    weights_fq = op('test/weights_quant/' + FQ)
    act_fq = op('test/act_quant/' + FQ)
    fetches = {
        'output': op('output').inputs[0],
        'step': graph.get_tensor_by_name(STEP + '/Identity:0'),
        'conv_weights': op('test/Conv2D_Fold').inputs[1],
        'mul_fold': op('test/mul_fold').outputs[0],
        'relu6': op('test/Relu6').outputs[0],
        'weights_range': [weights_fq.inputs[1], weights_fq.inputs[2]],
        'act_range': [act_fq.inputs[1], act_fq.inputs[2]],
    }
    feeds = quantized.built.feeds(4, seed=5)
    inputs = quantized.built.inputs
    folded_output = folded.graph.get_operation_by_name('output').inputs[0]
    step_var = [v for v in graph.get_collection(GLOBAL)
                if v.op.name == STEP][0]
    ema = (qb.EmaReference(), qb.EmaReference())
    with graph.as_default():
        init = v1.global_variables_initializer()
    with folded.graph.as_default():
        folded_init = v1.global_variables_initializer()
    with v1.Session(graph=graph) as sess, \
            v1.Session(graph=folded.graph) as folded_sess:
        sess.run(init)
        folded_sess.run(folded_init)
        for run, feed in enumerate(feeds, start=1):
            values = sess.run(fetches, feed)
            reference = folded_sess.run(
                folded_output, {folded.built.inputs: feed[inputs]})
            assert values['step'] == run
            assert sess.run(step_var) == run
            # Ranges are learned during the delay too.
            act_batch = qb.batch_range(values['relu6'], 8, False, False)
            np.testing.assert_allclose(
                values['act_range'],
                (ema[0].update(act_batch[0]), ema[1].update(act_batch[1])),
                rtol=2e-5, atol=1e-6)
            np.testing.assert_allclose(
                values['weights_range'],
                qb.batch_range(values['mul_fold'], 8, True, False),
                rtol=1e-6, atol=1e-7)
            if run < 3:
                np.testing.assert_array_equal(values['conv_weights'],
                                              values['mul_fold'])
                np.testing.assert_array_equal(values['output'],
                                              values['relu6'])
                np.testing.assert_allclose(values['output'], reference,
                                           rtol=1e-5, atol=1e-5)
            else:
                np.testing.assert_allclose(
                    values['conv_weights'],
                    qb.numpy_fake_quant(values['mul_fold'],
                                        *values['weights_range'], 8, True),
                    rtol=0, atol=1e-5)
                assert not np.allclose(values['conv_weights'],
                                       values['mul_fold'], rtol=0,
                                       atol=1e-7)
                np.testing.assert_allclose(
                    values['output'],
                    qb.numpy_fake_quant(values['relu6'],
                                        *values['act_range'], 8, False),
                    rtol=0, atol=1e-5)
                assert not np.allclose(values['output'], reference,
                                       rtol=0, atol=1e-7)
