"""Where the FakeQuants go (spec 3.2 - 3.9, 7.1, 7.3, 7.4)."""

import itertools

import pytest
import tensorflow as tf

import builders as gb
import graph_checks as common

import tf1_quantize

v1 = tf.compat.v1


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
                                  gb.PLACEMENT_ACTIVATIONS, (False, True),
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
    layer_op = '%s/%s%s' % (s, gb.LAYER_OP_NAMES[layer], '_Fold' if bn else '')
    if bn:
        weights = s + '/mul_fold:0'
    elif resource:
        weights = '%s/%s/ReadVariableOp:0' % (s, gb.LAYER_OP_NAMES[layer])
    else:
        weights = '%s/%s/read:0' % (s, gb.WEIGHT_NAMES[layer])
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
    built = gb.build_placement_graph(layer, activation, bypass, bn, resource)
    graph = built.graph
    variables_before = common.global_names(graph)
    tf1_quantize.experimental_create_training_graph(graph, quant_delay=delay,
                                                    scope=scope)
    expected = _expected_placement(layer, activation, bypass, bn, resource)
    assert common.fq_prefixes(graph) == set(expected)
    for prefix, (source, consumers, moving_avg, narrow) in expected.items():
        common.assert_quantizer(graph, prefix, source, consumers,
                                moving_avg=moving_avg, delay=delay,
                                narrow_range=narrow)
    new_variables = set()
    for prefix, (_, _, moving_avg, _) in expected.items():
        new_variables |= {prefix + '/min', prefix + '/max'}
        if moving_avg:
            new_variables |= common.ema_variables(prefix)
    if delay:
        new_variables.add(common.STEP)
    assert common.global_names(graph) - variables_before == new_variables
    common.assert_no_double_slash(graph)


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
    built = gb.build_placement_graph(layer, activation, bypass, bn, False,
                                     bn_training=training)
    graph = built.graph
    if training:
        rewrite = lambda: tf1_quantize.create_training_graph(  # noqa: E731
            graph, quant_delay=5)
    else:
        rewrite = lambda: tf1_quantize.create_eval_graph(graph)  # noqa: E731
    rewrite()
    expected = _expected_placement(layer, activation, bypass, bn, False)
    assert common.fq_prefixes(graph) == set(expected)
    first = common.graph_bytes(graph)
    variables = common.global_names(graph)
    rewrite()
    assert common.global_names(graph) == variables
    assert common.graph_bytes(graph) == first
    # The layers an earlier rewrite quantized are not reported as float.
    assert tf1_quantize.last_report(graph).float_ops == []


@pytest.mark.parametrize('activation,bypass', [('Relu6', True),
                                               (None, False)])
def test_eval_placement(activation, bypass):
    built = gb.build_placement_graph('conv', activation, bypass, True, False,
                                     bn_training=False)
    graph = built.graph
    tf1_quantize.create_eval_graph(graph)
    expected = _expected_placement('conv', activation, bypass, True, False)
    assert common.fq_prefixes(graph) == set(expected)
    for prefix, (source, consumers, moving_avg, narrow) in expected.items():
        common.assert_quantizer(graph, prefix, source, consumers,
                                moving_avg=moving_avg, is_training=False,
                                narrow_range=narrow)
    common.assert_no_double_slash(graph)


# ---------------------------------------------------------------------------
# Placement, specific graphs (spec 3.4 - 3.8, 7.1, 7.3).


