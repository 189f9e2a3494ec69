"""Property 3 of test_properties.py: the 16-bit eval graph stays within a
quantization error bound derived from the original graph's values."""

from __future__ import annotations

from typing import Dict, List

import numpy as np
import tensorflow as tf

import graph_generator as gen
import tf1_quantize
from property_checks import explain, max_abs

v1 = tf.compat.v1

EVAL_BITS = 16


# ---------------------------------------------------------------------------
# Property 3: 16-bit eval graph within a derived quantization error bound.


def _half_step(low: float, high: float, levels: int) -> float:
    """Half the step of a quantizer whose range is [low, high] widened to
    contain 0 (the rewrite's asymmetric ranges always do)."""
    return 0.5 * (max(high, 0.0) - min(low, 0.0)) / levels


def _bn_multiplier(values: dict, node: gen.Layer):
    """gamma / sqrt(moving_variance + eps), the inference-BN scale."""
    gamma = values['gamma'] if values['gamma'] is not None else 1.0
    return gamma / np.sqrt(values['moving_variance'] + gen.EPSILON)


def _folded_weights(values: dict, node: gen.Layer) -> np.ndarray:
    weights = values['weights']
    if not node.bn:
        return weights
    multiplier = _bn_multiplier(values, node)
    if node.kind in ('depthwise', 'atrous'):
        return weights * multiplier.reshape(weights.shape[2:])
    return weights * multiplier


def _l1_gain(weights: np.ndarray, kind: str) -> float:
    """The infinity-norm gain of the linear layer: the largest sum of |w|
    feeding one output element (exact for VALID, an upper bound for SAME
    padding, strides, rate-2 dilation)."""
    axes = {'fc': (0,), 'conv': (0, 1, 2)}.get(kind, (0, 1))
    return float(np.max(np.sum(np.abs(weights), axis=axes)))


