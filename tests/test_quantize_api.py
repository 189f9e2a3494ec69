"""The public rewrite API (spec 1): signatures, errors, idempotence, the
training and eval graphs, bits (spec 4.6, 6, 7.1)."""

import inspect

import pytest
import tensorflow as tf

import builders as gb
import graph_checks as common

import tf1_quantize

v1 = tf.compat.v1


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


@pytest.mark.parametrize('name', common.API_NAMES)
def test_signature(name):
    """contrib's parameters, in contrib's order, with contrib's defaults.

    Only the experimental functions may take extra parameters (library
    extensions), and only after contrib's and with a default, so that every
    contrib call keeps working unchanged.
    """
    expected = EXPECTED_SIGNATURES[name]
    params = list(inspect.signature(common.api(name)).parameters.values())
    assert [(p.name, p.default) for p in params[:len(expected)]] == expected
    for p, (_, default) in zip(params, expected):
        assert p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
        assert type(p.default) is type(default)
    extras = params[len(expected):]
    if name not in common.EXPERIMENTAL_API:
        assert not extras
    for p in extras:
        assert p.default is not inspect.Parameter.empty, p.name


def test_exports():
    for name in common.API_NAMES:
        assert callable(getattr(tf1_quantize, name))


@pytest.mark.parametrize('name', common.API_NAMES)
def test_rewrites_in_place_and_returns_none(name):
    graph = gb.rich_graph(bn_training=name in common.TRAINING_API)
    before = common.global_names(graph)
    assert common.api(name)(graph) is None
    assert common.fq_prefixes(graph) == gb.RICH_PREFIXES
    assert common.global_names(graph) > before  # testRewrite: adds variables.


@pytest.mark.parametrize('name', common.API_NAMES)
def test_none_input_graph_uses_default_graph(name):
    graph = gb.simple_graph(batch_norm=False)
    other = gb.simple_graph(batch_norm=False)
    other_bytes = common.graph_bytes(other)
    with graph.as_default():
        assert common.api(name)() is None
    assert common.fq_prefixes(graph) == {'test/weights_quant', 'test/act_quant'}
    assert common.graph_bytes(other) == other_bytes
    with other.as_default():
        assert common.api(name)(input_graph=None) is None
    assert common.fq_prefixes(other) == {'test/weights_quant', 'test/act_quant'}


@pytest.mark.parametrize('pair,delay', [
    (('create_training_graph', 'experimental_create_training_graph'), 0),
    (('create_training_graph', 'experimental_create_training_graph'), 5),
    (('create_eval_graph', 'experimental_create_eval_graph'), None),
])
def test_create_equals_experimental_with_defaults(pair, delay):
    """Spec 1.1: create_X is experimental_create_X with default arguments."""
    training = pair[0] in common.TRAINING_API
    graphs = [gb.rich_graph(bn_training=training) for _ in pair]
    kwargs = {'quant_delay': delay} if training else {}
    for name, graph in zip(pair, graphs):
        common.call(name, graph, **kwargs)
    assert common.fq_prefixes(graphs[0]) == gb.RICH_PREFIXES
    assert common.graph_bytes(graphs[0]) == common.graph_bytes(graphs[1])


@pytest.mark.parametrize('name,kwargs,freeze', [
    ('create_training_graph', {'quant_delay': 5}, None),
    ('experimental_create_training_graph', {}, None),
    ('experimental_create_training_graph', {'freeze_bn_delay': 7}, 7),
])
def test_freeze_bn_delay_reaches_folding(name, kwargs, freeze):
    """create_training_graph never freezes; the experimental function
    passes freeze_bn_delay to folding (spec 1.1, 2.4)."""
    graph = gb.simple_graph()
    common.call(name, graph, **kwargs)
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
    assert freeze_ops[0].inputs[0].name == common.STEP + '/Identity:0'
    assert tf.get_static_value(freeze_ops[0].inputs[1]) == freeze


# --- Errors (spec 1.2, 1.3) -------------------------------------------------


def _graph_with_optimizer(resource):
    graph = gb.simple_graph()
    with graph.as_default():
        with v1.variable_scope('extra', use_resource=resource):
            w = v1.get_variable('w', [3], initializer=v1.ones_initializer())
        loss = graph.get_tensor_by_name('output:0') + tf.reduce_sum(w)
        v1.train.GradientDescentOptimizer(0.1).minimize(loss)
    return graph


@pytest.mark.parametrize('name', common.API_NAMES)
@pytest.mark.parametrize('resource', [False, True], ids=['ref', 'resource'])
def test_training_op_check(name, resource):
    graph = _graph_with_optimizer(resource)
    apply_type = ('ResourceApplyGradientDescent' if resource
                  else 'ApplyGradientDescent')
    assert apply_type in {op.type for op in graph.get_operations()}
    before = common.graph_bytes(graph)
    with pytest.raises(ValueError) as error:
        common.api(name)(graph)
    assert str(error.value).startswith('Training op found in graph')
    assert apply_type in str(error.value)
    assert common.graph_bytes(graph) == before


