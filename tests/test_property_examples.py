"""Structures the property tests (test_properties.py) found or leave out,
pinned as fast examples of the same checks."""

from __future__ import annotations

import functools

import numpy as np
import pytest

import graph_generator as gen
from property_checks import (FUTURE, check_second_rewrite_is_noop,
                             check_training_graph_matches_original,
                             run_training_probe)
from quantization_bound import check_eval_graph_within_quantization_bound

import tf1_quantize


# ---------------------------------------------------------------------------
# An edge case the generator leaves out: one element per BN channel.


@pytest.mark.parametrize('bn', ['fused', 'unfused'])
@pytest.mark.parametrize('kind', ['fc', 'conv'])
def test_training_rewrite_of_single_element_batch_norm(kind, bn):
    """A training BN over one element per channel (batch-1 MatMul, or a
    batch-1 conv with a 1x1 output): the batch variance is 0 and the BN
    output is beta whatever the input, so every gradient through the
    normalized path is 0. The rewritten graph must agree (finite, same
    numbers), as property 2 requires for larger batches."""
    layer = (gen.Layer(1, 'fc', 3, bn=bn, activation='relu') if kind == 'fc'
             else gen.Layer(0, 'conv', 3, padding='VALID', bn=bn,
                            activation='relu'))
    nodes = (gen.Reshape(0), layer) if kind == 'fc' else (layer,)
    desc = gen.GraphDesc((1, 3, 3, 2), nodes, resource=True, seed=1)
    assert gen.bn_elements_per_channel(desc, desc.layers[0][0]) == 1
    original = run_training_probe(gen.build(desc))
    rewritten_graph = gen.build(desc)
    tf1_quantize.experimental_create_training_graph(
        rewritten_graph.graph, quant_delay=FUTURE, freeze_bn_delay=FUTURE)
    rewritten = run_training_probe(rewritten_graph)
    for name, want in original.gradients.items():
        got = rewritten.gradients[name]
        assert np.all(np.isfinite(got)), 'gradient w.r.t. %s: %s' % (name,
                                                                     got)
        # Both are rounding noise around 0 except for beta.
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4,
                                   err_msg=name)
    for want, got in zip(original.outputs, rewritten.outputs):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------
# A structure found by the properties, pinned as a fast example.


@pytest.mark.parametrize('first,second', [('fused', 'fused'),
                                          ('fused', 'unfused'),
                                          ('unfused', 'unfused')])
def test_chained_standalone_batch_norms(first, second):
    """Two batch norms in a row after no layer (pool -> BN -> BN): property
    2 (training numbers and gradients) and property 3 (the eval graph
    computes no batch-norm op) on the smallest such graph."""
    desc = gen.GraphDesc((2, 5, 5, 2), (
        gen.Pool(0, 'avg', 2, 1),
        gen.Norm(1, first, bn_scale=True),
        gen.Norm(2, second, bn_scale=True),
    ), resource=True, seed=5)
    check_training_graph_matches_original(desc, one_conv_fold=False)
    check_eval_graph_within_quantization_bound(desc)


@pytest.mark.parametrize('layer', ['fc', 'conv'])
def test_forward_fold_skips_a_layer_whose_add_is_a_residual_sum(layer):
    """Found by the soak (seeds 160 and 13796): a BN before a layer whose
    output also feeds a residual Add. The patterns call that Add the layer's
    bias add, but the folded bias cannot go there (the other readers of the
    layer would miss it), so the BN stays affine. Properties 2 and 3."""
    if layer == 'fc':
        nodes = (gen.Norm(0, 'unfused', bn_scale=False),
                 gen.Reshape(1),
                 gen.Layer(2, 'fc', 4),
                 gen.Layer(3, 'fc', 4, bn='unfused', activation='relu',
                           bypass=3))
    else:
        nodes = (gen.Norm(0, 'unfused', bn_scale=False),
                 gen.Layer(1, 'conv', 2, kernel=1, padding='VALID'),
                 gen.Layer(2, 'depthwise', 1, bias=True, activation='relu'),
                 gen.Add(2, 3))
    desc = gen.GraphDesc((2, 3, 5, 2), nodes, resource=True, seed=7)
    check_training_graph_matches_original(desc, one_conv_fold=False)
    check_eval_graph_within_quantization_bound(desc)