def quantization_error_bounds(desc: gen.GraphDesc, measured: dict,
                              bits: int = EVAL_BITS) -> List[float]:
    """Bounds on max|eval output - original output| for every tensor.

    Derivation. A FakeQuant with range [m, M] (0 in it), n levels and step
    s = (M - m) / (n - 1) nudges the range by less than s / 2 so that 0 is
    on the grid, then rounds to the grid: every x in [m, M] moves by at most
    s / 2. The ranges are learned on the very batch being evaluated, so
    every quantized value is in its range. With b = 16 bits, activations
    have n - 1 = 2^b - 1 steps, weights (narrow range) 2^b - 2.

    Write E(t) for a bound on max|t_eval - t_orig| and A(t) = max|t_orig|.
    Then |t_eval| <= A(t) + E(t), and the range a quantizer of t learns is
    the original range widened by E(t) on both sides, giving a half step
    q(t) = (range(t) + 2 E(t)) / (2 (2^b - 1)) (times 1.001 for the
    rounding of the zero-debiased moving average). Walking the graph:

    * input: E = 0 (never quantized).
    * layer y = W * x (+ bias): the eval graph uses the folded weights
      W_f = W * gamma / sqrt(moving_var + eps) quantized to W_q with
      |W_q - W_f| <= d_w = s_w / 2 elementwise. With k = fan-in (the number
      of input elements one output reads) and G = max over outputs of the
      sum of |W_f| feeding it:
      |W_q x_q - W_f x| <= |W_q (x_q - x)| + |(W_q - W_f) x|
                        <= (G + k d_w) E(x) + k d_w (A(x) + E(x)).
      A weight variable read by two layers may be quantized twice (once raw
      by the unfolded reader, then folded), adding d_raw * max|multiplier|
      to d_w. Biases and BN offsets are exact.
    * every tensor the rewrite may quantize adds its q(t): the layer output
      after bias/BN (final-layer act_quant, conv_quant before a bypass),
      the bypass sum, the activation output, Add outputs. Tensors that are
      not quantized (Concat, pools) get q(t) too: harmless over-counting.
    * Relu, Relu6, Tanh, LeakyRelu(0.2), Identity, MaxPool, AvgPool, Concat
      and Reshape are 1-Lipschitz in the max norm; an Add sums the bounds of
      its inputs.
    * a batch norm after no layer (`Norm`) becomes y = x * m + o with
      m = gamma / sqrt(moving_var + eps) quantized like weights (d_m),
      o = beta - moving_mean * m quantized with activation bits (d_o), the
      product and the sum quantized like activations:
      E(y) <= (max|m| + d_m) E(x) + (A(x) + E(x)) d_m + q(x m) + d_o + q(y).

    The sum over quantizers of their half steps, each amplified by the gains
    G of the layers below it, is what this computes. Float32 rounding of the
    folded arithmetic is added by the caller (1e-5 x magnitude).

    Args:
        desc: the graph description.
        measured: from the original inference graph: 'tensors' (value of
            every tensor), and per layer node index the values 'biased',
            'pre_activation', 'weights', 'gamma', 'moving_variance'.
        bits: weight and activation bits.

    Returns:
        E for every tensor of the description (index 0 is the input).
    """
    act_levels, weight_levels = 2**bits - 1, 2**bits - 2
    shapes = desc.shapes()
    tensors = measured['tensors']
    shared = {n.share for _, n in desc.layers if n.share is not None}
    shared |= {k for k, n in desc.layers if n.share is not None}

    def q(value, error):
        value = np.asarray(value)
        return 1.001 * _half_step(float(value.min()) - error,
                                  float(value.max()) + error, act_levels)

    bounds = [0.0]
    for k, node in enumerate(desc.nodes):
        out = tensors[k + 1]
        if isinstance(node, gen.Layer):
            values = measured[k]
            x_err = bounds[node.src]
            x_mag = max_abs(tensors[node.src]) + x_err
            folded = _folded_weights(values, node)
            d_w = 0.0
            if not node.const_weights:
                d_w = 1.001 * _half_step(folded.min(), folded.max(),
                                         weight_levels)
                if k in shared or node.share is not None:
                    raw = values['weights']
                    gain = (np.max(np.abs(_bn_multiplier(values, node)))
                            if node.bn else 1.0)
                    d_w += 1.001 * gain * _half_step(raw.min(), raw.max(),
                                                     weight_levels)
            fan = gen.fan_in(node, shapes[node.src])
            err = ((_l1_gain(folded, node.kind) + fan * d_w) * x_err +
                   fan * d_w * x_mag)
            err += q(values['biased'], err)
            if node.bypass is not None:
                err += bounds[node.bypass]
                err += q(values['pre_activation'], err)
            if node.activation is not None:
                err += q(out, err)
        elif isinstance(node, gen.Norm):
            # Standalone BN: y = q(q(x * m_q) + o_q), m = gamma / sigma,
            # o = beta - mean * m, m quantized like weights, o like a
            # constant activation (LastValue), both products like
            # activations: |x_q m_q - x m| <= max|m_q| E(x) + |x_q| d_m.
            values = measured[k]
            x = tensors[node.src]
            x_err = bounds[node.src]
            multiplier = _bn_multiplier(values, node)
            offset = values['beta'] - values['moving_mean'] * multiplier
            d_m = 1.001 * _half_step(multiplier.min(), multiplier.max(),
                                     weight_levels)
            d_o = 1.001 * _half_step(offset.min(), offset.max(), act_levels)
            err = ((np.max(np.abs(multiplier)) + d_m) * x_err +
                   (max_abs(x) + x_err) * d_m)
            err += q(x * multiplier, err)
            err += d_o
            err += q(out, err)
        elif isinstance(node, gen.Add):
            err = bounds[node.a] + bounds[node.b]
            err += q(out, err)
        elif isinstance(node, (gen.Concat, gen.Pool)):
            srcs = gen.node_inputs(node)
            err = max(bounds[i] for i in srcs)
            err += q(out, err)
        elif isinstance(node, gen.Chain):
            # s <- q(s + q(0.5 s)), each level.
            err, value = bounds[node.src], np.asarray(tensors[node.src])
            for _ in range(node.depth):
                half = 0.5 * err + q(0.5 * value, 0.5 * err)
                value = 1.5 * value
                err = err + half + q(value, err + half)
        elif isinstance(node, gen.Cond):
            # Relu (maybe quantized), then a float layer: its L1 gain.
            x = np.maximum(tensors[node.src], 0.0)
            weights, _ = gen.cond_layer_values(k, shapes[node.src][-1])
            err = (np.max(np.sum(np.abs(weights), axis=0)) *
                   (bounds[node.src] + q(x, bounds[node.src])))
        else:
            err = bounds[node.src]
        bounds.append(err)
    return bounds