@pytest.mark.parametrize('name', common.API_NAMES)
def test_finalized_graph(name):
    graph = gb.simple_graph()
    graph.finalize()
    before = common.graph_bytes(graph)
    with pytest.raises(ValueError) as error:
        common.api(name)(graph)
    assert 'finalized' in str(error.value).lower()
    assert common.graph_bytes(graph) == before


@pytest.mark.parametrize('name', common.API_NAMES)
@pytest.mark.parametrize('argument', ['graph_def', 'string', 'session'])
def test_non_graph_argument(name, argument):
    graph = gb.simple_graph()
    value = {'graph_def': graph.as_graph_def(), 'string': 'test',
             'session': None}[argument]
    if argument == 'session':
        value = v1.Session(graph=graph)
    try:
        before = common.graph_bytes(graph)
        with pytest.raises(TypeError):
            common.api(name)(value)
        assert common.graph_bytes(graph) == before
    finally:
        if argument == 'session':
            value.close()


def _invalid_calls():
    for name in common.EXPERIMENTAL_API:
        for arg in ('weight_bits', 'activation_bits'):
            for bits in (1, 17, 8.5, True, 0, -8):
                yield name, {arg: bits}
        yield name, {'quant_delay': -1}
    yield 'create_training_graph', {'quant_delay': -1}
    yield 'experimental_create_training_graph', {'freeze_bn_delay': -1}


@pytest.mark.parametrize('name,kwargs', list(_invalid_calls()),
                         ids=lambda v: str(v))
def test_invalid_arguments_raise_before_mutation(name, kwargs):
    graph = gb.simple_graph()
    op_count = len(graph.get_operations())
    before = common.graph_bytes(graph)
    with pytest.raises(ValueError):
        common.api(name)(graph, **kwargs)
    assert len(graph.get_operations()) == op_count
    assert common.graph_bytes(graph) == before
    assert common.STEP not in common.global_names(graph)


@pytest.mark.parametrize('name', common.EXPERIMENTAL_API)
def test_bit_extremes_are_accepted(name):
    graph = gb.simple_graph()
    common.call(name, graph, weight_bits=2, activation_bits=16)
    fqs = common.fake_quants(graph)
    assert fqs['test/weights_quant/' + common.FQ].get_attr('num_bits') == 2
    assert fqs['test/act_quant/' + common.FQ].get_attr('num_bits') == 16


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
    graph = gb.rich_graph(bn_training=name in common.TRAINING_API)
    common.call(name, graph, **kwargs)
    first = common.graph_bytes(graph)
    variables = common.global_names(graph)
    common.call(name, graph, **kwargs)
    assert common.graph_bytes(graph) == first
    assert common.global_names(graph) == variables


# --- Training vs eval (spec 6, 7.1) ------------------------------------------


def test_quant_delay_constant():
    """testQuantDelay: the delay is an int64 Const under activate_quant."""
    for name in common.TRAINING_API + ('experimental_create_eval_graph',):
        graph = gb.simple_graph(batch_norm=name in common.TRAINING_API)
        common.call(name, graph, quant_delay=100)
        consts = [op for op in graph.get_operations()
                  if op.type == 'Const' and 'activate_quant' in op.name]
        assert sorted(op.name for op in consts) == [
            'test/act_quant/activate_quant/y',
            'test/weights_quant/activate_quant/y']
        for op in consts:
            assert op.get_attr('dtype') == tf.int64
            assert tf.make_ndarray(op.get_attr('value')) == 100
        assert common.STEP in common.global_names(graph)


@pytest.mark.parametrize('name,kwargs', [
    ('create_training_graph', {}),
    ('create_training_graph', {'quant_delay': 0}),
    ('create_eval_graph', {}),
    ('experimental_create_eval_graph', {'quant_delay': 0}),
])
def test_no_delay_builds_no_conditional_and_no_counter(name, kwargs):
    graph = gb.rich_graph(bn_training=name in common.TRAINING_API)
    common.call(name, graph, **kwargs)
    assert common.STEP not in common.global_names(graph)
    assert not [op.name for op in graph.get_operations()
                if op.type in ('Switch', 'Merge', 'If', 'StatelessIf', 'Select')
                or 'activate_quant' in op.name or common.STEP in op.name]


