"""Small, deterministic TF1-style graphs shared by the tf1_quantize tests.

Every builder creates its graph in a fresh ``tf.Graph`` (or the one given),
initializes all variables from a seeded ``numpy.random.RandomState`` through
``constant_initializer`` (two builds with the same arguments hold identical
values) and returns a record naming the tensors and ops a test needs.

Graph sources:

* ``build_contrib_layer``: raw ``tf.compat.v1`` ops reproducing the op names
  of ``tf.contrib.layers`` (``conv2d``, ``separable_conv2d`` without
  pointwise part, ``fully_connected``, ``batch_norm`` fused or unfused).
* ``build_keras_layer``: Keras 2 layers (``tf_keras`` on TF >= 2.16,
  ``tf.keras`` before) called in graph mode with a Python-bool ``training``.
* ``build_v1_layers``: ``tf.compat.v1.layers.conv2d`` +
  ``batch_normalization`` (TF <= 2.15 only, see ``V1_LAYERS_AVAILABLE``).
* ``build_cond_bn_graph``: a batch norm whose training flag is a tensor.

Importable as ``graph_builders`` (tests/ on ``sys.path``, see conftest.py)
and as ``tests.graph_builders`` (repository root on ``sys.path``).
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Iterator, List, Optional

import numpy as np
import tensorflow as tf

v1 = tf.compat.v1

TF_VERSION = tuple(int(p) for p in tf.__version__.split('.')[:2])

# tf.compat.v1.layers needs Keras 2, i.e. TF <= 2.15.
V1_LAYERS_AVAILABLE = TF_VERSION < (2, 16)
V1_LAYERS_SKIP_REASON = 'tf.compat.v1.layers needs Keras 2 (TF<=2.15)'

EPSILON = 1e-3
MOMENTUM = 0.7  # Far from 1 so that moving averages move visibly per step.

LAYER_TYPES = ('conv', 'depthwise', 'fc', 'atrous')
LAYER_OP_TYPES = {
    'conv': 'Conv2D',
    'depthwise': 'DepthwiseConv2dNative',
    'atrous': 'DepthwiseConv2dNative',
    'fc': 'MatMul',
}
# Last name component of the layer op (contrib names).
LAYER_OP_NAMES = {
    'conv': 'Conv2D',
    'depthwise': 'depthwise',
    'atrous': 'depthwise',
    'fc': 'MatMul',
}

IMAGE_SHAPE = (2, 5, 5, 3)
FC_SHAPE = (4, 6)


def keras_module():
    """Returns Keras 2: ``tf_keras`` on TF >= 2.16, else ``tf.keras``."""
    if TF_VERSION >= (2, 16):
        import tf_keras  # pylint: disable=import-outside-toplevel
        return tf_keras
    return tf.keras


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """What ``build_contrib_layer`` builds.

    Attributes:
        layer: 'conv' (Conv2D 3->4), 'depthwise' (DepthwiseConv2dNative,
            multiplier 2), 'fc' (MatMul 6->5), 'atrous' (rate-2 depthwise:
            SpaceToBatchND -> DepthwiseConv2dNative -> BatchToSpaceND).
            With a residual the channel count is kept (3->3, 6->6).
        bn: 'fused' (FusedBatchNormV3), 'unfused' (moments +
            batch_normalization, contrib names) or None (a ``biases``
            BiasAdd instead).
        resource: resource variables (ReadVariableOp) instead of ref
            variables (VariableV2 + ``/read``).
        activation: 'relu', 'relu6' or None.
        residual: adds the block input to the BN output in ``test/AddV2``
            before the activation; the layer then lives in ``test/test``.
        identity: an Identity op between the layer and a fused BN.
        scale: whether the BN has a gamma variable.
        bn_training: BN in training mode (batch statistics + moving-average
            updates) or inference mode (moving statistics, no updates).
        seed: seed of all initial values.
    """
    layer: str = 'conv'
    bn: Optional[str] = 'fused'
    resource: bool = False
    activation: Optional[str] = 'relu'
    residual: bool = False
    identity: bool = False
    scale: bool = True
    bn_training: bool = True
    seed: int = 0

    def __post_init__(self):
        if self.layer not in LAYER_TYPES:
            raise ValueError(f'unknown layer {self.layer!r}')
        if self.bn not in ('fused', 'unfused', None):
            raise ValueError(f'unknown bn {self.bn!r}')
        if self.identity and self.bn != 'fused':
            raise ValueError('an Identity before the BN needs a fused BN')

    @property
    def id(self) -> str:
        """A short readable id, e.g. 'conv-fused-ref-relu6-bypass'."""
        parts = [self.layer, self.bn or 'nobn',
                 'res' if self.resource else 'ref',
                 self.activation or 'noact']
        flags = [(self.residual, 'bypass'), (self.identity, 'identity'),
                 (not self.scale, 'noscale'),
                 (not self.bn_training, 'inference')]
        parts += [name for on, name in flags if on]
        return '-'.join(parts)


@dataclasses.dataclass
class BuiltLayer:
    """Handles into a built graph.

    Attributes:
        graph: the graph.
        inputs: the input placeholder (``input``).
        output: the block's final tensor (after bypass and activation).
        layer_op: the Conv2D / DepthwiseConv2dNative / MatMul op.
        pre_bn: the tensor the BN normalizes, in the layer's shape (after
            BatchToSpaceND / Identity; 2-D for a MatMul).
        bn_op: the FusedBatchNorm* op, or the final ``add_1`` op of an
            unfused BN; None without BN.
        bn_output: the BN result as consumed downstream (for a fused MatMul
            BN the Reshape back to 2-D).
        weights, gamma, beta, moving_mean, moving_variance: the variables
            (gamma is None without scale; BN ones are None without BN).
        epsilon: the BN epsilon.
        update_ops: moving-average update ops (empty for an inference BN).
        scope: name scope of the layer op (``S`` of the spec).
        activation: 'relu', 'relu6' or None.
        residual: the tensor added by the bypass, or None.
        bypass_op: the bypass Add op, or None.
        spec: the LayerSpec of a contrib-style build, else None.
        head: set by ``add_head``: ``output * head_weights``.
        head_weights: the fixed random array of ``add_head``.
    """
    graph: tf.Graph
    inputs: tf.Tensor
    output: tf.Tensor
    layer_op: tf.Operation
    pre_bn: tf.Tensor
    bn_op: Optional[tf.Operation]
    bn_output: Optional[tf.Tensor]
    weights: tf.Variable
    gamma: Optional[tf.Variable]
    beta: Optional[tf.Variable]
    moving_mean: Optional[tf.Variable]
    moving_variance: Optional[tf.Variable]
    epsilon: float
    update_ops: List[tf.Operation]
    scope: str
    activation: Optional[str] = None
    residual: Optional[tf.Tensor] = None
    bypass_op: Optional[tf.Operation] = None
    spec: Optional[LayerSpec] = None
    head: Optional[tf.Tensor] = None
    head_weights: Optional[np.ndarray] = None

    def feeds(self, count: int, seed: int = 1) -> List[dict]:
        """Returns `count` different random input batches as feed dicts."""
        rng = np.random.RandomState(seed)
        shape = self.inputs.shape.as_list()
        return [{self.inputs: rng.randn(*shape).astype(np.float32)}
                for _ in range(count)]


def add_head(built: BuiltLayer, seed: int = 7) -> tf.Tensor:
    """Gives the block output a consumer, as a loss would: ``head``.

    ``head = output * R`` (op ``head``, R a fixed random array of the output
    shape), so that ``sum(head)`` is a loss with non-trivial gradients.
    Folding skips a BN whose output has no consumers, so call this before
    rewriting a block without activation and bypass. Sets ``built.head`` and
    ``built.head_weights``; a second call returns the same tensor.
    """
    if built.head is None:
        weights = np.random.RandomState(seed).randn(
            *built.output.shape.as_list()).astype(np.float32)
        with built.graph.as_default():
            built.head = tf.multiply(built.output, weights, name='head')
        built.head_weights = weights
    return built.head


# ---------------------------------------------------------------------------
# Initial values and numpy references.


class Values:
    """Deterministic initial values, drawn in call order from one seed.

    Shared by every test graph builder. `normal_scale` is the default
    standard deviation of `normal`.
    """

    def __init__(self, seed: int = 0, normal_scale: float = 0.5):
        self._rng = np.random.RandomState(seed)
        self._normal_scale = normal_scale

    def normal(self, shape, scale=None):
        scale = self._normal_scale if scale is None else scale
        return (scale * self._rng.randn(*shape)).astype(np.float32)

    def positive(self, shape, low=0.5, high=1.5):
        return self._rng.uniform(low, high, size=shape).astype(np.float32)


def numpy_activation(x: np.ndarray, activation: Optional[str]) -> np.ndarray:
    """Applies 'relu', 'relu6' or no activation to `x`."""
    if activation is None:
        return x
    if activation == 'relu':
        return np.maximum(x, 0.0)
    if activation == 'relu6':
        return np.clip(x, 0.0, 6.0)
    raise ValueError(f'unknown activation {activation!r}')


def numpy_bn_block(pre_bn, mean, variance, gamma, beta, epsilon,
                   residual=None, activation=None):
    """``act(gamma * (pre_bn - mean) / sqrt(variance + eps) + beta [+ res])``.

    `gamma` None means no scale.
    """
    gamma = 1.0 if gamma is None else gamma
    y = gamma * (pre_bn - mean) / np.sqrt(variance + epsilon) + beta
    if residual is not None:
        y = y + residual
    return numpy_activation(y, activation)


# ---------------------------------------------------------------------------
# Small graph pieces.


def variable(name, value, trainable=True):
    """A float32 variable (of the current variable scope's kind) holding
    the numpy array `value`."""
    return v1.get_variable(
        name, shape=value.shape, dtype=tf.float32,
        initializer=v1.constant_initializer(value), trainable=trainable)


def activation(x, name):
    """Applies activation `name` ('relu', 'relu6', 'tanh', 'leaky_relu',
    'identity' or None) in the current name scope, with contrib's op
    names."""
    if name is None:
        return x
    if name == 'relu':
        return tf.nn.relu(x, name='Relu')
    if name == 'relu6':
        return tf.nn.relu6(x, name='Relu6')
    if name == 'tanh':
        return tf.math.tanh(x, name='Tanh')
    if name == 'leaky_relu':
        return tf.nn.leaky_relu(x, alpha=0.2, name='LeakyRelu')
    if name == 'identity':
        return tf.identity(x, name='Identity')
    raise ValueError(f'unknown activation {name!r}')


def assign_moving_average(variable, value, momentum, name):
    """``variable -= (variable - value) * (1 - momentum)`` in scope `name`.

    Op names follow contrib's batch_norm: ``<name>/decay`` (a Const holding
    1 - momentum), ``<name>/sub``, ``<name>/mul`` and the assign op
    (``<name>`` for a ref variable, ``<name>/AssignSubVariableOp`` for a
    resource variable).
    """
    with tf.name_scope(name) as scope:
        decay = tf.constant(1.0 - momentum, tf.float32, name='decay')
        delta = tf.multiply(tf.subtract(variable, value, name='sub'), decay,
                            name='mul')
        if _is_resource(variable):
            return variable.assign_sub(delta, read_value=False)
        return v1.assign_sub(variable, delta, name=scope)


def _is_resource(variable) -> bool:
    return variable.op.type == 'VarHandleOp'


def find_op_upstream(tensor: tf.Tensor, op_type: str) -> tf.Operation:
    """The first op of `op_type` found walking up from `tensor`'s producer."""
    seen, stack = set(), [tensor.op]
    while stack:
        op = stack.pop()
        if op.type == op_type:
            return op
        if op.name not in seen:
            seen.add(op.name)
            stack.extend(t.op for t in op.inputs)
    raise ValueError(f'no {op_type} op above {tensor.name}')


