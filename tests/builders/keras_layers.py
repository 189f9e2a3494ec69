"""The contrib test layer block built with Keras 2 layers or
``tf.compat.v1.layers`` instead of raw ops, in graph mode."""

from __future__ import annotations

from typing import List, Optional

import tensorflow as tf

from builders.contrib import (FC_SHAPE, IMAGE_SHAPE, LAYER_OP_TYPES,
                              BuiltLayer)
from builders.ops import (EPSILON, MOMENTUM, TF_VERSION, Values,
                          find_op_upstream, keras_module)

v1 = tf.compat.v1

# tf.compat.v1.layers needs Keras 2, i.e. TF <= 2.15.
V1_LAYERS_AVAILABLE = TF_VERSION < (2, 16)
V1_LAYERS_SKIP_REASON = 'tf.compat.v1.layers needs Keras 2 (TF<=2.15)'


def _keras_layer(keras, layer, values, in_channels, use_bias):
    """Returns (keras layer, number of output channels)."""
    const = v1.constant_initializer
    if layer == 'conv':
        kernel = const(values.normal([3, 3, in_channels, 4]))
        return keras.layers.Conv2D(4, 3, padding='same', use_bias=use_bias,
                                   kernel_initializer=kernel), 4
    if layer == 'depthwise':
        kernel = const(values.normal([3, 3, in_channels, 2]))
        return keras.layers.DepthwiseConv2D(
            3, padding='same', depth_multiplier=2, use_bias=use_bias,
            depthwise_initializer=kernel), 2 * in_channels
    if layer == 'fc':
        kernel = const(values.normal([in_channels, 5]))
        return keras.layers.Dense(5, use_bias=use_bias,
                                  kernel_initializer=kernel), 5
    raise ValueError(f'unknown keras layer {layer!r}')


def build_keras_layer(layer: str = 'conv', training: bool = True,
                      activation: Optional[str] = 'relu', seed: int = 0,
                      use_bias: bool = False,
                      graph: Optional[tf.Graph] = None) -> BuiltLayer:
    """Keras 2 Conv2D / DepthwiseConv2D / Dense + BatchNormalization (+ReLU).

    The layers are called on a placeholder in graph mode with the Python
    bool `training`. The conv and depthwise BNs are fused (FusedBatchNormV3,
    scope ``batch_normalization``); the Dense BN (2-D input) is Keras'
    unfused ``batch_normalization/batchnorm/...`` subgraph. Both update the
    moving averages with ``AssignMovingAvg{,_1}`` Sub/Mul subgraphs.

    Args:
        layer: 'conv', 'depthwise' or 'fc'.
        training: the BN's training argument.
        activation: 'relu' (a ReLU layer) or None.
        seed: seed of all initial values.
        use_bias: whether the layer has a bias (added before the BN).
        graph: the graph to build in (a new one if None).

    Returns:
        The BuiltLayer (spec None, scope = the layer op's name scope).
    """
    keras = keras_module()
    graph = graph or tf.Graph()
    values = Values(seed)
    const = v1.constant_initializer
    shape = FC_SHAPE if layer == 'fc' else IMAGE_SHAPE
    with graph.as_default():
        x = v1.placeholder(tf.float32, shape, name='input')
        lay, channels = _keras_layer(keras, layer, values, shape[-1],
                                     use_bias)
        if use_bias:
            lay.bias_initializer = const(values.normal([channels]))
        pre_bn = lay(x)
        bn = keras.layers.BatchNormalization(
            epsilon=EPSILON, momentum=MOMENTUM,
            gamma_initializer=const(values.positive([channels])),
            beta_initializer=const(values.normal([channels])),
            moving_mean_initializer=const(values.normal([channels])),
            moving_variance_initializer=const(values.positive([channels])))
        bn_output = bn(pre_bn, training=training)
        y = bn_output
        if activation == 'relu':
            y = keras.layers.ReLU()(y)
        elif activation is not None:
            raise ValueError(f'keras builder: relu or None, not {activation}')
        layer_op = find_op_upstream(pre_bn, LAYER_OP_TYPES[layer])
    bn_scope = bn_output.op.name.split('/')[0]
    weights = lay.depthwise_kernel if layer == 'depthwise' else lay.kernel
    return BuiltLayer(
        graph=graph, inputs=x, output=y, layer_op=layer_op, pre_bn=pre_bn,
        bn_op=_bn_op_of(bn_output), bn_output=bn_output, weights=weights,
        gamma=bn.gamma, beta=bn.beta, moving_mean=bn.moving_mean,
        moving_variance=bn.moving_variance, epsilon=EPSILON,
        update_ops=_assign_ops_under(graph, bn_scope),
        scope=layer_op.name.rpartition('/')[0], activation=activation)


def _assign_ops_under(graph: tf.Graph, scope: str) -> List[tf.Operation]:
    """The moving-average assign ops in name scope `scope`."""
    return [op for op in graph.get_operations()
            if op.type in ('AssignSub', 'AssignSubVariableOp')
            and op.name.startswith(scope + '/')]


def _bn_op_of(bn_output: tf.Tensor) -> tf.Operation:
    """The FusedBatchNormV3 op producing `bn_output`, else its own op."""
    try:
        return find_op_upstream(bn_output, 'FusedBatchNormV3')
    except ValueError:
        return bn_output.op


# ---------------------------------------------------------------------------
# tf.compat.v1.layers (TF <= 2.15).


def build_v1_layers(fused: bool = True, training: bool = True,
                    seed: int = 0,
                    graph: Optional[tf.Graph] = None) -> BuiltLayer:
    """``tf.compat.v1.layers.conv2d`` + ``batch_normalization`` + relu.

    Resource variables; scopes ``conv2d`` and ``batch_normalization``; the
    updates are in the UPDATE_OPS collection.

    Raises:
        RuntimeError: on TF >= 2.16 (Keras 3), where these layers fail.
    """
    if not V1_LAYERS_AVAILABLE:
        raise RuntimeError(V1_LAYERS_SKIP_REASON)
    graph = graph or tf.Graph()
    values = Values(seed)
    const = v1.constant_initializer
    with graph.as_default():
        x = v1.placeholder(tf.float32, IMAGE_SHAPE, name='input')
        pre_bn = v1.layers.conv2d(
            x, 4, 3, padding='same', use_bias=False,
            kernel_initializer=const(values.normal([3, 3, 3, 4])))
        bn_output = v1.layers.batch_normalization(
            pre_bn, epsilon=EPSILON, momentum=MOMENTUM, fused=fused,
            training=training,
            gamma_initializer=const(values.positive([4])),
            beta_initializer=const(values.normal([4])),
            moving_mean_initializer=const(values.normal([4])),
            moving_variance_initializer=const(values.positive([4])))
        y = tf.nn.relu(bn_output)
        variables = {v.op.name.split('/')[-1]: v
                     for v in v1.global_variables()}
        update_ops = list(v1.get_collection(v1.GraphKeys.UPDATE_OPS))
    return BuiltLayer(
        graph=graph, inputs=x, output=y, layer_op=pre_bn.op, pre_bn=pre_bn,
        bn_op=_bn_op_of(bn_output), bn_output=bn_output,
        weights=variables['kernel'], gamma=variables['gamma'],
        beta=variables['beta'], moving_mean=variables['moving_mean'],
        moving_variance=variables['moving_variance'], epsilon=EPSILON,
        update_ops=update_ops, scope=pre_bn.op.name.rpartition('/')[0],
        activation='relu')