@pytest.mark.parametrize('delay', [None, 5])
def test_eval_graph_vs_training_graph(delay):
    train = gb.rich_graph(bn_training=True)
    evaluation = gb.rich_graph(bn_training=False)
    tf1_quantize.create_training_graph(train, quant_delay=delay or 0)
    if delay:
        tf1_quantize.experimental_create_eval_graph(evaluation,
                                                    quant_delay=delay)
    else:
        tf1_quantize.create_eval_graph(evaluation)
    # testTrainingQuantization / testEvalQuantization.
    train_names = [op.name for op in train.get_operations()]
    eval_names = [op.name for op in evaluation.get_operations()]
    for marker in common.UPDATE_MARKERS:
        assert any(marker in n for n in train_names), marker
        assert not any(marker in n for n in eval_names), marker
    assert not any('BatchMin' in n or 'BatchMax' in n for n in eval_names)
    assert common.fq_prefixes(evaluation) == common.fq_prefixes(train) == gb.RICH_PREFIXES
    for prefix in gb.RICH_PREFIXES:
        fq = evaluation.get_operation_by_name(prefix + '/' + common.FQ)
        assert common.range_source(fq.inputs[1]) == (None, prefix + '/min')
        assert common.range_source(fq.inputs[2]) == (None, prefix + '/max')
    train_vars = common.global_names(train)
    eval_vars = common.global_names(evaluation)
    assert not [n for n in eval_vars if 'biased' in n or 'local_step' in n]
    assert eval_vars <= train_vars
    shadows = set().union(*(common.ema_variables(p)
                            for p in gb.RICH_PREFIXES - gb.RICH_WEIGHT_PREFIXES))
    assert train_vars - eval_vars == shadows
    assert (common.STEP in eval_vars) == bool(delay)
    assert common.STEP in train_vars if delay else common.STEP not in train_vars
    ranges = {'%s/%s' % (p, b) for p in gb.RICH_PREFIXES for b in ('min', 'max')}
    assert ranges <= eval_vars
    if delay:
        for prefix in gb.RICH_PREFIXES:
            common.assert_quantizer(
                evaluation, prefix,
                evaluation.get_operation_by_name(prefix + '/' + common.FQ)
                .inputs[0].name,
                common.consumer_names(evaluation.get_tensor_by_name(
                    prefix + '/delayed_quant:0')),
                moving_avg=prefix not in gb.RICH_WEIGHT_PREFIXES,
                is_training=False, delay=delay,
                narrow_range=prefix in gb.RICH_WEIGHT_PREFIXES)


def test_range_variables_collections_and_initial_values():
    """Spec 4 / 4.6: GLOBAL_VARIABLES only, non-trainable, init ranges."""
    graph = gb.rich_graph()
    trainable = {v.op.name for v in graph.get_collection(
        v1.GraphKeys.TRAINABLE_VARIABLES)}
    tf1_quantize.create_training_graph(graph, quant_delay=5)
    assert {v.op.name for v in graph.get_collection(
        v1.GraphKeys.TRAINABLE_VARIABLES)} == trainable
    for key in (v1.GraphKeys.MOVING_AVERAGE_VARIABLES,
                v1.GraphKeys.MODEL_VARIABLES, v1.GraphKeys.LOCAL_VARIABLES):
        assert not [v for v in graph.get_collection(key)
                    if 'quant' in v.op.name or common.STEP in v.op.name]
    variables = {v.op.name: v for v in graph.get_collection(common.GLOBAL)}
    with v1.Session(graph=graph) as sess:
        sess.run(v1.global_variables_initializer())
        for prefix in gb.RICH_PREFIXES:
            init_min = 0.0 if prefix.endswith('/act_quant') else -6.0
            low, high = sess.run([variables[prefix + '/min'],
                                  variables[prefix + '/max']])
            assert (low, high) == (init_min, 6.0), prefix
        assert sess.run(variables[common.STEP]) == 0
    assert variables[common.STEP].dtype.base_dtype == tf.int64
    assert variables[common.STEP].shape == []
    for prefix in gb.RICH_PREFIXES:
        for bound in ('min', 'max'):
            var = variables['%s/%s' % (prefix, bound)]
            assert var.shape == [] and var.dtype.base_dtype == tf.float32


# --- Bits, narrow range (spec 4.6, 7.1) -------------------------------------


@pytest.mark.parametrize('name', common.EXPERIMENTAL_API)
@pytest.mark.parametrize('symmetric', [False, True])
def test_bits_and_narrow_range(name, symmetric):
    graph = gb.rich_graph(bn_training=name in common.TRAINING_API)
    common.call(name, graph, weight_bits=3, activation_bits=5,
                symmetric=symmetric)
    fqs = common.fake_quants(graph)
    assert common.fq_prefixes(graph) == gb.RICH_PREFIXES
    for fq_name, op in fqs.items():
        is_weight = '/weights_quant/' in fq_name
        assert op.get_attr('num_bits') == (3 if is_weight else 5), fq_name
        assert op.get_attr('narrow_range') == is_weight, fq_name
