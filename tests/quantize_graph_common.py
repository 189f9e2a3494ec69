"""What the tests of the public rewrite API and of FakeQuant placement
share: constants, assertions about one quantizer, small graphs.
"""

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


def api(name):
    return getattr(tf1_quantize, name)


def fake_quants(graph):
    return {op.name: op for op in graph.get_operations() if op.type == FQ}


def fq_prefixes(graph):
    """The quantizer scopes P of every FakeQuant (name minus '/FakeQuant')."""
    return {name.rpartition('/')[0] for name in fake_quants(graph)}


def graph_bytes(graph):
    return graph.as_graph_def().SerializeToString(deterministic=True)


def global_names(graph):
    return {v.op.name for v in graph.get_collection(GLOBAL)}


def consumer_names(tensor):
    return sorted(op.name for op in tensor.consumers())


def reads(op, tensor):
    return any(t is tensor for t in op.inputs)


def range_source(tensor):
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


def ema_variables(prefix):
    return {'%s/%s/%s/%s' % (prefix, prefix, bound, kind)
            for bound in ('min', 'max') for kind in ('biased', 'local_step')}


def assert_quantizer(graph, prefix, source, consumers, *, moving_avg,
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
        update, variable = range_source(fq.inputs[index])
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
        assert consumer_names(fq.outputs[0]) == [select.name]
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
    assert consumer_names(quantized) == sorted(consumers), prefix
    for name in consumers:
        consumer = graph.get_operation_by_name(name)
        assert reads(consumer, quantized)
        assert not reads(consumer, src), (name, 'still reads', source)


def assert_no_double_slash(graph):
    assert not [op.name for op in graph.get_operations() if '//' in op.name]


# ---------------------------------------------------------------------------
# Small graphs.


def rich_graph(bn_training=True, resource=None, graph=None):
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


def simple_graph(graph=None, scope='test', batch_norm=True):
    """conv (+ fused BN) + Relu6 in `scope`, then ``output``."""
    graph = graph or tf.Graph()
    with graph.as_default():
        x = qb.input_placeholder()
        layer = qb.conv_layer(x, scope, 4, gb.Values(0),
                              batch_norm=batch_norm)
        tf.reduce_sum(layer.output, name='output')
    return graph


def call(name, graph, **kwargs):
    result = api(name)(graph, **kwargs)
    assert result is None
    return result


def activation_graph(scope_of_extra_ops='test'):
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