# ---------------------------------------------------------------------------
# contrib-style layers.


def _layer(values, spec, x):
    """Builds the layer in the current scope; returns (weights, op, out)."""
    in_channels = x.shape[-1]
    if spec.layer == 'conv':
        out_channels = in_channels if spec.residual else 4
        weights = variable(
            'weights', values.normal([3, 3, in_channels, out_channels]))
        y = tf.nn.conv2d(x, weights, [1, 1, 1, 1], 'SAME', name='Conv2D')
        return weights, y.op, y
    if spec.layer in ('depthwise', 'atrous'):
        multiplier = 1 if spec.residual else 2
        weights = variable(
            'depthwise_weights',
            values.normal([3, 3, in_channels, multiplier]))
        rate = [2, 2] if spec.layer == 'atrous' else None
        y = tf.nn.depthwise_conv2d(x, weights, [1, 1, 1, 1], 'SAME',
                                   dilations=rate, name='depthwise')
        return weights, find_op_upstream(y, 'DepthwiseConv2dNative'), y
    out_units = in_channels if spec.residual else 5
    weights = variable('weights', values.normal([in_channels, out_units]))
    y = tf.matmul(x, weights, name='MatMul')
    return weights, y.op, y


def _bn_variables(values, channels, scale=True):
    gamma = variable('gamma', values.positive([channels])) if scale else None
    beta = variable('beta', values.normal([channels]))
    moving_mean = variable('moving_mean', values.normal([channels]),
                            trainable=False)
    moving_variance = variable('moving_variance',
                                values.positive([channels]),
                                trainable=False)
    return gamma, beta, moving_mean, moving_variance


