"""Graph builders and numpy references for the quantization-placement tests.

Complements ``graph_builders`` (owned by the folding tests): the
placement graphs of ``test_quantize_placement.py`` reuse
``graph_builders.build_contrib_layer`` and only add what it lacks (an
``Identity`` activation, a graph output); ``conv_layer`` builds
contrib-named layers under any scope (e.g. ``MobilenetV1/Conv2d_0``) for the
multi-layer graphs of the original ``quantize_test.py`` /
``quantize_graph_test.py`` and the checkpoint tests.

Importable as ``quantize_builders`` (tests/ on ``sys.path``, see conftest.py).
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional

import numpy as np
import tensorflow as tf

import graph_builders as gb

v1 = tf.compat.v1

EPSILON = 1e-3
MOMENTUM = 0.9
EMA_DECAY = 0.999  # The decay every activation quantizer uses (spec 4.6).

ACTIVATIONS = ('Relu', 'Relu6', 'Identity', None)


# ---------------------------------------------------------------------------
# The parameterized placement graph (spec 7.4), on top of graph_builders.


@dataclasses.dataclass
class PlacementGraph:
    """A ``graph_builders`` layer plus an optional Identity activation.

    Attributes:
        built: the ``graph_builders.BuiltLayer``.
        graph: its graph.
        activation_op: name of the activation op (``test/Relu``,
            ``test/Relu6``, ``test/Identity``) or None.
        block_output: the block's last tensor (after bypass and activation).
        output: ``output``, a Sum over `block_output` (the graph's consumer).
    """
    built: gb.BuiltLayer
    graph: tf.Graph
    activation_op: Optional[str]
    block_output: tf.Tensor
    output: tf.Tensor


def build_placement_graph(layer: str, activation: Optional[str],
                          bypass: bool, fused_bn: bool, resource: bool,
                          bn_training: bool = True,
                          seed: int = 0) -> PlacementGraph:
    """contrib-named layer -> [fused BN | BiasAdd] -> [bypass] -> activation.

    Layout (from ``graph_builders.build_contrib_layer``): layer scope ``test``
    (``test/test`` with a bypass), bypass ``test/AddV2``, activation
    ``test/<Relu|Relu6|Identity>``, then ``output`` = ``reduce_sum`` (a
    consumer that is neither an activation nor an intermediate op).
    """
    lower = {'Relu': 'relu', 'Relu6': 'relu6'}
    spec = gb.LayerSpec(layer=layer, bn='fused' if fused_bn else None,
                        resource=resource,
                        activation=lower.get(activation), residual=bypass,
                        bn_training=bn_training, seed=seed)
    built = gb.build_contrib_layer(spec)
    y = built.output
    with built.graph.as_default():
        if activation == 'Identity':
            with tf.name_scope('test/'):
                y = tf.identity(y, name='Identity')
        output = tf.reduce_sum(y, name='output')
    return PlacementGraph(
        built=built, graph=built.graph,
        activation_op=None if activation is None else 'test/' + activation,
        block_output=y, output=output)


# ---------------------------------------------------------------------------
# contrib-named layers under any scope.


@dataclasses.dataclass
class ConvLayer:
    """Handles into one ``conv_layer``.

    Attributes:
        scope: the layer scope (``<scope>/Conv2D`` is the layer op).
        output: the layer's output (after the activation).
        pre_activation: the BN / BiasAdd output.
        variables: short name -> variable (``weights``, ``biases`` or
            ``gamma``/``beta``/``moving_mean``/``moving_variance``).
        update_ops: BN moving-average updates (empty for inference BN).
    """
    scope: str
    output: tf.Tensor
    pre_activation: tf.Tensor
    variables: Dict[str, tf.Variable]
    update_ops: List[tf.Operation]


def conv_layer(x: tf.Tensor, scope: str, channels: int, values: gb.Values, *,
               batch_norm: bool = False, bn_training: bool = True,
               activation: Optional[str] = 'Relu6',
               resource: Optional[bool] = None) -> ConvLayer:
    """A contrib ``conv2d`` (3x3, SAME) with a fused BN or biases.

    Names: ``<scope>/weights``, ``<scope>/Conv2D``, ``<scope>/biases`` +
    ``<scope>/BiasAdd`` or ``<scope>/BatchNorm/{gamma,beta,moving_mean,
    moving_variance}`` + ``<scope>/BatchNorm/FusedBatchNormV3`` (+ the
    ``AssignMovingAvg{,_1}`` updates in training mode), then
    ``<scope>/<activation>``. Must be called at the root name scope.
    """
    variables = {}
    updates = []
    with v1.variable_scope(scope, use_resource=resource):
        weights = gb.variable('weights',
                            values.normal([3, 3, x.shape[-1], channels]))
        variables['weights'] = weights
        y = tf.nn.conv2d(x, weights, [1, 1, 1, 1], 'SAME', name='Conv2D')
        if batch_norm:
            with v1.variable_scope('BatchNorm'):
                gamma = gb.variable('gamma', values.positive([channels]))
                beta = gb.variable('beta', values.normal([channels]))
                mean = gb.variable('moving_mean', values.normal([channels]),
                                 trainable=False)
                var = gb.variable('moving_variance',
                                values.positive([channels]),
                                trainable=False)
                variables.update(gamma=gamma, beta=beta, moving_mean=mean,
                                 moving_variance=var)
                if bn_training:
                    y, batch_mean, batch_var = v1.nn.fused_batch_norm(
                        y, gamma, beta, epsilon=EPSILON, is_training=True)
                    updates = [
                        gb.assign_moving_average(mean, batch_mean, MOMENTUM,
                                                 'AssignMovingAvg'),
                        gb.assign_moving_average(var, batch_var, MOMENTUM,
                                                 'AssignMovingAvg_1'),
                    ]
                    for op in updates:
                        v1.add_to_collection(v1.GraphKeys.UPDATE_OPS, op)
                else:
                    y, _, _ = v1.nn.fused_batch_norm(
                        y, gamma, beta, mean=mean, variance=var,
                        epsilon=EPSILON, is_training=False)
        else:
            biases = gb.variable('biases', values.normal([channels]))
            variables['biases'] = biases
            y = tf.nn.bias_add(y, biases, name='BiasAdd')
        pre_activation = y
        if activation == 'Relu6':
            y = tf.nn.relu6(y, name='Relu6')
        elif activation == 'Relu':
            y = tf.nn.relu(y, name='Relu')
        elif activation == 'Identity':
            y = tf.identity(y, name='Identity')
        elif activation is not None:
            raise ValueError(activation)
    return ConvLayer(scope=scope, output=y, pre_activation=pre_activation,
                     variables=variables, update_ops=updates)


IMAGE_SHAPE = (2, 4, 4, 3)


def input_placeholder(channels: int = 3) -> tf.Tensor:
    return v1.placeholder(tf.float32, IMAGE_SHAPE[:3] + (channels,),
                          name='input')


def random_feeds(placeholder: tf.Tensor, count: int, seed: int = 1):
    """`count` different input batches (normal, a few values large)."""
    rng = np.random.RandomState(seed)
    shape = placeholder.shape.as_list()
    return [{placeholder: (1.5 * rng.randn(*shape)).astype(np.float32)}
            for _ in range(count)]


# ---------------------------------------------------------------------------
# numpy references (spec 4).


def numpy_fake_quant(x, range_min, range_max, num_bits: int,
                     narrow_range: bool) -> np.ndarray:
    """FakeQuantWithMinMaxVars as the TF kernel computes it (spec 4.3).

    The nudged range follows the spec; the quantization step is computed in
    float32 with the kernel's multiply-by-inverse-scale so rounding ties
    land where TensorFlow puts them.
    """
    x = np.asarray(x, np.float32)
    range_min = np.float32(range_min)
    range_max = np.float32(range_max)
    quant_min = np.float32(1 if narrow_range else 0)
    quant_max = np.float32(2**num_bits - 1)
    scale = np.float32((range_max - range_min) / (quant_max - quant_min))
    inv_scale = np.float32(np.float32(1.0) / scale)
    zero_point_from_min = np.float32(quant_min - range_min / scale)
    if zero_point_from_min < quant_min:
        zero_point = quant_min
    elif zero_point_from_min > quant_max:
        zero_point = quant_max
    else:
        zero_point = np.float32(np.round(zero_point_from_min))
    nudged_min = np.float32((quant_min - zero_point) * scale)
    nudged_max = np.float32((quant_max - zero_point) * scale)
    clamped = np.minimum(np.maximum(x, nudged_min), nudged_max)
    shifted = (clamped - nudged_min).astype(np.float32)
    steps = np.floor(shifted * inv_scale + np.float32(0.5)).astype(np.float32)
    return (steps * scale + nudged_min).astype(np.float32)


def batch_range(x, num_bits: int, narrow_range: bool, symmetric: bool):
    """The per-batch (min, max) the quantizers learn from (spec 4)."""
    batch_min = float(np.min(x))
    batch_max = float(np.max(x))
    if not symmetric:
        return min(batch_min, 0.0), max(batch_max, 0.0)
    ratio = -1.0 if narrow_range else -(2**num_bits - 2) / 2**num_bits
    return (min(batch_min, batch_max / ratio),
            max(batch_max, batch_min * ratio))


class EmaReference:
    """Zero-debiased moving average of TF's assign_moving_average (spec 4.2).

    `biased` and `local_step` start from the given (checkpointed) values.
    """

    def __init__(self, decay: float = EMA_DECAY, biased: float = 0.0,
                 local_step: float = 0.0):
        # TensorFlow holds the decay as a float32 tensor; with hundreds of
        # steps, decay**step is visibly off if 0.999 is taken exactly.
        self.decay = float(np.float32(decay))
        self.biased = biased
        self.local_step = local_step

    def update(self, value: float) -> float:
        self.biased -= (self.biased - value) * (1.0 - self.decay)
        self.local_step += 1.0
        return self.value

    @property
    def value(self) -> float:
        return self.biased / (1.0 - self.decay**self.local_step)
