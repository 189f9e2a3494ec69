"""Scope filtering, caller scopes and the numbers of the inserted quantizers
(spec 3.3, 3.5, 4, 5.3, 7.1)."""

import numpy as np
import pytest
import tensorflow as tf

import builders as gb
import graph_checks as common

import tf1_quantize

v1 = tf.compat.v1


# --- Scope filtering (spec 3.5, 7.1) ----------------------------------------


def test_scope_weights_need_every_consumer_in_scope():
    graph = tf.Graph()
    with graph.as_default():
        x = gb.input_placeholder()
        layer = gb.conv_layer(x, 'scope1', 3, gb.Values(0), resource=False)
        l2 = tf.nn.l2_loss(layer.variables['weights'], name='l2')
        tf.add(tf.reduce_sum(layer.output), l2, name='output')
    tf1_quantize.experimental_create_training_graph(graph, scope='scope1')
    # Not even partially: the conv keeps reading the raw weights.
    assert common.fq_prefixes(graph) == {'scope1/act_quant'}
    conv = graph.get_operation_by_name('scope1/Conv2D')
    assert conv.inputs[1].name == 'scope1/weights/read:0'


@pytest.mark.parametrize('bn', [False, True])
def test_scope_producer_and_consumer_filters(bn):
    """scope = the layer scope of a bypass block: the weights are quantized
    (consumer inside), act_quant is not (producer test/Relu6 outside),
    conv_quant is not (its consumer test/AddV2 is outside)."""
    built = gb.build_placement_graph('conv', 'Relu6', True, bn, False)
    tf1_quantize.experimental_create_training_graph(built.graph,
                                                    scope='test/test')
    assert common.fq_prefixes(built.graph) == {'test/test/weights_quant'}
    if bn:  # Folding ignores the scope.
        built.graph.get_operation_by_name('test/test/add_fold')


def test_scope_two_layers_and_prefix_rules():
    """testRewriteWithScope; 'scope1' must not match 'scope10/...'; the
    trailing slash is optional."""
    def build():
        graph = tf.Graph()
        with graph.as_default():
            x = gb.input_placeholder()
            a = gb.conv_layer(x, 'scope1/Conv', 3, gb.Values(0))
            b = gb.conv_layer(a.output, 'scope10/Conv', 3, gb.Values(1))
            c = gb.conv_layer(b.output, 'scope2/Conv', 3, gb.Values(2))
            tf.reduce_sum(c.output, name='output')
        return graph

    graphs = [build(), build()]
    tf1_quantize.experimental_create_training_graph(graphs[0],
                                                    scope='scope1')
    tf1_quantize.experimental_create_training_graph(graphs[1],
                                                    scope='scope1/')
    assert common.fq_prefixes(graphs[0]) == {'scope1/Conv/weights_quant',
                                       'scope1/Conv/act_quant'}
    assert common.graph_bytes(graphs[0]) == common.graph_bytes(graphs[1])
    # act_quant's consumer (scope10/Conv/Conv2D) is outside: producer filter.
    common.assert_quantizer(graphs[0], 'scope1/Conv/act_quant',
                            'scope1/Conv/Relu6:0', ['scope10/Conv/Conv2D'],
                            moving_avg=True)


def test_scope_intermediate_ops():
    """testActivationRewriteWithScope: intermediate ops outside the scope
    are not quantized; with no scope they are."""
    graph = gb.activation_graph('scope2')
    tf1_quantize.experimental_create_training_graph(graph, scope='test')
    assert common.fq_prefixes(graph) == {'test/weights_quant', 'test/act_quant'}
    assert not [n for n in common.fake_quants(graph) if n.startswith('scope2')]
    graph = gb.activation_graph('scope2')
    tf1_quantize.experimental_create_training_graph(graph)
    assert {'scope2/Mul/activation_Mul_quant',
            'scope2/add/activation_AddV2_quant'} <= common.fq_prefixes(graph)


def test_scope_post_activation_bypass_producer_filter():
    graph = tf.Graph()
    with graph.as_default():
        x = gb.input_placeholder()
        a = gb.conv_layer(x, 'scope1', 3, gb.Values(0))
        y = tf.add(a.output, x, name='other/add')
        tf.reduce_sum(y, name='output')
    tf1_quantize.experimental_create_training_graph(graph, scope='scope1')
    assert common.fq_prefixes(graph) == {'scope1/weights_quant', 'scope1/act_quant'}
    graph2 = tf.Graph()
    with graph2.as_default():
        x = gb.input_placeholder()
        a = gb.conv_layer(x, 'scope1', 3, gb.Values(0))
        y = tf.add(a.output, x, name='other/add')
        tf.reduce_sum(y, name='output')
    tf1_quantize.experimental_create_training_graph(graph2)
    assert 'other/post_activation_bypass_quant' in common.fq_prefixes(graph2)


@pytest.mark.parametrize('name', common.EXPERIMENTAL_API)
def test_non_matching_scope(name):
    """testRewriteWithNonMatchingScope: a BN-free graph is unchanged; a BN
    is still folded (folding ignores the scope)."""
    graph = gb.simple_graph(batch_norm=False)
    before = common.graph_bytes(graph)
    common.call(name, graph, scope='NonExistingScope')
    assert common.graph_bytes(graph) == before
    graph = gb.simple_graph(batch_norm=True)
    common.call(name, graph, scope='NonExistingScope')
    assert not common.fake_quants(graph)
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
    reference = gb.rich_graph()
    tf1_quantize.create_training_graph(reference, quant_delay=5)
    graph = gb.rich_graph()
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
        snapshots.append(common.graph_bytes(graph))
    assert snapshots[0] == snapshots[1]
    names = [op.name for op in graph.get_operations()]
    assert not [n for n in names if 'name_scope/name_scope' in n
                or 'vs/vs' in n or n.startswith('vs/name_scope/vs')]
    common.assert_no_double_slash(graph)
    assert common.global_names(graph) == common.global_names(reference)
    assert common.STEP in common.global_names(graph)
    counters = [op.name for op in graph.get_operations()
                if op.type in ('VariableV2', 'VarHandleOp')
                and common.STEP in op.name]
    assert counters == [common.STEP]
    assert {_strip_caller_scope(p) for p in common.fq_prefixes(graph)} == \
        gb.RICH_PREFIXES
    assert len(names) == len(reference.get_operations())