def _fused_bn(y, gamma, beta, moving_mean, moving_variance, training):
    """contrib's fused batch_norm; returns (bn_op, out, mean, variance)."""
    channels = y.shape[-1]
    is_2d = y.shape.ndims == 2
    if is_2d:  # contrib fully_connected: the fused BN sees [-1, 1, 1, C].
        y = tf.reshape(y, [-1, 1, 1, channels], name='Reshape')
    if gamma is None:
        gamma = tf.ones([channels], name='ones')
    if training:
        out, mean, variance = v1.nn.fused_batch_norm(
            y, gamma, beta, epsilon=EPSILON, is_training=True)
    else:
        out, mean, variance = v1.nn.fused_batch_norm(
            y, gamma, beta, mean=moving_mean, variance=moving_variance,
            epsilon=EPSILON, is_training=False)
    bn_op = out.op
    if is_2d:
        out = tf.reshape(out, [-1, channels], name='Reshape_1')
    return bn_op, out, mean, variance


def _unfused_bn(y, gamma, beta, moving_mean, moving_variance, training):
    """contrib's unfused batch_norm (``batchnorm_1`` names)."""
    if training:
        mean, variance = tf.nn.moments(y, list(range(y.shape.ndims - 1)),
                                       name='moments')
    else:
        mean, variance = moving_mean, moving_variance
    out = tf.nn.batch_normalization(y, mean, variance, beta, gamma, EPSILON,
                                    name='batchnorm_1')
    return out.op, out, mean, variance


