"""The opt-in one-convolution training fold (`one_conv_fold=True`).

It must compute exactly what contrib's two-convolution fold computes (the
original batch-statistics BN) while running each layer only once.
"""

import itertools

import numpy as np
import pytest
import tensorflow as tf

import builders as gb
import tf1_quantize

v1 = tf.compat.v1
STEPS = 3


def _specs():
    for layer, bn, resource in itertools.product(
            ('conv', 'depthwise', 'fc', 'atrous'), ('fused', 'unfused'),
            (False, True)):
        yield gb.LayerSpec(layer=layer, bn=bn, resource=resource,
                           activation='relu6')
    for bn in ('fused', 'unfused'):
        yield gb.LayerSpec(bn=bn, scale=False)
        yield gb.LayerSpec(bn=bn, residual=True)


def _build_keras(layer):
    return lambda: gb.build_keras_layer(layer, use_bias=True)


def _train(spec_or_builder, rewrite):
    """Output and gradients on one batch, then the moving statistics after
    STEPS update steps on other batches."""
    built = (spec_or_builder() if callable(spec_or_builder) else
             gb.build_contrib_layer(spec_or_builder))
    head = gb.add_head(built)
    graph = built.graph
    with graph.as_default():
        if rewrite:
            rewrite(graph)
        variables = [built.weights, built.beta, built.gamma]
        grads = v1.gradients(tf.reduce_sum(head), [built.inputs] + [
            v for v in variables if v is not None])
        updates = v1.get_collection(v1.GraphKeys.UPDATE_OPS)
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            feeds = built.feeds(STEPS + 1)
            values = sess.run([head] + grads, feeds[0])
            for feed in feeds[1:]:
                sess.run(updates, feed)
            values += sess.run([built.moving_mean, built.moving_variance])
    return values, graph, updates, head


def _assert_matches(expected, actual):
    for want, got in zip(expected, actual):
        scale = max(np.abs(want).max(), 1e-6)
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-4 * scale)


@pytest.mark.parametrize('spec', list(_specs()), ids=lambda s: s.id)
def test_one_conv_fold_equals_batch_statistics_bn(spec):
    expected, _, _, _ = _train(spec, None)
    actual, _, _, _ = _train(spec, lambda g: tf1_quantize.fold_batch_norms(
        g, is_training=True, one_conv_fold=True))
    _assert_matches(expected, actual)


@pytest.mark.parametrize('layer', ['conv', 'depthwise', 'fc'])
def test_one_conv_fold_of_keras_layers_with_bias(layer):
    """Keras BNs (fused for images, unfused for Dense) after a biased layer."""
    expected, _, _, _ = _train(_build_keras(layer), None)
    actual, _, _, _ = _train(_build_keras(layer),
                             lambda g: tf1_quantize.fold_batch_norms(
                                 g, is_training=True, one_conv_fold=True))
    _assert_matches(expected, actual)


LAYER_TYPES = ('Conv2D', 'DepthwiseConv2dNative', 'MatMul')


def _executed_ops(sess, fetches, feed):
    """The layer ops and the fused batch norms whose kernels ran in one
    step."""
    metadata = v1.RunMetadata()
    sess.run(fetches, feed, run_metadata=metadata, options=v1.RunOptions(
        trace_level=v1.RunOptions.FULL_TRACE))
    executed = {stats.node_name
                for device in metadata.step_stats.dev_stats
                for stats in device.node_stats}
    ops = [op for op in sess.graph.get_operations() if op.name in executed]
    return ([op for op in ops if op.type in LAYER_TYPES],
            [op for op in ops if op.type.startswith('FusedBatchNorm')])


def _producer_through_reshapes(tensor):
    op = tensor.op
    while op.type in ('Reshape', 'BatchToSpaceND'):
        op = op.inputs[0].op
    return op


@pytest.mark.parametrize('spec', list(_specs()), ids=lambda s: s.id)
def test_one_conv_fold_runs_each_layer_once(spec):
    """One layer op runs per step. Before the freeze it reads the rescaled
    weights and the one batch norm that runs normalizes its output; after the
    freeze the other clone runs and no batch norm does."""
    built = gb.build_contrib_layer(spec)
    graph = built.graph
    with graph.as_default():
        tf1_quantize.experimental_create_training_graph(
            graph, quant_delay=5, freeze_bn_delay=2, one_conv_fold=True)
        fetches = [built.output] + built.update_ops
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            feed = built.feeds(1)[0]
            before = _executed_ops(sess, fetches, feed)  # Step 1.
            after = _executed_ops(sess, fetches, feed)
    (batch_layers, batch_norms), (frozen_layers, frozen_norms) = before, after
    assert len(batch_layers) == 1 and len(frozen_layers) == 1
    assert batch_layers != frozen_layers
    assert batch_layers[0].inputs[1].op.name.endswith('unscaled_weights')
    assert len(batch_norms) == 1 and not frozen_norms
    assert _producer_through_reshapes(
        batch_norms[0].inputs[0]) is batch_layers[0]