def test_worked_example_training_fused_relu6():
    """Spec 3.9, with quant_delay 0."""
    graph = gb.simple_graph(scope='S')
    tf1_quantize.create_training_graph(graph)
    op = graph.get_operation_by_name
    fq = op('S/weights_quant/' + common.FQ)
    assert fq.inputs[0].op is op('S/mul_fold')
    assert {t.op.name for t in op('S/mul_fold').inputs} == {
        'S/correction_mult', 'S/BatchNorm_Fold/mul'}
    assert common.consumer_names(fq.outputs[0]) == ['S/Conv2D_Fold']
    act = op('S/act_quant/' + common.FQ)
    assert act.inputs[0].op is op('S/Relu6')
    assert op('S/Relu6').inputs[0].op is op('S/add_fold')
    assert common.consumer_names(act.outputs[0]) == ['output']
    assert [n for n in common.consumer_names(op('S/Relu6').outputs[0])
            if not n.startswith('S/act_quant/')] == []
    new = {'S/weights_quant/min', 'S/weights_quant/max', 'S/act_quant/min',
           'S/act_quant/max'} | common.ema_variables('S/act_quant')
    assert new <= common.global_names(graph)
    assert not [n for n in common.global_names(graph)
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
    assert common.fq_prefixes(graph) == {'test/weights_quant', 'test/act_quant'}
    op = graph.get_operation_by_name
    assert [t.op.name for t in op('test/bn_out').inputs] == ['test/add_fold']
    assert op('test/act_quant/' + common.FQ).inputs[0].op is op('test/bn_out')
    # The conv -> Identity -> BN statistics path is no activation.
    assert 'test/BatchNorm/FusedBatchNormV3' in common.consumer_names(
        op('test/Identity').outputs[0])
    assert not [c for c in op('test/Identity').outputs[0].consumers()
                if c.type == common.FQ]


def test_intermediate_activations_quantized():
    graph = gb.activation_graph()
    consumers = {name: common.consumer_names(graph.get_tensor_by_name(name + ':0'))
                 for name in ('test/Mul', 'test/Mul_1', 'test/add')}
    tf1_quantize.experimental_create_training_graph(graph, activation_bits=6,
                                                    symmetric=True)
    assert common.fq_prefixes(graph) == {
        'test/weights_quant', 'test/act_quant',
        'test/Mul/activation_Mul_quant', 'test/Mul_1/activation_Mul_quant',
        'test/add/activation_AddV2_quant'}
    for name in ('test/Mul', 'test/Mul_1', 'test/add'):
        op = graph.get_operation_by_name(name)
        prefix = '%s/activation_%s_quant' % (name, op.type)
        common.assert_quantizer(graph, prefix, name + ':0', consumers[name],
                                moving_avg=True, num_bits=6)
    # The Mul ops read the activation's FakeQuant.
    act = graph.get_tensor_by_name('test/act_quant/%s:0' % common.FQ)
    for name in ('test/Mul', 'test/Mul_1', 'test/add_relu', 'test/sub'):
        assert common.reads(graph.get_operation_by_name(name), act)
    # add_relu feeds only a Relu (fused), sub is not an Add/Mul.
    for name in ('test/add_relu', 'test/sub', 'test/Relu'):
        assert not [c for c in graph.get_tensor_by_name(name + ':0')
                    .consumers() if c.type == common.FQ], name


def test_post_activation_bypass_quantized():
    """testWithPostActivationBypass / testPostActivationBypassQuantized."""
    graph = tf.Graph()
    with graph.as_default():
        x = gb.input_placeholder()
        a = gb.conv_layer(x, 'scope1', 3, gb.Values(0), activation='Relu6')
        with tf.name_scope('scope1/'):
            y = tf.add(a.output, x, name='add')
        b = gb.conv_layer(y, 'scope2', 3, gb.Values(1), activation='Relu')
        tf.reduce_sum(b.output, name='output')
    tf1_quantize.create_training_graph(graph, quant_delay=3)
    assert common.fq_prefixes(graph) == {
        'scope1/weights_quant', 'scope1/act_quant',
        'scope1/post_activation_bypass_quant', 'scope2/weights_quant',
        'scope2/act_quant'}
    common.assert_quantizer(graph, 'scope1/post_activation_bypass_quant',
                            'scope1/add:0', ['scope2/Conv2D'], moving_avg=True,
                            delay=3)
    common.assert_quantizer(graph, 'scope1/act_quant', 'scope1/Relu6:0',
                            ['scope1/add'], moving_avg=True, delay=3)


def test_overlapping_post_activation_bypass():
    """testOverlappingPostActivationBypassQuantized: the Add feeds a Relu6,
    so it gets no FakeQuant of its own."""
    graph = tf.Graph()
    with graph.as_default():
        x = gb.input_placeholder()
        a = gb.conv_layer(x, 'test/test1', 3, gb.Values(0),
                          activation='Relu6')
        b = gb.conv_layer(x, 'test/test2', 3, gb.Values(1), activation=None)
        with tf.name_scope('test/'):
            y = tf.nn.relu6(tf.add(a.output, b.output, name='add'),
                            name='Relu6')
        tf.reduce_sum(y, name='output')
    tf1_quantize.create_training_graph(graph)
    assert common.fq_prefixes(graph) == {
        'test/test1/weights_quant', 'test/test1/act_quant',
        'test/test2/weights_quant', 'test/test2/conv_quant',
        'test/act_quant'}
    add = graph.get_operation_by_name('test/add')
    assert any(t.op.type == common.FQ for t in add.inputs)
    assert common.consumer_names(add.outputs[0]) == ['test/Relu6']
    common.assert_quantizer(graph, 'test/test1/act_quant', 'test/test1/Relu6:0',
                            ['test/add'], moving_avg=True)
    common.assert_quantizer(graph, 'test/act_quant', 'test/Relu6:0', ['output'],
                            moving_avg=True)
    common.assert_quantizer(graph, 'test/test2/conv_quant', 'test/test2/BiasAdd:0',
                            ['test/add'], moving_avg=True)


def test_separable_conv():
    """testInsertQuantOpInSeparableConv2d: depthwise + pointwise conv, bias,
    bypass, Relu6; the depthwise output (no activation) is quantized."""
    graph = tf.Graph()
    values = gb.Values(0)
    with graph.as_default():
        x = gb.input_placeholder()
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
    assert common.fq_prefixes(graph) == {
        sep + '/weights_quant', sep + '/act_quant', 'test/test/weights_quant',
        'test/test/conv_quant', 'test/act_quant'}
    common.assert_quantizer(graph, sep + '/weights_quant',
                            'test/test/depthwise_weights/read:0',
                            [sep + '/depthwise'], moving_avg=False,
                            narrow_range=True, delay=2)
    common.assert_quantizer(graph, sep + '/act_quant', sep + '/depthwise:0', [sep],
                            moving_avg=True, delay=2)
    common.assert_quantizer(graph, 'test/test/weights_quant',
                            'test/test/pointwise_weights/read:0', [sep],
                            moving_avg=False, narrow_range=True, delay=2)
    common.assert_quantizer(graph, 'test/test/conv_quant', 'test/test/BiasAdd:0',
                            ['test/AddV2'], moving_avg=True, delay=2)
    common.assert_quantizer(graph, 'test/act_quant', 'test/Relu6:0', ['output'],
                            moving_avg=True, delay=2)


def test_chained_depthwise_convs_sharing_a_resource_variable():
    """testSeparableConvWithResourceVar: each use of a resource variable has
    its own read, so each conv gets its own weights FakeQuant."""
    graph = tf.Graph()
    with graph.as_default():
        x = gb.input_placeholder()
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
    assert common.fq_prefixes(graph) == {
        'depthwise_conv_1/weights_quant', 'depthwise_conv_1/act_quant',
        'depthwise_conv_2/weights_quant', 'depthwise_conv_2/act_quant'}
    for prefix, layer in (('depthwise_conv_1', conv1_name),
                          ('depthwise_conv_2', conv2_name)):
        fq = graph.get_operation_by_name(prefix + '/weights_quant/' + common.FQ)
        assert fq.inputs[0].op.type == 'ReadVariableOp'
        assert fq.inputs[0].op.inputs[0].op.name == 'depthwise_weights'
        assert common.consumer_names(fq.outputs[0]) == [layer]
    common.assert_quantizer(graph, 'depthwise_conv_1/act_quant', conv1_name + ':0',
                            [conv2_name], moving_avg=True)
    common.assert_quantizer(graph, 'depthwise_conv_2/act_quant',
                            'depthwise_conv_2/add:0', ['output'], moving_avg=True)


def test_batch_norm_forced_updates():
    """testBatchNormForcedUpdates: an Identity between the BN and the
    activation, then a post-activation bypass feeding another conv."""
    graph = tf.Graph()
    with graph.as_default():
        x = gb.input_placeholder()
        layer = gb.conv_layer(x, 'test', 3, gb.Values(0), batch_norm=True,
                              activation=None)
        with tf.name_scope('test/'):
            with tf.control_dependencies(layer.update_ops):
                y = tf.identity(layer.output, name='Identity')
            y = tf.nn.relu6(y, name='Relu6')
            y = tf.add(y, x, name='add')
        second = gb.conv_layer(y, 'second', 3, gb.Values(1))
        tf.reduce_sum(second.output, name='output')
    tf1_quantize.create_training_graph(graph)
    assert common.fq_prefixes(graph) == {
        'test/weights_quant', 'test/act_quant',
        'test/post_activation_bypass_quant', 'second/weights_quant',
        'second/act_quant'}
    add = graph.get_operation_by_name('test/add')
    assert any(t.op.type == common.FQ for t in add.inputs)
    assert any(c.type == common.FQ for c in add.outputs[0].consumers())
    common.assert_quantizer(graph, 'test/act_quant', 'test/Relu6:0', ['test/add'],
                            moving_avg=True)
    assert [t.op.name for t in graph.get_operation_by_name(
        'test/Identity').inputs] == ['test/add_fold']


def test_activation_without_consumers_gets_a_dangling_fake_quant():
    """Spec 3.3 step 8: with no consumers the FakeQuant is still built."""
    graph = tf.Graph()
    with graph.as_default():
        x = gb.input_placeholder()
        gb.conv_layer(x, 'test', 3, gb.Values(0))
    tf1_quantize.create_training_graph(graph)
    assert common.fq_prefixes(graph) == {'test/weights_quant', 'test/act_quant'}
    fq = graph.get_operation_by_name('test/act_quant/' + common.FQ)
    assert fq.inputs[0].name == 'test/Relu6:0'
    assert not fq.outputs[0].consumers()


def test_user_fake_quant_after_reshape_is_respected():
    """testSkipReshapeQuantization (spec 3.7)."""
    for user_fake_quant in (True, False):
        graph = tf.Graph()
        with graph.as_default():
            x = gb.input_placeholder()
            a = gb.conv_layer(x, 'test', 3, gb.Values(0)).output
            r = tf.reshape(a, [2, -1], name='test/Reshape')
            if user_fake_quant:
                r = tf.quantization.fake_quant_with_min_max_args(
                    r, -6.0, 6.0, name='test/user_fq')
            tf.reduce_sum(r, name='output')
        tf1_quantize.create_training_graph(graph)
        if user_fake_quant:
            assert common.fq_prefixes(graph) == {'test/weights_quant'}
            assert graph.get_operation_by_name('test/Reshape').inputs[0] \
                .name == 'test/Relu6:0'
        else:
            assert common.fq_prefixes(graph) == {'test/weights_quant',
                                           'test/act_quant'}
            common.assert_quantizer(graph, 'test/act_quant', 'test/Relu6:0',
                                    ['test/Reshape'], moving_avg=True)


@pytest.mark.parametrize('partitions', [1, 2])
def test_partitioned_weights(partitions):
    graph = tf.Graph()
    with graph.as_default():
        x = gb.input_placeholder()
        with v1.variable_scope(
                'part', partitioner=v1.fixed_size_partitioner(partitions),
                use_resource=False):
            with v1.variable_scope('test'):
                w = v1.get_variable('weights', [3, 3, 3, 4])
                y = tf.nn.relu6(tf.nn.conv2d(x, w, [1, 1, 1, 1], 'SAME',
                                             name='Conv2D'), name='Relu6')
        tf.reduce_sum(y, name='output')
    tf1_quantize.create_training_graph(graph)
    assert common.fq_prefixes(graph) == {'part/test/weights_quant',
                                   'part/test/act_quant'}
    common.assert_quantizer(graph, 'part/test/weights_quant', 'part/test/weights:0',
                            ['part/test/Conv2D'], moving_avg=False,
                            narrow_range=True)


@pytest.mark.parametrize('delay', [None, 1])
def test_shared_weights(delay):
    """testWithSharedWeights: one weights FakeQuant feeds both convs."""
    graph = tf.Graph()
    with graph.as_default():
        x = gb.input_placeholder()
        init = v1.constant_initializer(gb.Values(0).normal([3, 3, 3, 3]))

        def conv(inputs):
            w = v1.get_variable('weights', [3, 3, 3, 3], initializer=init,
                                use_resource=False)
            return tf.nn.relu6(tf.nn.conv2d(inputs, w, [1, 1, 1, 1], 'SAME',
                                            name='Conv2D'), name='Relu6')

        template = v1.make_template('shared', conv)
        tf.reduce_sum(template(template(x)), name='output')
    tf1_quantize.experimental_create_training_graph(graph, quant_delay=delay)
    weight_fqs = [n for n in common.fake_quants(graph) if 'weights_quant' in n]
    assert weight_fqs == ['shared/weights_quant/' + common.FQ]
    common.assert_quantizer(graph, 'shared/weights_quant', 'shared/weights/read:0',
                            ['shared/Conv2D', 'shared_1/Conv2D'], moving_avg=False,
                            narrow_range=True, delay=delay)
    switches = [op.name for op in graph.get_operations()
                if op.type == 'Select' and 'weights_quant' in op.name]
    assert switches == (['shared/weights_quant/delayed_quant']
                        if delay else [])
    assert common.fq_prefixes(graph) == {'shared/weights_quant',
                                   'shared/act_quant', 'shared_1/act_quant'}


def test_weights_quant_reroutes_every_consumer():
    """A regularizer reading the weights reads the quantized weights too
    (spec 3.2 step 1)."""
    graph = tf.Graph()
    with graph.as_default():
        x = gb.input_placeholder()
        layer = gb.conv_layer(x, 'scope1', 3, gb.Values(0), resource=False)
        l2 = tf.nn.l2_loss(layer.variables['weights'], name='l2')
        tf.add(tf.reduce_sum(layer.output), l2, name='output')
    tf1_quantize.create_training_graph(graph)
    common.assert_quantizer(graph, 'scope1/weights_quant', 'scope1/weights/read:0',
                            ['l2', 'scope1/Conv2D'], moving_avg=False,
                            narrow_range=True)


def test_gradient_ops_are_never_rerouted():
    """Ops under `gradients/` (spec 5.3 skipped prefixes) keep reading the
    unquantized tensors, and do not count as unrerouted consumers."""
    graph = tf.Graph()
    with graph.as_default():
        x = gb.input_placeholder()
        layer = gb.conv_layer(x, 'test', 3, gb.Values(0), resource=False)
        output = tf.reduce_sum(layer.output, name='output')
        tf.gradients(output, [x])
    backprop = [op for op in graph.get_operations()
                if op.name.startswith('gradients/')
                and any(t.name == 'test/weights/read:0' for t in op.inputs)]
    assert backprop
    tf1_quantize.create_training_graph(graph)
    common.assert_quantizer(graph, 'test/weights_quant', 'test/weights/read:0',
                            ['test/Conv2D'], moving_avg=False, narrow_range=True)
    for op in backprop:
        assert any(t.name == 'test/weights/read:0' for t in op.inputs)