def _contrib_batch_norm(values, spec, y):
    """Builds ``BatchNorm`` (variables, BN, updates) in the current scope.

    Returns:
        (bn_op, bn_output, (gamma, beta, moving_mean, moving_variance),
        update_ops).
    """
    with v1.variable_scope('BatchNorm') as scope:
        variables = _bn_variables(values, y.shape[-1], spec.scale)
        with tf.name_scope(scope.original_name_scope):
            build = _fused_bn if spec.bn == 'fused' else _unfused_bn
            bn_op, out, mean, variance = build(y, *variables,
                                               spec.bn_training)
            updates = []
            if spec.bn_training:
                updates = [
                    assign_moving_average(variables[2], mean, MOMENTUM,
                                           'AssignMovingAvg'),
                    assign_moving_average(variables[3], variance, MOMENTUM,
                                           'AssignMovingAvg_1'),
                ]
            for op in updates:
                v1.add_to_collection(v1.GraphKeys.UPDATE_OPS, op)
    return bn_op, out, variables, updates


def build_contrib_layer(spec: LayerSpec,
                        graph: Optional[tf.Graph] = None) -> BuiltLayer:
    """Builds one contrib-named layer (+ BN, bypass, activation).

    Layout: placeholder ``input``; layer scope ``S`` = ``test`` (or
    ``test/test`` with a residual); weights ``S/weights`` (or
    ``S/depthwise_weights``); layer op ``S/Conv2D`` | ``S/depthwise`` |
    ``S/MatMul``; BN in ``S/BatchNorm``; bypass ``test/AddV2``; activation
    ``S/Relu`` (``test/Relu`` with a residual).

    Args:
        spec: what to build.
        graph: the graph to build in (a new one if None).

    Returns:
        The BuiltLayer.
    """
    graph = graph or tf.Graph()
    values = Values(spec.seed)
    shape = FC_SHAPE if spec.layer == 'fc' else IMAGE_SHAPE
    bn_op = bn_output = None
    bn_vars, updates = (None, None, None, None), []
    with graph.as_default():
        x = v1.placeholder(tf.float32, shape, name='input')
        with contextlib.ExitStack() as stack:
            for name in ['test', 'test'] if spec.residual else ['test']:
                vscope = stack.enter_context(
                    v1.variable_scope(name, use_resource=spec.resource))
            weights, layer_op, y = _layer(values, spec, x)
            if spec.identity:
                y = tf.identity(y)  # <S>/Identity
            pre_bn = y
            if spec.bn is None:
                biases = variable('biases', values.normal([y.shape[-1]]))
                y = tf.nn.bias_add(y, biases, name='BiasAdd')
            else:
                bn_op, y, bn_vars, updates = _contrib_batch_norm(
                    values, spec, y)
                bn_output = y
            if not spec.residual:
                y = activation(y, spec.activation)
        bypass_op = None
        if spec.residual:
            with tf.name_scope('test/'):
                y = tf.add(y, x, name='AddV2')
                bypass_op = y.op
                y = activation(y, spec.activation)
    gamma, beta, moving_mean, moving_variance = bn_vars
    return BuiltLayer(
        graph=graph, inputs=x, output=y, layer_op=layer_op, pre_bn=pre_bn,
        bn_op=bn_op, bn_output=bn_output, weights=weights, gamma=gamma,
        beta=beta, moving_mean=moving_mean, moving_variance=moving_variance,
        epsilon=EPSILON, update_ops=updates,
        scope=vscope.original_name_scope.rstrip('/'),
        activation=spec.activation, residual=x if spec.residual else None,
        bypass_op=bypass_op, spec=spec)


