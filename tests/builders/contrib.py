"""Graphs of raw ``tf.compat.v1`` ops named as ``tf.contrib.layers`` named
them: one parameterized layer block (`build_contrib_layer`), the same block
as a placement graph, layers under any scope (`conv_layer`) and the small
multi-layer graphs built from them."""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Dict, List, Optional

import numpy as np
import tensorflow as tf

from builders import ops
from builders.ops import (EPSILON, Values, activation, batch_norm,
                          bn_variables, control_flow_v1, find_op_upstream,
                          variable)

v1 = tf.compat.v1

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
# Last name component of the weight variable.
WEIGHT_NAMES = {'conv': 'weights', 'fc': 'weights',
                'depthwise': 'depthwise_weights',
                'atrous': 'depthwise_weights'}

IMAGE_SHAPE = (2, 5, 5, 3)
FC_SHAPE = (4, 6)


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
# One layer block.


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
    bn = None
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
                bn = batch_norm(values, y, fused=spec.bn == 'fused',
                                training=spec.bn_training, scale=spec.scale)
                y = bn.output
            if not spec.residual:
                y = activation(y, spec.activation)
        bypass_op = None
        if spec.residual:
            with tf.name_scope('test/'):
                y = tf.add(y, x, name='AddV2')
                bypass_op = y.op
                y = activation(y, spec.activation)
    gamma, beta, moving_mean, moving_variance = (
        bn.variables if bn else (None,) * 4)
    return BuiltLayer(
        graph=graph, inputs=x, output=y, layer_op=layer_op, pre_bn=pre_bn,
        bn_op=bn.op if bn else None, bn_output=bn.output if bn else None,
        weights=weights, gamma=gamma, beta=beta, moving_mean=moving_mean,
        moving_variance=moving_variance, epsilon=EPSILON,
        update_ops=bn.update_ops if bn else [],
        scope=vscope.original_name_scope.rstrip('/'),
        activation=spec.activation, residual=x if spec.residual else None,
        bypass_op=bypass_op, spec=spec)


# ---------------------------------------------------------------------------
# The layer block as a placement graph (spec 7.4).


PLACEMENT_ACTIVATIONS = ('Relu', 'Relu6', 'Identity', None)


@dataclasses.dataclass
class PlacementGraph:
    """A `build_contrib_layer` block plus an optional Identity activation.

    Attributes:
        built: the BuiltLayer.
        graph: its graph.
        activation_op: name of the activation op (``test/Relu``,
            ``test/Relu6``, ``test/Identity``) or None.
        block_output: the block's last tensor (after bypass and activation).
        output: ``output``, a Sum over `block_output` (the graph's consumer).
    """
    built: BuiltLayer
    graph: tf.Graph
    activation_op: Optional[str]
    block_output: tf.Tensor
    output: tf.Tensor


def build_placement_graph(layer: str, activation: Optional[str],
                          bypass: bool, fused_bn: bool, resource: bool,
                          bn_training: bool = True,
                          seed: int = 0) -> PlacementGraph:
    """contrib-named layer -> [fused BN | BiasAdd] -> [bypass] -> activation.

    Layout (from `build_contrib_layer`): layer scope ``test`` (``test/test``
    with a bypass), bypass ``test/AddV2``, activation
    ``test/<Relu|Relu6|Identity>`` (one of `PLACEMENT_ACTIVATIONS`), then
    ``output`` = ``reduce_sum`` (a consumer that is neither an activation
    nor an intermediate op).
    """
    lower = {'Relu': 'relu', 'Relu6': 'relu6'}
    spec = LayerSpec(layer=layer, bn='fused' if fused_bn else None,
                     resource=resource, activation=lower.get(activation),
                     residual=bypass, bn_training=bn_training, seed=seed)
    built = build_contrib_layer(spec)
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
# Conv layers under any scope, and the multi-layer graphs made of them.


STACK_IMAGE_SHAPE = (2, 4, 4, 3)
STACK_MOMENTUM = 0.9


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