def test_ill_conditioned_gradients_are_judged_against_rounding():
    """Found by the soak (seed 20261128): chained 1-channel 1x1 depthwise
    layers, each followed by a training BN. The gradients of L4's depthwise
    weight and BN beta are analytically (almost) 0, so rounding decides
    them: the original's own gradient moves by 8e-5 and 1e-4 when its input
    is scaled by 1 + 2^-20, as much as the rewritten graph differs from it.
    Property 2 must accept that and still check the other gradients."""
    layer = functools.partial(gen.Layer, kind='depthwise', channels=1,
                              kernel=1, bn='fused')
    desc = gen.GraphDesc((2, 7, 7, 1), (
        gen.Norm(0, 'fused', bn_scale=False),
        gen.Add(1, 0),
        gen.Reshape(2, kind='regroup'),
        gen.Layer(0, 'conv', 1, kernel=1, bn='unfused', bn_scale=False,
                  activation='leaky_relu', bypass=3),
        layer(4, bn_scale=False, bypass=4),
        layer(5, bn_scale=False, activation='relu'),
        layer(6, bn_scale=True),
    ), resource=False, seed=4764)
    check_training_graph_matches_original(desc, one_conv_fold=False)


def test_a_layer_added_to_another_layer_is_rewritten_once():
    """Found by the soak (seed 22027): a bare MatMul whose output another
    layer adds to its own. The first rewrite takes the Add for the other
    layer's bias add; the second must not take it for the MatMul's once the
    other layer's weights are quantized. Property 4."""
    desc = gen.GraphDesc((1, 3, 5, 1), (
        gen.Norm(0, 'fused'),
        gen.Reshape(1),
        gen.Layer(2, 'fc', 2, kernel=1),
        gen.Concat(3, 2),
        gen.Layer(4, 'fc', 1, kernel=1, activation='tanh'),
        gen.Concat(5, 3),
        gen.Layer(6, 'fc', 4, kernel=1),
        gen.Layer(7, 'fc', 2, kernel=1, bypass=3),
    ), resource=True, seed=22027)
    check_second_rewrite_is_noop(
        desc, gen._call('create_training_graph', quant_delay=0),
        bn_training=True)


def test_one_conv_fold_after_a_bare_layer_rewrites_twice():
    """Found by the soak (seed 20261129): a one-conv fold with a freeze
    whose layer reads another layer's raw output (no activation, outside the
    quantized scope). The fold's cond puts a Switch on that output; the
    second rewrite must recognise it as the fold's own and change nothing.
    Property 4."""
    desc = gen.GraphDesc((2, 3, 7, 2), (
        gen.Pool(0, 'max', 2, 2),
        gen.Pool(1, 'avg', 2, 1),
        gen.Add(1, 2),
        gen.Reshape(3, kind='flatten'),
        gen.Layer(4, 'fc', 16, kernel=1, activation='leaky_relu', bypass=4),
        gen.Layer(5, 'fc', 16, kernel=1, share=4),
        gen.Layer(6, 'fc', 16, kernel=1, bn='fused', bn_scale=False,
                  activation='relu', bypass=6, share=4),
    ), resource=False, seed=132)
    check_second_rewrite_is_noop(
        desc, gen._call('experimental_create_training_graph',
                        activation_bits=16, freeze_bn_delay=3,
                        one_conv_fold=True, per_channel_weights=True,
                        quant_delay=3, scope='L1/', symmetric=False,
                        weight_bits=13),
        bn_training=True)


def test_one_conv_folds_of_layers_sharing_a_scope_rewrite_twice():
    """Found by the soak (seed 20261204): layers built in one name scope get
    `one_conv_fold`, `one_conv_fold_1`, ... conds; a second rewrite must
    recognise the numbered ones as the fold's own too. Property 4."""
    desc = gen.GraphDesc((2, 3, 3, 2), (
        gen.Norm(0, 'unfused', bn_scale=False),
        gen.Layer(1, 'depthwise', 1, bn='unfused', activation='relu',
                  unscoped=True),
        gen.Layer(2, 'depthwise', 1, activation='relu6', unscoped=True),
        gen.Layer(2, 'depthwise', 1, bn='unfused', activation='relu',
                  unscoped=True),
    ), resource=False, seed=23686)
    check_second_rewrite_is_noop(
        desc, gen._call('fold_batch_norms', freeze_bn_delay=0,
                        is_training=True, one_conv_fold=True),
        bn_training=True)