# ---------------------------------------------------------------------------
# Keras 2 layers in graph mode.


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


# ---------------------------------------------------------------------------
# A batch norm whose training flag is a tensor.


@contextlib.contextmanager
def control_flow_v1() -> Iterator[None]:
    """Builds v1 control flow (Switch/Merge) in the block, then restores."""
    was_v2 = v1.control_flow_v2_enabled()
    v1.disable_control_flow_v2()
    try:
        yield
    finally:
        if was_v2:
            v1.enable_control_flow_v2()


@dataclasses.dataclass
class CondGraph:
    """A foldable layer ``test`` followed by a layer ``second`` whose BN sits
    in a cond on a bool tensor.

    Attributes:
        graph, inputs, output: as in BuiltLayer.
        training: the bool ``is_training`` placeholder_with_default (True).
        bn_op_names: names of the ``second`` FusedBatchNormV3 ops visible in
            the graph (empty with a functional If, whose bodies hold them).
    """
    graph: tf.Graph
    inputs: tf.Tensor
    output: tf.Tensor
    training: tf.Tensor
    bn_op_names: List[str]


def build_cond_bn_graph(v1_cond: bool = True, seed: int = 0) -> CondGraph:
    """``test``: fused conv+BN+Relu; ``second``: conv + a BN inside a cond.

    The ``second`` BN runs ``fused_batch_norm(is_training=True)`` when the
    ``is_training`` tensor is True and the inference form otherwise (what
    contrib's batch_norm built for a tensor ``is_training``).

    Args:
        v1_cond: build Switch/Merge control flow (the BN ops are in the
            graph, ``second/BatchNorm/cond/FusedBatchNormV3{,_1}``); else TF2's
            default functional If.
        seed: seed of all initial values.
    """
    first = build_contrib_layer(LayerSpec(seed=seed))
    graph = first.graph
    values = Values(seed + 1)
    with graph.as_default():
        training = v1.placeholder_with_default(True, [], name='is_training')
        with v1.variable_scope('second'):
            weights = variable('weights', values.normal([3, 3, 4, 4]))
            y = tf.nn.conv2d(first.output, weights, [1, 1, 1, 1], 'SAME',
                             name='Conv2D')
            with v1.variable_scope('BatchNorm'):
                gamma, beta, mean, variance = _bn_variables(values, 4)

                def train_branch():
                    return v1.nn.fused_batch_norm(
                        y, gamma, beta, epsilon=EPSILON, is_training=True)[0]

                def infer_branch():
                    return v1.nn.fused_batch_norm(
                        y, gamma, beta, mean=mean, variance=variance,
                        epsilon=EPSILON, is_training=False)[0]

                flow = control_flow_v1 if v1_cond else contextlib.nullcontext
                with flow():
                    out = v1.cond(training, train_branch, infer_branch,
                                  name='cond')
            out = tf.nn.relu(out, name='Relu')
    bn_names = [op.name for op in graph.get_operations()
                if op.type.startswith('FusedBatchNorm')
                and op.name.startswith('second/')]
    return CondGraph(graph=graph, inputs=first.inputs, output=out,
                     training=training, bn_op_names=bn_names)
