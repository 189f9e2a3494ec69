"""Arguments (types, bits, delays) and graph states (finalized, optimizer
already built) the rewrite must refuse cleanly.

What a refusal must do, and the shared graphs: bad_input_graphs.py.
"""

from __future__ import annotations

import pytest
import tensorflow as tf

import builders as gb
from bad_input_graphs import (REWRITES, all_rewrites, fake_quant_ops,
                              quantize_rewrites)
from graph_checks import assert_refused, graph_state

import tf1_quantize

v1 = tf.compat.v1


# ---------------------------------------------------------------------------
# Arguments.


@all_rewrites
@pytest.mark.parametrize('bad', [
    'graph', 42, [], v1.GraphDef(), tf.Graph,
], ids=['str', 'int', 'list', 'GraphDef', 'Graph-class'])
def test_non_graph_argument_raises_type_error(rewrite, bad):
    built = gb.build_contrib_layer(gb.LayerSpec())
    before = graph_state(built.graph)
    with built.graph.as_default():
        with pytest.raises(TypeError) as info:
            rewrite(bad)
    message = str(info.value)
    assert 'tf.Graph' in message and type(bad).__name__ in message, message
    assert graph_state(built.graph) == before, (
        'the default graph changed')


@pytest.mark.parametrize('name', [
    'experimental_create_training_graph', 'experimental_create_eval_graph'])
@pytest.mark.parametrize('argument', ['weight_bits', 'activation_bits'])
@pytest.mark.parametrize('bits', [-8, 0, 1, 17, 32, 8.0, True],
                         ids=lambda b: repr(b))
def test_bits_outside_2_to_16_are_refused(name, argument, bits):
    built = gb.build_contrib_layer(gb.LayerSpec())
    error = assert_refused(built.graph, REWRITES[name], ValueError, argument,
                           '2', '16', **{argument: bits})
    assert repr(bits) in str(error)


@pytest.mark.parametrize('bits', [2, 16])
def test_bits_2_and_16_are_accepted(bits):
    built = gb.build_contrib_layer(gb.LayerSpec())
    tf1_quantize.experimental_create_training_graph(
        built.graph, weight_bits=bits, activation_bits=bits)
    fake_quants = fake_quant_ops(built.graph)
    assert fake_quants
    assert {op.get_attr('num_bits') for op in fake_quants} == {bits}


@pytest.mark.parametrize('name,argument', [
    ('create_training_graph', 'quant_delay'),
    ('experimental_create_training_graph', 'quant_delay'),
    ('experimental_create_training_graph', 'freeze_bn_delay'),
    ('experimental_create_eval_graph', 'quant_delay'),
    ('fold_batch_norms', 'freeze_bn_delay'),
])
@pytest.mark.parametrize('delay', [-1, -1000, 2.5], ids=repr)
def test_negative_or_fractional_delays_are_refused(name, argument, delay):
    built = gb.build_contrib_layer(gb.LayerSpec())
    error = assert_refused(built.graph, REWRITES[name], ValueError, argument,
                           **{argument: delay})
    assert repr(delay) in str(error)


# ---------------------------------------------------------------------------
# Graph states.


@all_rewrites
def test_finalized_graph_is_refused(rewrite):
    built = gb.build_contrib_layer(gb.LayerSpec())
    built.graph.finalize()
    assert_refused(built.graph, rewrite, tf1_quantize.QuantizeError,
                   'finalized')


@quantize_rewrites
@pytest.mark.parametrize('resource', [False, True], ids=['ref', 'resource'])
@pytest.mark.parametrize('optimizer', ['GradientDescent', 'Adam'])
def test_optimizer_ops_already_present_are_refused(rewrite, resource,
                                                   optimizer):
    built = gb.build_contrib_layer(gb.LayerSpec(resource=resource))
    with built.graph.as_default():
        loss = tf.reduce_sum(built.output)
        if optimizer == 'Adam':
            v1.train.AdamOptimizer(1e-3).minimize(loss)
        else:
            v1.train.GradientDescentOptimizer(1e-3).minimize(loss)
    op_type = ('ResourceApply' if resource else 'Apply') + optimizer
    assert op_type in {op.type for op in built.graph.get_operations()}
    assert_refused(built.graph, rewrite, tf1_quantize.QuantizeError,
                   'Training op found in graph', op_type)