@pytest.mark.parametrize('layer', ['conv', 'depthwise', 'fc', 'atrous'])
@pytest.mark.parametrize('bn', ['fused', 'unfused'])
def test_one_conv_fold_freezes_like_the_exact_fold(layer, bn):
    """Outputs and gradients (input, weights, gamma, beta) at each step,
    before the freeze and after it, then the moving statistics."""
    spec = gb.LayerSpec(layer=layer, bn=bn, activation='relu')
    results = []
    for one_conv in (False, True):
        built = gb.build_contrib_layer(spec)
        head = gb.add_head(built)
        graph = built.graph
        tf1_quantize.fold_batch_norms(graph, is_training=True,
                                      freeze_bn_delay=2,
                                      one_conv_fold=one_conv)
        with graph.as_default(), v1.Session() as sess:
            grads = v1.gradients(tf.reduce_sum(head), [
                built.inputs, built.weights, built.gamma, built.beta])
            sess.run(v1.global_variables_initializer())
            values = []
            for feed in built.feeds(3):
                values += sess.run([head] + grads + built.update_ops,
                                   feed)[:1 + len(grads)]
            results.append(values + sess.run([built.moving_mean,
                                              built.moving_variance]))
    _assert_matches(results[0], results[1])


@pytest.mark.parametrize('layer', ['conv', 'fc'])
@pytest.mark.parametrize('freeze_bn_delay', [None, 2])
def test_one_conv_fold_is_idempotent(layer, freeze_bn_delay):
    built = gb.build_contrib_layer(gb.LayerSpec(layer=layer))

    def rewrite():
        tf1_quantize.experimental_create_training_graph(
            built.graph, freeze_bn_delay=freeze_bn_delay, one_conv_fold=True)
        return tf1_quantize.last_report(built.graph)

    assert rewrite().folded == [built.layer_op.name]
    before = built.graph.as_graph_def().SerializeToString(deterministic=True)
    second = rewrite()
    assert second.affine == [] and second.float_ops == []
    after = built.graph.as_graph_def().SerializeToString(deterministic=True)
    assert before == after


@pytest.mark.parametrize('layer', ['conv', 'depthwise', 'fc', 'atrous'])
@pytest.mark.parametrize('freeze_bn_delay', [None, 2])
def test_fold_then_quantize_equals_one_rewrite(layer, freeze_bn_delay):
    """Folding first and quantizing afterwards quantizes the folded weights
    that every layer clone reads, leaves nothing float, and makes the clones
    a single rewrite makes."""
    graphs = []
    for separate_fold in (False, True):
        built = gb.build_contrib_layer(gb.LayerSpec(layer=layer))
        if separate_fold:
            tf1_quantize.fold_batch_norms(
                built.graph, is_training=True,
                freeze_bn_delay=freeze_bn_delay, one_conv_fold=True)
        tf1_quantize.experimental_create_training_graph(
            built.graph, freeze_bn_delay=freeze_bn_delay, one_conv_fold=True)
        report = tf1_quantize.last_report(built.graph)
        assert report.float_ops == [] and len(report.fake_quants) == 2
        graphs.append(built.graph)
    clones = [[op for op in graph.get_operations()
               if op.type in LAYER_TYPES and op.name.endswith(('_Fold',
                                                               '_Fold_1'))]
              for graph in graphs]
    assert len(clones[1]) == (1 if freeze_bn_delay is None else 2)
    for clone in clones[1]:
        weights = clone.inputs[1].op
        while weights.type in ('Switch', 'RealDiv'):
            weights = weights.inputs[0].op
        assert weights.type == 'FakeQuantWithMinMaxVars'
    assert ([op.name for op in clones[0]] == [op.name for op in clones[1]])


def test_one_conv_fold_refuses_a_run_time_epsilon_before_changing_anything():
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [2, 4, 4, 3], name='input')
        weights = gb.variable('test/weights',
                              np.ones([3, 3, 3, 4], np.float32))
        y = tf.nn.conv2d(x, weights, 1, 'SAME', name='test/Conv2D')
        mean, variance = tf.nn.moments(y, [0, 1, 2])
        for name, value, statistic in (('moving_mean', 0.0, mean),
                                       ('moving_variance', 1.0, variance)):
            moving = gb.variable('test/BatchNorm/' + name,
                                 np.full(4, value, np.float32),
                                 trainable=False)
            gb.assign_moving_average(moving, statistic, 0.9,
                                     'AssignMovingAvg_' + name)
        epsilon = v1.placeholder_with_default(1e-3, [], name='epsilon')
        output = tf.nn.batch_normalization(
            y, mean, variance, gb.variable('beta', np.zeros(4, np.float32)),
            gb.variable('gamma', np.ones(4, np.float32)), epsilon)
        tf.nn.relu(output, name='test/Relu')
    before = graph.as_graph_def().SerializeToString(deterministic=True)
    with pytest.raises(tf1_quantize.UnsupportedGraphError,
                       match="epsilon computed at run time.*epsilon:0"):
        tf1_quantize.fold_batch_norms(graph, is_training=True,
                                      one_conv_fold=True)
    assert graph.as_graph_def().SerializeToString(deterministic=True) == before
    # The default fold reads the epsilon tensor and folds the same graph.
    report = tf1_quantize.fold_batch_norms(graph, is_training=True)
    assert report.folded == ['test/Conv2D']