def conv_layer(x: tf.Tensor, scope: str, channels: int, values: Values, *,
               batch_norm: bool = False,  # pylint: disable=redefined-outer-name
               bn_training: bool = True,
               activation: Optional[str] = 'Relu6',  # pylint: disable=redefined-outer-name
               resource: Optional[bool] = None) -> ConvLayer:
    """A contrib ``conv2d`` (3x3, SAME) with a fused BN or biases.

    Names: ``<scope>/weights``, ``<scope>/Conv2D``, ``<scope>/biases`` +
    ``<scope>/BiasAdd`` or ``<scope>/BatchNorm/{gamma,beta,moving_mean,
    moving_variance}`` + ``<scope>/BatchNorm/FusedBatchNormV3`` (+ the
    ``AssignMovingAvg{,_1}`` updates in training mode, momentum
    `STACK_MOMENTUM`), then ``<scope>/<activation>`` ('Relu6', 'Relu',
    'Identity' or None). Must be called at the root name scope.
    """
    variables = {}
    updates = []
    with v1.variable_scope(scope, use_resource=resource):
        weights = variable('weights',
                           values.normal([3, 3, x.shape[-1], channels]))
        variables['weights'] = weights
        y = tf.nn.conv2d(x, weights, [1, 1, 1, 1], 'SAME', name='Conv2D')
        if batch_norm:
            bn = ops.batch_norm(values, y, training=bn_training,
                                momentum=STACK_MOMENTUM)
            variables.update(gamma=bn.gamma, beta=bn.beta,
                             moving_mean=bn.moving_mean,
                             moving_variance=bn.moving_variance)
            y, updates = bn.output, bn.update_ops
        else:
            biases = variable('biases', values.normal([channels]))
            variables['biases'] = biases
            y = tf.nn.bias_add(y, biases, name='BiasAdd')
        pre_activation = y
        y = ops.activation(y, activation and activation.lower())
    return ConvLayer(scope=scope, output=y, pre_activation=pre_activation,
                     variables=variables, update_ops=updates)



def input_placeholder(channels: int = 3) -> tf.Tensor:
    return v1.placeholder(tf.float32, STACK_IMAGE_SHAPE[:3] + (channels,),
                          name='input')


def random_feeds(placeholder: tf.Tensor, count: int, seed: int = 1):
    """`count` different input batches (normal, a few values large)."""
    rng = np.random.RandomState(seed)
    shape = placeholder.shape.as_list()
    return [{placeholder: (1.5 * rng.randn(*shape)).astype(np.float32)}
            for _ in range(count)]


def rich_graph(bn_training=True, resource=None, graph=None):
    """Every quantizer kind in one small graph.

    ``test/test``: conv + fused BN, bypass ``test/AddV2`` with the input,
    ``test/Relu6``; ``post``: conv + bias + Relu6, then the post-activation
    bypass ``post/add``; ``tail/Mul`` (intermediate op); ``output``.
    """
    graph = graph or tf.Graph()
    values = Values(0)
    with graph.as_default():
        x = input_placeholder()
        a = conv_layer(x, 'test/test', 3, values, batch_norm=True,
                       bn_training=bn_training, activation=None,
                       resource=resource)
        with tf.name_scope('test/'):
            y = tf.nn.relu6(tf.add(a.output, x, name='AddV2'), name='Relu6')
        b = conv_layer(y, 'post', 3, values, activation='Relu6',
                       resource=resource)
        with tf.name_scope('post/'):
            z = tf.add(b.output, y, name='add')
        with tf.name_scope('tail/'):
            m = tf.multiply(z, 2.0, name='Mul')
        tf.reduce_sum(m, name='output')
    return graph


RICH_PREFIXES = {
    'test/test/weights_quant', 'test/act_quant', 'test/test/conv_quant',
    'post/weights_quant', 'post/act_quant',
    'post/post_activation_bypass_quant',
    'tail/Mul/activation_Mul_quant'
}
RICH_WEIGHT_PREFIXES = {'test/test/weights_quant', 'post/weights_quant'}


def simple_graph(graph=None, scope='test', batch_norm=True):  # pylint: disable=redefined-outer-name
    """conv (+ fused BN) + Relu6 in `scope`, then ``output``."""
    graph = graph or tf.Graph()
    with graph.as_default():
        x = input_placeholder()
        layer = conv_layer(x, scope, 4, Values(0), batch_norm=batch_norm)
        tf.reduce_sum(layer.output, name='output')
    return graph


def activation_graph(scope_of_extra_ops='test'):
    """testActivationQuantization: conv + fused BN + Relu6, then
    ``2*a``, ``3*a`` and their sum (all in `scope_of_extra_ops`), plus an
    Add feeding a Relu (fused, not quantized) and a Sub (never quantized).
    """
    graph = tf.Graph()
    with graph.as_default():
        x = input_placeholder()
        a = conv_layer(x, 'test', 3, Values(0), batch_norm=True).output
        with tf.name_scope(scope_of_extra_ops + '/'):
            mul = tf.multiply(2.0, a, name='Mul')
            mul_1 = tf.multiply(3.0, a, name='Mul_1')
            total = tf.add(mul, mul_1, name='add')
            fused = tf.nn.relu(tf.add(a, 1.0, name='add_relu'), name='Relu')
            sub = tf.subtract(a, 1.0, name='sub')
        tf.add_n([tf.reduce_sum(t) for t in (total, fused, sub)],
                 name='output')
    return graph


# ---------------------------------------------------------------------------
# A batch norm whose training flag is a tensor.


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
                gamma, beta, mean, var = bn_variables(values, 4)

                def train_branch():
                    return v1.nn.fused_batch_norm(
                        y, gamma, beta, epsilon=EPSILON, is_training=True)[0]

                def infer_branch():
                    return v1.nn.fused_batch_norm(
                        y, gamma, beta, mean=mean, variance=var,
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