def _measure(built: gen.BuiltGraph) -> dict:
    """Every tensor and per-layer values of an unrewritten graph."""
    fetch = {'tensors': built.tensors}
    for k, handles in built.layers.items():
        if isinstance(handles, gen.NormHandles):
            fetch[k] = {n: getattr(handles, n) for n in (
                'gamma', 'beta', 'moving_mean', 'moving_variance')}
            fetch[k] = {n: t for n, t in fetch[k].items() if t is not None}
            continue
        fetch[k] = {
            'biased': handles.biased,
            'pre_activation': handles.pre_activation,
            'weights': handles.weights,
            'gamma': handles.gamma,
            'moving_variance': handles.moving_variance,
        }
        fetch[k] = {n: t for n, t in fetch[k].items() if t is not None}
    with built.graph.as_default():
        init = v1.global_variables_initializer()
    with gen.session(built.graph) as sess:
        sess.run(init)
        measured = sess.run(fetch, built.feed)
    for k in built.layers:
        measured[k].setdefault('gamma', None)
        measured[k].setdefault('moving_variance', None)
    return measured


def _build_16bit(desc: gen.GraphDesc, rewrite):
    """The inference-BN graph of `desc` after the 16-bit `rewrite`; returns
    (built graph, its global variables, their initializer)."""
    built = gen.build(desc, bn_training=False)
    rewrite(built.graph, weight_bits=EVAL_BITS, activation_bits=EVAL_BITS)
    with built.graph.as_default():
        return (built, v1.global_variables(),
                v1.global_variables_initializer())


def _learn_ranges(desc: gen.GraphDesc) -> Dict[str, np.ndarray]:
    """Global variable values after one 16-bit training step.

    The training rewrite (of the inference-BN graph, quant_delay=0) sets
    every weight range to the exact weight range and, thanks to the
    zero-debiased moving average, every activation range to the exact range
    observed on the batch.
    """
    built, variables, init = _build_16bit(
        desc, tf1_quantize.experimental_create_training_graph)
    with gen.session(built.graph) as sess:
        sess.run(init)
        sess.run(built.outputs(), built.feed)
        return sess.run({v.op.name: v for v in variables})


_BN_TYPES = ('FusedBatchNorm', 'FusedBatchNormV2', 'FusedBatchNormV3')
_UNFUSED_BN = 'BatchNorm/batchnorm_1/add_1'


def _upstream_ops(tensors) -> List[tf.Operation]:
    """Every op the given tensors depend on (data and control inputs)."""
    seen, stack = {}, [t.op for t in tensors]
    while stack:
        op = stack.pop()
        if op.name in seen:
            continue
        seen[op.name] = op
        stack.extend(t.op for t in op.inputs)
        stack.extend(op.control_inputs)
    return list(seen.values())


def check_eval_graph_within_quantization_bound(desc: gen.GraphDesc) -> None:
    """`experimental_create_eval_graph(weight_bits=16, activation_bits=16)`
    of the inference-BN graph, with every range variable set to the range
    observed on the batch (learned by one training step of a 16-bit training
    rewrite), matches the original inference graph within
    ``quantization_error_bounds`` (see its docstring for the derivation)
    plus 1e-5 x max|output| for float32 rounding. Also, the outputs no
    longer depend on any batch-norm op: every inference batch norm was
    folded into its layer or replaced by its quantized affine form.
    """
    original = gen.build(desc, bn_training=False)
    measured = _measure(original)
    learned = _learn_ranges(desc)
    rewritten, variables, init = _build_16bit(
        desc, tf1_quantize.experimental_create_eval_graph)
    missing = [v.op.name for v in variables if v.op.name not in learned]
    assert not missing, explain(desc, 'eval variables not in the training '
                                 'graph: %s' % missing)
    with gen.session(rewritten.graph) as sess:
        sess.run(init)
        for variable in variables:
            variable.load(learned[variable.op.name], sess)
        outputs = sess.run(rewritten.outputs(), rewritten.feed)
    live_bns = [op.name for op in _upstream_ops(rewritten.outputs())
                if op.type in _BN_TYPES or op.name.endswith(_UNFUSED_BN)]
    assert not live_bns, explain(desc, 'batch norms still computed by the '
                                  'eval graph: %s' % live_bns)
    bounds = quantization_error_bounds(desc, measured)
    for index, (leaf, got) in enumerate(zip(original.leaves, outputs)):
        want = measured['tensors'][leaf]
        tol = bounds[leaf] + 1e-5 * max(max_abs(want), 1e-6)
        err = max_abs(got - want)
        assert err <= tol, explain(
            desc, 'output %d (t%d): max error %.3g > bound %.3g '
            '(max|output| %.3g)' % (index, leaf, err, tol, max_abs(want)))