def test_model_built_in_name_scope_has_no_doubled_prefix():
    graph = tf.Graph()
    with graph.as_default():
        with tf.name_scope('name_scope'):
            gb.simple_graph(graph=graph)
            tf1_quantize.create_training_graph(quant_delay=5)
    names = [op.name for op in graph.get_operations()]
    assert not [n for n in names if 'name_scope/name_scope' in n]
    assert common.fq_prefixes(graph) == {'name_scope/test/weights_quant',
                                   'name_scope/test/act_quant'}
    assert common.STEP in common.global_names(graph)
    common.assert_no_double_slash(graph)


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
            x = gb.input_placeholder()
            gb.conv_layer(x, 'test', 3, gb.Values(0), resource=False)
            tf1_quantize.create_training_graph()
    assert common.fq_prefixes(graph) == {'tower_0/test/weights_quant',
                                   'tower_0/test/act_quant'}
    assert common.global_names(graph) == {
        'test/weights', 'test/biases', 'test/weights_quant/min',
        'test/weights_quant/max', 'test/act_quant/min', 'test/act_quant/max'
    } | common.ema_variables('test/act_quant')


def test_rewrite_inside_null_name_scope():
    graph = gb.simple_graph()
    with graph.as_default():
        with graph.name_scope(None):
            tf1_quantize.create_training_graph()
    assert common.fq_prefixes(graph) == {'test/weights_quant', 'test/act_quant'}


# ---------------------------------------------------------------------------
# Numbers (spec 4, 5.3).


def _fetch_quantizers(graph):
    """Tensors to fetch per FakeQuant: input, output, the ranges it used."""
    return {prefix: graph.get_operation_by_name(prefix + '/' + common.FQ)
            for prefix in common.fq_prefixes(graph)}


@pytest.mark.parametrize('weight_bits,activation_bits,symmetric', [
    (8, 8, False), (4, 5, True)])
def test_training_numbers(weight_bits, activation_bits, symmetric):
    """Every FakeQuant output equals the numpy formula with the ranges it
    used; weight ranges are the current weights' range (0 included or
    symmetric); EMA ranges follow the zero-debiased formula; the
    intermediate-op quantizer stays asymmetric."""
    built = gb.build_placement_graph('conv', 'Relu6', True, True, False)
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
    variables = {v.op.name: v for v in graph.get_collection(common.GLOBAL)}
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
                batch = gb.batch_range(x, bits, is_weight, sym)
                if is_weight:
                    expected = batch
                else:
                    refs = emas.setdefault(prefix, (gb.EmaReference(),
                                                    gb.EmaReference()))
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
                    out, gb.numpy_fake_quant(x, low, high, bits, is_weight),
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
    quantized = gb.build_placement_graph('conv', 'Relu6', False, True, False)
    folded = gb.build_placement_graph('conv', 'Relu6', False, True, False)
    tf1_quantize.create_training_graph(quantized.graph, quant_delay=3)
    tf1_quantize.fold_batch_norms(folded.graph, is_training=True)
    assert not common.fake_quants(folded.graph)
    graph = quantized.graph
    op = graph.get_operation_by_name
    weights_fq = op('test/weights_quant/' + common.FQ)
    act_fq = op('test/act_quant/' + common.FQ)
    fetches = {
        'output': op('output').inputs[0],
        'step': graph.get_tensor_by_name(common.STEP + '/Identity:0'),
        'conv_weights': op('test/Conv2D_Fold').inputs[1],
        'mul_fold': op('test/mul_fold').outputs[0],
        'relu6': op('test/Relu6').outputs[0],
        'weights_range': [weights_fq.inputs[1], weights_fq.inputs[2]],
        'act_range': [act_fq.inputs[1], act_fq.inputs[2]],
    }
    feeds = quantized.built.feeds(4, seed=5)
    inputs = quantized.built.inputs
    folded_output = folded.graph.get_operation_by_name('output').inputs[0]
    step_var = [v for v in graph.get_collection(common.GLOBAL)
                if v.op.name == common.STEP][0]
    ema = (gb.EmaReference(), gb.EmaReference())
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
            act_batch = gb.batch_range(values['relu6'], 8, False, False)
            np.testing.assert_allclose(
                values['act_range'],
                (ema[0].update(act_batch[0]), ema[1].update(act_batch[1])),
                rtol=2e-5, atol=1e-6)
            np.testing.assert_allclose(
                values['weights_range'],
                gb.batch_range(values['mul_fold'], 8, True, False),
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
                    gb.numpy_fake_quant(values['mul_fold'],
                                        *values['weights_range'], 8, True),
                    rtol=0, atol=1e-5)
                assert not np.allclose(values['conv_weights'],
                                       values['mul_fold'], rtol=0,
                                       atol=1e-7)
                np.testing.assert_allclose(
                    values['output'],
                    gb.numpy_fake_quant(values['relu6'],
                                        *values['act_range'], 8, False),
                    rtol=0, atol=1e-5)
                assert not np.allclose(values['output'], reference,
                                       rtol=0, atol=1e-7)
