"""The benchmark's graphs: ResNet v1, MobileNetV2 and "model A", built from
contrib-named `tf.compat.v1` layers with seeded random weights."""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

v1 = tf.compat.v1

LAYER_OP_TYPES = ('Conv2D', 'DepthwiseConv2dNative', 'MatMul')
BN_EPSILON = 1e-3
BN_MOMENTUM = 0.997


class _LayerBuilder:
    """Builds contrib-style layers (``weights``, ``BatchNorm/...``).

    Every variable gets an initializer with its own op-level seed, drawn in
    creation order from `seed`, so two builds of the same model (e.g. the
    float and the QAT copy) start from identical weights whatever else is in
    their graphs.

    Args:
        training: fused batch norms in training mode (batch statistics plus
            moving-average updates in UPDATE_OPS) or inference mode.
        seed: base of the per-variable seeds.
    """

    def __init__(self, training: bool, seed: int):
        self.training = training
        self._seed = seed * 100003

    def _next_seed(self) -> int:
        self._seed += 1
        return self._seed

    def weights(self, name: str, shape: Sequence[int],
                fan_in: int) -> tf.Variable:
        """A He-initialized (truncated normal) weight variable."""
        return v1.get_variable(
            name, shape=shape, dtype=tf.float32,
            initializer=v1.truncated_normal_initializer(
                stddev=float(np.sqrt(2.0 / max(fan_in, 1))),
                seed=self._next_seed()))

    def _uniform(self, name, shape, low, high, trainable=True):
        return v1.get_variable(
            name, shape=shape, dtype=tf.float32, trainable=trainable,
            initializer=v1.random_uniform_initializer(
                low, high, seed=self._next_seed()))

    def conv(self, x: tf.Tensor, channels: int, kernel: int, stride: int,
             scope: str, activation: Optional[str] = 'relu') -> tf.Tensor:
        """``scope/weights`` -> Conv2D -> BatchNorm -> activation."""
        with v1.variable_scope(scope):
            in_channels = int(x.shape[-1])
            w = self.weights('weights', [kernel, kernel, in_channels,
                                         channels],
                             kernel * kernel * in_channels)
            y = tf.nn.conv2d(x, w, [1, stride, stride, 1], 'SAME',
                             name='Conv2D')
            return self._finish(y, activation)

    def depthwise(self, x: tf.Tensor, stride: int, scope: str,
                  activation: Optional[str] = 'relu6') -> tf.Tensor:
        """``scope/depthwise_weights`` -> depthwise 3x3 -> BN -> act."""
        with v1.variable_scope(scope):
            in_channels = int(x.shape[-1])
            w = self.weights('depthwise_weights', [3, 3, in_channels, 1], 9)
            y = tf.nn.depthwise_conv2d(x, w, [1, stride, stride, 1], 'SAME',
                                       name='depthwise')
            return self._finish(y, activation)

    def fully_connected(self, x: tf.Tensor, units: int,
                        scope: str) -> tf.Tensor:
        """``scope/weights`` -> MatMul -> ``scope/biases`` BiasAdd."""
        with v1.variable_scope(scope):
            in_units = int(x.shape[-1])
            w = self.weights('weights', [in_units, units], in_units)
            b = self._uniform('biases', [units], -0.1, 0.1)
            return tf.nn.bias_add(tf.matmul(x, w, name='MatMul'), b,
                                  name='BiasAdd')

    def _finish(self, y, activation):
        """BatchNorm, then the activation (None: linear)."""
        y = self.batch_norm(y)
        if activation == 'relu':
            return tf.nn.relu(y, name='Relu')
        if activation == 'relu6':
            return tf.nn.relu6(y, name='Relu6')
        if activation is not None:
            raise ValueError('unknown activation %r' % activation)
        return y

    def batch_norm(self, y: tf.Tensor) -> tf.Tensor:
        """contrib's fused ``BatchNorm`` scope, with its moving averages."""
        channels = int(y.shape[-1])
        with v1.variable_scope('BatchNorm'):
            gamma = self._uniform('gamma', [channels], 0.5, 1.5)
            beta = self._uniform('beta', [channels], -0.2, 0.2)
            moving_mean = self._uniform('moving_mean', [channels], -0.2, 0.2,
                                        trainable=False)
            moving_variance = self._uniform('moving_variance', [channels],
                                            0.5, 1.5, trainable=False)
            if not self.training:
                out, _, _ = v1.nn.fused_batch_norm(
                    y, gamma, beta, mean=moving_mean,
                    variance=moving_variance, epsilon=BN_EPSILON,
                    is_training=False)
                return out
            out, mean, variance = v1.nn.fused_batch_norm(
                y, gamma, beta, epsilon=BN_EPSILON, is_training=True)
            for moving, value, name in ((moving_mean, mean, 'AssignMovingAvg'),
                                        (moving_variance, variance,
                                         'AssignMovingAvg_1')):
                update = tf.__internal__.train.assign_moving_average(
                    moving, value, 1.0 - BN_MOMENTUM, zero_debias=False,
                    name=name)
                v1.add_to_collection(v1.GraphKeys.UPDATE_OPS, update.op)
            return out


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A model of the benchmark.

    Attributes:
        name: key in the results.
        kind: 'resnet', 'mobilenet_v2' or 'model_a'.
        image_size: input height and width.
        batch: batch size of the input placeholder.
        blocks: ResNet bottleneck units per stage, or MobileNetV2 repeats per
            stage (None: the standard 1, 2, 3, 4, 3, 3, 1).
        width: channel multiplier.
        channels: input channels.
        classes: logits.
    """
    name: str
    kind: str
    image_size: int
    batch: int = 1
    blocks: Optional[Tuple[int, ...]] = None
    width: float = 1.0
    channels: int = 3
    classes: int = 1000


@dataclasses.dataclass
class BuiltModel:
    """Handles into a built model graph."""
    graph: tf.Graph
    inputs: tf.Tensor
    labels: Optional[tf.Tensor]
    logits: tf.Tensor
    loss: Optional[tf.Tensor]


def _resnet(b: _LayerBuilder, x: tf.Tensor, spec: ModelSpec) -> tf.Tensor:
    """ResNet v1 with bottleneck units (1x1 - 3x3 - 1x1, projections)."""
    with v1.variable_scope('resnet_v1'):
        y = b.conv(x, _scaled(64, spec.width), 7, 2, 'conv1')
        y = tf.nn.max_pool2d(y, 3, 2, 'SAME', name='pool1')
        for stage, units in enumerate(spec.blocks):
            depth = _scaled(64 * 2 ** stage, spec.width)
            with v1.variable_scope('block%d' % (stage + 1)):
                for unit in range(units):
                    stride = 2 if unit == 0 and stage > 0 else 1
                    with v1.variable_scope('unit_%d/bottleneck_v1' %
                                           (unit + 1)):
                        y = _bottleneck(b, y, depth, stride)
        y = tf.reduce_mean(y, [1, 2], name='pool5')
        return b.fully_connected(y, spec.classes, 'logits')


def _bottleneck(b, x, depth, stride):
    """conv1 (1x1) -> conv2 (3x3, stride) -> conv3 (1x1, 4 * depth), plus
    the shortcut (projected when the shape changes), then ReLU."""
    if stride != 1 or int(x.shape[-1]) != 4 * depth:
        shortcut = b.conv(x, 4 * depth, 1, stride, 'shortcut', activation=None)
    else:
        shortcut = x
    y = b.conv(x, depth, 1, 1, 'conv1')
    y = b.conv(y, depth, 3, stride, 'conv2')
    y = b.conv(y, 4 * depth, 1, 1, 'conv3', activation=None)
    return tf.nn.relu(tf.add(shortcut, y, name='add'), name='Relu')


# (expansion, output channels, repeats, first stride) of MobileNetV2.
_MOBILENET_V2_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2),
                        (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                        (6, 320, 1, 1))


def _mobilenet_v2(b: _LayerBuilder, x: tf.Tensor,
                  spec: ModelSpec) -> tf.Tensor:
    """MobileNetV2: expand 1x1, depthwise 3x3, linear project 1x1."""
    def width(channels):
        return max(8, int(round(channels * spec.width / 8.0)) * 8)

    repeats = spec.blocks or tuple(s[2] for s in _MOBILENET_V2_STAGES)
    with v1.variable_scope('MobilenetV2'):
        y = b.conv(x, width(32), 3, 2, 'Conv', activation='relu6')
        index = 0
        for (expansion, channels, _, stride), count in zip(
                _MOBILENET_V2_STAGES, repeats):
            for i in range(count):
                scope = ('expanded_conv_%d' % index if index
                         else 'expanded_conv')
                y = _inverted_residual(b, y, expansion, width(channels),
                                       stride if i == 0 else 1, scope)
                index += 1
        # The last conv keeps 1280 channels for widths below 1 (the paper).
        y = b.conv(y, max(1280, width(1280)), 1, 1, 'Conv_1',
                   activation='relu6')
        y = tf.reduce_mean(y, [1, 2], name='AvgPool')
        return b.fully_connected(y, spec.classes, 'Logits')


def _inverted_residual(b, x, expansion, channels, stride, scope):
    with v1.variable_scope(scope):
        in_channels = int(x.shape[-1])
        y = x
        if expansion != 1:
            y = b.conv(y, in_channels * expansion, 1, 1, 'expand',
                       activation='relu6')
        y = b.depthwise(y, stride, 'depthwise')
        y = b.conv(y, channels, 1, 1, 'project', activation=None)
        if stride == 1 and in_channels == channels:
            y = tf.add(x, y, name='add')
        return y


def _model_a(b: _LayerBuilder, x: tf.Tensor, spec: ModelSpec) -> tf.Tensor:
    """Conv2D(16, 3) -> BN -> ReLU -> depthwise(3) -> BN -> ReLU ->
    Conv2D(32, 1) -> BN -> ReLU6 -> global average pool -> Dense."""
    with v1.variable_scope('model_a'):
        y = b.conv(x, 16, 3, 1, 'conv1', activation='relu')
        y = b.depthwise(y, 1, 'depthwise', activation='relu')
        y = b.conv(y, 32, 1, 1, 'conv2', activation='relu6')
        y = tf.reduce_mean(y, [1, 2], name='pool')
        return b.fully_connected(y, spec.classes, 'logits')


def _scaled(channels: int, width: float) -> int:
    return max(8, int(channels * width))


_BODIES: Dict[str, Callable] = {
    'resnet': _resnet,
    'mobilenet_v2': _mobilenet_v2,
    'model_a': _model_a,
}


def build_model(spec: ModelSpec, training: bool, seed: int,
                graph: Optional[tf.Graph] = None) -> BuiltModel:
    """Builds `spec` in a new graph: inputs, logits and (training) loss.

    Args:
        spec: the model.
        training: batch norms in training mode, plus labels and a softmax
            cross-entropy loss; otherwise inference mode, logits only.
        seed: seed of the initial values.
        graph: the graph to build in; a new one if None.

    Returns:
        The BuiltModel.
    """
    graph = graph or tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [spec.batch, spec.image_size,
                                        spec.image_size, spec.channels],
                           name='input')
        logits = _BODIES[spec.kind](_LayerBuilder(training, seed), x, spec)
        labels = loss = None
        if training:
            labels = v1.placeholder(tf.int32, [spec.batch], name='labels')
            loss = v1.losses.sparse_softmax_cross_entropy(labels, logits)
    return BuiltModel(graph, x, labels, logits, loss)


def count_layer_ops(graph: tf.Graph) -> int:
    """Conv2D / DepthwiseConv2dNative / MatMul ops of `graph`."""
    return sum(op.type in LAYER_OP_TYPES for op in graph.get_operations())
