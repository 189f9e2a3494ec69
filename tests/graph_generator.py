"""Hypothesis strategies drawing small random TF1-style graphs.

A drawn graph is a `GraphDesc`: a plain, hashable description (input shape,
variable kind, weight seed and a short list of nodes). `build` turns a
description into a fresh ``tf.Graph``; building the same description twice
gives two graphs with identical op names and identical initial values, so a
test can rewrite one and keep the other as the reference.

Nodes (tensor 0 is the ``input`` placeholder; node ``k`` produces tensor
``k + 1``):

* `Layer`: Conv2D, DepthwiseConv2dNative, atrous (rate 2) depthwise or
  MatMul, with a fused or unfused contrib-style batch norm (training mode
  with moving-average updates, or inference mode), or a bias, or neither;
  then optionally a residual add (bypass) and an activation (Relu, Relu6,
  Tanh, LeakyRelu, Identity or none). A layer may reuse the weight variable
  of an earlier layer (shared weights).
* `Add` (a post-activation add of two equal-shaped tensors), `Concat`
  (channels), `Pool` (MaxPool / AvgPool), `Reshape` (flatten before a
  MatMul, or an H/W regrouping of a 4-D tensor) and `Norm` (a batch norm
  that follows no layer, e.g. after a pool; never placed where it would
  be folded into a layer).

Op names follow ``tf.contrib.layers``: layer ``k`` lives in name scope
``L<k>`` (``L<k>/L<k>`` when it has a bypass, the add being ``L<k>/AddV2``,
as contrib's tests build it), its weights are ``L<k>/weights`` (or
``depthwise_weights``), its batch norm ``L<k>/BatchNorm/...`` with
``moving_mean``, ``moving_variance``, ``AssignMovingAvg{,_1}/decay`` etc.;
a `Norm` node ``k`` is the same batch norm in ``N<k>/BatchNorm/...``, other
nodes live in ``N<k>/``.

Every graph ends in a probe ``loss``: one ``Reshape`` + ``MatMul`` (with a
constant, seeded vector; a ``Sum`` if the shape is unknown) per output
tensor, summed with ``AddN``. Those op
types are not quantized by the rewrite, so the rewrite sees the outputs
consumed (as in a real model) without touching the probe, and the probe's
Reshapes tell where the outputs are after a rewrite (`BuiltGraph.outputs`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from typing import Dict, List, Optional, Tuple, Union

# oneDNN (on by default in TF >= 2.9 on x86) intermittently aborts tiny
# Conv2D / depthwise kernels ("could not create a primitive descriptor for
# the reorder primitive"), in the original graph as often as in the rewritten
# one. Plain Eigen kernels keep these tests deterministic. This only takes
# effect if TensorFlow is not imported yet (e.g. first test file of the
# process, or its own process as under Bazel).
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import graph_builders  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

v1 = tf.compat.v1

EPSILON = 1e-3
MOMENTUM = 0.9
LAYER_KINDS = ('conv', 'depthwise', 'atrous', 'fc')
ACTIVATIONS = (None, 'relu', 'relu6', 'tanh', 'leaky_relu', 'identity')
BATCH_NORMS = (None, 'fused', 'unfused')
SPATIAL_SIZES = (3, 5, 7)


# ---------------------------------------------------------------------------
# Descriptions.


@dataclasses.dataclass(frozen=True)
class Layer:
    """A Conv2D / depthwise / atrous depthwise / MatMul layer block.

    Attributes:
        src: index of the input tensor.
        kind: 'conv', 'depthwise', 'atrous' (rate-2 depthwise) or 'fc'.
        channels: output channels (conv, fc) or depth multiplier (depthwise,
            atrous).
        kernel: kernel height and width (conv, depthwise, atrous).
        stride: stride (conv, depthwise).
        padding: 'SAME' or 'VALID' (conv).
        bn: None, 'fused' (FusedBatchNormV3) or 'unfused'
            (``tf.nn.batch_normalization``).
        bn_scale: whether the batch norm has a gamma.
        bias: a ``biases`` BiasAdd (only without batch norm).
        activation: one of `ACTIVATIONS`.
        bypass: index of a tensor added before the activation, or None.
        share: index of the node whose weight variable this layer reads.
        const_weights: the weights are a ``tf.constant`` (not quantizable).
        bn_updates: a training-mode batch norm updates its moving averages.
        identity: an Identity between the layer and its batch norm.
        partitions: 0, or the number of parts of a partitioned weight
            variable (split along the output channels).
        unscoped: the layer's ops are built in the root name scope (its
            variables keep their own scope), beside other such layers.
    """
    src: int
    kind: str
    channels: int
    kernel: int = 3
    stride: int = 1
    padding: str = 'SAME'
    bn: Optional[str] = None
    bn_scale: bool = True
    bias: bool = False
    activation: Optional[str] = None
    bypass: Optional[int] = None
    share: Optional[int] = None
    const_weights: bool = False
    bn_updates: bool = True
    identity: bool = False
    partitions: int = 0
    unscoped: bool = False


@dataclasses.dataclass(frozen=True)
class Add:
    """``a + b`` (AddV2) of two tensors of the same shape."""
    a: int
    b: int


@dataclasses.dataclass(frozen=True)
class Concat:
    """Concatenation of two tensors along the last axis."""
    a: int
    b: int


@dataclasses.dataclass(frozen=True)
class Pool:
    """MaxPool ('max') or AvgPool ('avg'), SAME padding."""
    src: int
    kind: str
    size: int = 2
    stride: int = 1


@dataclasses.dataclass(frozen=True)
class Reshape:
    """'flatten' ([N, -1]) or 'regroup' ([N, H, W, C] -> [N, W, H, C])."""
    src: int
    kind: str = 'flatten'


@dataclasses.dataclass(frozen=True)
class Norm:
    """A batch norm on a tensor no layer produces (after a pool, concat,
    add or activation): contrib-named, fused or unfused, like a layer's."""
    src: int
    bn: str = 'fused'
    bn_scale: bool = True
    bn_updates: bool = True


@dataclasses.dataclass(frozen=True)
class Chain:
    """`depth` levels of ``s = s + s * 0.5`` (an Add/Mul DAG)."""
    src: int
    depth: int


@dataclasses.dataclass(frozen=True)
class Cond:
    """A layer (1x1 conv or MatMul, C -> C, bias, Relu) inside a conditional
    on a bool ``placeholder_with_default(True)``, built with control flow v2
    (an ``If`` op: the layer is left float and reported) or v1 (``Switch`` /
    ``Merge``: the rewrite refuses the graph). The other branch passes the
    input through. A Relu first keeps the conditional off a layer's raw
    output (that is a batch norm with a tensor training flag, refused)."""
    src: int
    v1: bool = False


Node = Union[Layer, Add, Concat, Pool, Reshape, Norm, Chain, Cond]


@dataclasses.dataclass(frozen=True)
class GraphDesc:
    """A small graph: input shape, variable kind, seed and nodes."""
    input_shape: Tuple[int, int, int, int]
    nodes: Tuple[Node, ...]
    resource: bool = False
    seed: int = 0

    @property
    def layers(self) -> List[Tuple[int, Layer]]:
        """(node index, Layer) of every layer node."""
        return [(k, n) for k, n in enumerate(self.nodes)
                if isinstance(n, Layer)]

    def shapes(self) -> List[Tuple[int, ...]]:
        """Static shape of every tensor (index 0 is the input)."""
        shapes = [tuple(self.input_shape)]
        for node in self.nodes:
            shapes.append(node_shape(node, shapes))
        return shapes

    def leaves(self) -> List[int]:
        """Indices of the tensors no node reads (the graph's outputs)."""
        used = set()
        for node in self.nodes:
            used.update(node_inputs(node))
        return [t for t in range(1, len(self.nodes) + 1) if t not in used]

    def pretty(self) -> str:
        """One line per node, for failure messages and the soak log."""
        lines = ['input %s, %s variables, seed %d' %
                 (self.input_shape, 'resource' if self.resource else 'ref',
                  self.seed)]
        for k, node in enumerate(self.nodes):
            lines.append('  t%d = %r' % (k + 1, node))
        return '\n'.join(lines)


def node_inputs(node: Node) -> List[int]:
    """The tensor indices a node reads."""
    if isinstance(node, Layer):
        return [node.src] + ([node.bypass] if node.bypass is not None else [])
    if isinstance(node, (Add, Concat)):
        return [node.a, node.b]
    return [node.src]


def _conv_size(size: int, kernel: int, stride: int, padding: str) -> int:
    if padding == 'VALID':
        size = size - kernel + 1
    return int(math.ceil(size / stride))


def node_shape(node: Node, shapes: List[Tuple[int, ...]]) -> Tuple[int, ...]:
    """The static output shape of `node` given the earlier shapes."""
    if isinstance(node, Layer):
        shape = shapes[node.src]
        if node.kind == 'fc':
            return (shape[0], node.channels)
        n, h, w, c = shape
        stride = 1 if node.kind == 'atrous' else node.stride
        padding = node.padding if node.kind == 'conv' else 'SAME'
        h = _conv_size(h, node.kernel, stride, padding)
        w = _conv_size(w, node.kernel, stride, padding)
        out = node.channels if node.kind == 'conv' else c * node.channels
        return (n, h, w, out)
    if isinstance(node, Add):
        return shapes[node.a]
    if isinstance(node, Concat):
        a, b = shapes[node.a], shapes[node.b]
        return a[:-1] + (a[-1] + b[-1],)
    if isinstance(node, (Norm, Chain, Cond)):
        return shapes[node.src]
    if isinstance(node, Pool):
        n, h, w, c = shapes[node.src]
        return (n, _conv_size(h, node.size, node.stride, 'SAME'),
                _conv_size(w, node.size, node.stride, 'SAME'), c)
    shape = shapes[node.src]
    if node.kind == 'flatten':
        return (shape[0], int(np.prod(shape[1:])))
    n, h, w, c = shape
    return (n, w, h, c)


def weight_shape(node: Layer, in_shape: Tuple[int, ...]) -> Tuple[int, ...]:
    """The weight variable shape of a layer reading `in_shape`."""
    cin = in_shape[-1]
    if node.kind == 'fc':
        return (cin, node.channels)
    return (node.kernel, node.kernel, cin, node.channels)


def fan_in(node: Layer, in_shape: Tuple[int, ...]) -> int:
    """How many input elements (at most) one output element reads."""
    if node.kind == 'fc':
        return in_shape[-1]
    if node.kind == 'conv':
        return node.kernel * node.kernel * in_shape[-1]
    return node.kernel * node.kernel


def bn_elements_per_channel(desc: 'GraphDesc', index: int) -> int:
    """Elements a batch norm of node `index` averages per channel."""
    return int(np.prod(desc.shapes()[index + 1][:-1]))


# ---------------------------------------------------------------------------
# Strategies.


def _pairs(shapes, same):
    """Index pairs (a, b), a != b, whose shapes satisfy `same`."""
    return [(a, b) for a in range(len(shapes)) for b in range(len(shapes))
            if a != b and same(shapes[a], shapes[b])]


@st.composite
def _source(draw, candidates: List[int]):
    """An input tensor; usually the latest one (so chains dominate)."""
    latest = candidates[-1]
    return draw(st.one_of(st.just(latest),
                          st.sampled_from(candidates[::-1])))


@st.composite
def _layer(draw, shapes, nodes, src, hazards, after_norm=False):
    """Draws a layer (after a flatten for a MatMul on a 4-D tensor).

    With `after_norm` it reads the output of a `Norm` in the way that lets
    the rewrite fold that batch norm forward: a MatMul, or a VALID Conv2D,
    with its own weights and no batch norm of its own.
    """
    in_shape = shapes[src]
    kinds = LAYER_KINDS if len(in_shape) == 4 else ('fc',)
    if after_norm:
        kinds = ('conv', 'fc') if len(in_shape) == 4 else ('fc',)
    kind = draw(st.sampled_from(kinds))
    flatten = None
    if kind == 'fc' and len(in_shape) == 4:
        flatten = Reshape(src, 'flatten')
        shapes = shapes + [node_shape(flatten, shapes)]
        src = len(shapes) - 1
        in_shape = shapes[src]
    share = None
    sharable = [
        k for k, n in enumerate(nodes)
        if isinstance(n, Layer) and n.kind == kind and n.share is None
        and not n.const_weights and not n.partitions
        and shapes[n.src][-1] == in_shape[-1]
    ]
    if sharable and not after_norm and draw(st.booleans()):
        share = draw(st.sampled_from(sharable))
    # A residual block keeps the shape, so that the input can be added.
    residual = share is None and not after_norm and draw(st.booleans())
    if share is not None:
        channels, kernel = nodes[share].channels, nodes[share].kernel
    elif kind == 'conv':
        channels = in_shape[-1] if residual else draw(st.integers(1, 4))
        kernel = draw(st.sampled_from((3, 1)))
    elif kind == 'fc':
        channels = in_shape[-1] if residual else draw(st.integers(1, 5))
        kernel = 1
    else:
        channels = 1 if residual else draw(st.integers(1, 2))
        kernel = 3 if kind == 'atrous' else draw(st.sampled_from((3, 1)))
    stride, padding = 1, 'SAME'
    if kind in ('conv', 'depthwise') and not residual:
        stride = draw(st.sampled_from((1, 2)))
    if (kind == 'conv' and not residual
            and min(in_shape[1:3]) >= kernel):
        padding = draw(st.sampled_from(
            ('VALID',) if after_norm else ('SAME', 'VALID')))
    layer = Layer(src=src, kind=kind, channels=channels, kernel=kernel,
                  stride=stride, padding=padding, share=share)
    out_shape = node_shape(layer, shapes)
    bn = None if after_norm else draw(st.sampled_from(BATCH_NORMS))
    # A training batch norm over a single element per channel has zero
    # variance; see test_properties' dedicated test instead.
    if int(np.prod(out_shape[:-1])) < 2:
        bn = None
    bias = False if bn else draw(st.booleans())
    bn_scale = draw(st.booleans()) if bn else True
    bypasses = [t for t, s in enumerate(shapes) if s == out_shape]
    bypass = None
    if bypasses and (residual or draw(st.booleans())):
        bypass = draw(_source(bypasses))
    activation = draw(st.sampled_from(ACTIVATIONS))
    const_weights = hazards and share is None and draw(
        st.integers(0, 5)) == 0
    bn_updates = not (hazards and bn and draw(st.integers(0, 3)) == 0)
    identity = bool(bn) and draw(st.integers(0, 3)) == 0
    partitions = 0
    if share is None and not const_weights and kind in ('conv', 'fc'):
        partitions = draw(st.sampled_from((0, 0, 2, 3)))
    unscoped = bypass is None and draw(st.integers(0, 3)) == 0
    layer = dataclasses.replace(
        layer, bn=bn, bn_scale=bn_scale, bias=bias, activation=activation,
        bypass=bypass, const_weights=const_weights, bn_updates=bn_updates,
        identity=identity, partitions=partitions, unscoped=unscoped)
    return ([flatten] if flatten else []) + [layer]


def _norm_sources(shapes, nodes) -> List[int]:
    """Tensors a `Norm` may follow: more than one element per channel, and
    not the linear output (possibly reshaped) of a layer without batch norm,
    into which the rewrite would fold the `Norm`. (After a layer's own batch
    norm, a second batch norm is allowed.)"""
    def foldable(t):
        while t > 0 and isinstance(nodes[t - 1], Reshape):
            t = nodes[t - 1].src
        node = nodes[t - 1] if t > 0 else None
        return (isinstance(node, Layer) and not node.bn
                and node.bypass is None
                and node.activation in (None, 'identity'))
    return [t for t, shape in enumerate(shapes)
            if int(np.prod(shape[:-1])) >= 2 and not foldable(t)]


@st.composite
def graph_descriptions(draw, max_layers: int = 4, hazards: bool = False):
    """Draws a `GraphDesc` with 1 to `max_layers` layers.

    Args:
        max_layers: the most layer nodes (1 to 4 is what the tests use).
        hazards: also draw structures the rewrite may refuse or skip: const
            weights and training batch norms without moving-average
            updates.
    """
    batch = draw(st.integers(1, 3))
    height = draw(st.sampled_from(SPATIAL_SIZES))
    width = draw(st.sampled_from(SPATIAL_SIZES))
    channels = draw(st.integers(1, 3))
    resource = draw(st.booleans())
    seed = draw(st.integers(0, 2**16 - 1))
    shapes = [(batch, height, width, channels)]
    nodes: List[Node] = []
    n_layers = draw(st.integers(1, max_layers))
    extras = 0
    while sum(isinstance(n, Layer) for n in nodes) < n_layers:
        options = ['layer']
        if extras < 3:
            options.append('pool_or_reshape')
            if _norm_sources(shapes, nodes):
                options.append('norm')
            if _pairs(shapes, lambda a, b: a == b):
                options.append('add')
            if _pairs(shapes, lambda a, b: a[:-1] == b[:-1]):
                options.append('concat')
            options += ['chain', 'cond']
        choice = draw(st.sampled_from(options))
        if choice == 'layer':
            src = draw(_source(list(range(len(shapes)))))
            new = draw(_layer(shapes, nodes, src, hazards))
        elif choice == 'add':
            a, b = draw(st.sampled_from(
                _pairs(shapes, lambda a, b: a == b)[::-1]))
            new = [Add(a, b)]
        elif choice == 'norm':
            src = draw(_source(_norm_sources(shapes, nodes)))
            bn = draw(st.sampled_from(BATCH_NORMS[1:]))
            updates = not (hazards and draw(st.integers(0, 3)) == 0)
            new = [Norm(src, bn, draw(st.booleans()), updates)]
            if draw(st.booleans()):  # a layer it may fold forward into
                new += draw(_layer(shapes + [node_shape(new[0], shapes)],
                                   nodes + new, len(shapes), hazards,
                                   after_norm=True))
        elif choice == 'cond':
            src = draw(_source(list(range(len(shapes)))))
            new = [Cond(src, v1=hazards and draw(st.booleans()))]
        elif choice == 'chain':
            src = draw(_source(list(range(len(shapes)))))
            new = [Chain(src, draw(st.integers(1, 6)))]
        elif choice == 'concat':
            a, b = draw(st.sampled_from(
                _pairs(shapes, lambda a, b: a[:-1] == b[:-1])[::-1]))
            new = [Concat(a, b)]
        else:
            src = draw(_source(list(range(len(shapes)))))
            if len(shapes[src]) == 4:
                new = [draw(st.one_of(
                    st.builds(Pool, st.just(src), st.sampled_from(
                        ('max', 'avg')), st.sampled_from((2, 3)),
                              st.sampled_from((1, 2))),
                    st.builds(Reshape, st.just(src), st.just('regroup'))))]
            else:
                new = [Reshape(src, 'flatten')]
        if choice != 'layer':
            extras += 1
        for node in new:
            nodes.append(node)
            shapes.append(node_shape(node, shapes))
    return GraphDesc(input_shape=(batch, height, width, channels),
                     nodes=tuple(nodes), resource=resource, seed=seed)


# ---------------------------------------------------------------------------
# Building.


@dataclasses.dataclass
class LayerHandles:
    """Handles into one built `Layer` (tensors of the unrewritten graph).

    Attributes:
        weights: the weight variable (or constant).
        gamma, beta, moving_mean, moving_variance: BN variables, or None.
        biased: the layer output after its bias or batch norm.
        pre_activation: `biased` plus the bypass (if any).
        output: after the activation.
    """
    weights: Union[tf.Variable, tf.Tensor]
    gamma: Optional[tf.Variable]
    beta: Optional[tf.Variable]
    moving_mean: Optional[tf.Variable]
    moving_variance: Optional[tf.Variable]
    biases: Optional[tf.Variable]
    biased: tf.Tensor
    pre_activation: tf.Tensor
    output: tf.Tensor


@dataclasses.dataclass
class NormHandles:
    """The variables and output of one built `Norm`."""
    gamma: Optional[tf.Variable]
    beta: tf.Variable
    moving_mean: tf.Variable
    moving_variance: tf.Variable
    output: tf.Tensor


@dataclasses.dataclass
class BuiltGraph:
    """A built `GraphDesc`.

    Attributes:
        graph: the graph.
        desc: its description.
        inputs: the ``input`` placeholder.
        feed: a seeded input batch for `inputs`.
        tensors: tensor k of the description (0 = inputs).
        layers: node index -> LayerHandles (NormHandles for a Norm).
        leaves: the tensor indices of the outputs.
        loss: the probe (a fixed random-weighted sum of the outputs).
        probe_readers: the probe's Reshape op of each leaf.
        update_ops: moving-average update ops of training batch norms.
    """
    graph: tf.Graph
    desc: GraphDesc
    inputs: tf.Tensor
    feed: Dict[tf.Tensor, np.ndarray]
    tensors: List[tf.Tensor]
    layers: Dict[int, Union[LayerHandles, NormHandles]]
    leaves: List[int]
    loss: tf.Tensor
    probe_readers: List[tf.Operation]
    update_ops: List[tf.Operation]

    def outputs(self) -> List[tf.Tensor]:
        """The outputs as the probe reads them (after any rewrite)."""
        return [op.inputs[0] for op in self.probe_readers]

    def trainable_variables(self) -> List[tf.Variable]:
        """Trainable variables sorted by name."""
        with self.graph.as_default():
            return sorted(v1.trainable_variables(), key=lambda v: v.op.name)


def seeded_values(seed: int) -> graph_builders.Values:
    """The generator's values: standard normal by default."""
    return graph_builders.Values(seed, normal_scale=1.0)


def assign_moving_average(variable, value, name):
    """contrib's update with the generator's momentum."""
    return graph_builders.assign_moving_average(variable, value, MOMENTUM,
                                                name)


def contrib_batch_norm(values, node, y, training):
    """contrib's batch_norm in scope ``BatchNorm``; returns (out, vars, ups)."""
    channels = y.shape[-1]
    with v1.variable_scope('BatchNorm'):
        gamma = (graph_builders.variable('gamma', values.positive([channels]))
                 if node.bn_scale else None)
        beta = graph_builders.variable('beta', values.normal([channels], 0.5))
        moving_mean = graph_builders.variable('moving_mean', values.normal([channels], 0.5),
                                trainable=False)
        moving_variance = graph_builders.variable('moving_variance',
                                    values.positive([channels]),
                                    trainable=False)
        if node.bn == 'fused':
            is_2d = y.shape.ndims == 2
            x = tf.reshape(y, [-1, 1, 1, channels], name='Reshape') if (
                is_2d) else y
            scale = gamma if gamma is not None else tf.ones([channels],
                                                            name='ones')
            if training:
                out, mean, variance = v1.nn.fused_batch_norm(
                    x, scale, beta, epsilon=EPSILON, is_training=True)
            else:
                out, mean, variance = v1.nn.fused_batch_norm(
                    x, scale, beta, mean=moving_mean,
                    variance=moving_variance, epsilon=EPSILON,
                    is_training=False)
            if is_2d:
                out = tf.reshape(out, [-1, channels], name='Reshape_1')
        else:
            if training:
                mean, variance = tf.nn.moments(
                    y, list(range(y.shape.ndims - 1)), name='moments')
            else:
                mean, variance = moving_mean, moving_variance
            out = tf.nn.batch_normalization(y, mean, variance, beta, gamma,
                                            EPSILON, name='batchnorm_1')
        updates = []
        if training and node.bn_updates:
            updates = [
                assign_moving_average(moving_mean, mean, 'AssignMovingAvg'),
                assign_moving_average(moving_variance, variance,
                                       'AssignMovingAvg_1'),
            ]
            for op in updates:
                v1.add_to_collection(v1.GraphKeys.UPDATE_OPS, op)
    return out, (gamma, beta, moving_mean, moving_variance), updates


def _layer_op(values, node, x, weights_by_node, index):
    """Builds the layer op in the current scope; returns (weights, out)."""
    shape = weight_shape(node, tuple(x.shape.as_list()))
    if node.share is not None:
        weights = weights_by_node[node.share]
    else:
        scale = 1.0 / math.sqrt(fan_in(node, tuple(x.shape.as_list())))
        value = values.normal(shape, scale)
        name = 'weights' if node.kind in ('conv', 'fc') else (
            'depthwise_weights')
        if node.const_weights:
            weights = tf.constant(value, name=name)
        elif node.partitions:
            weights = _partitioned_variable(name, value, node.partitions)
        else:
            weights = graph_builders.variable(name, value)
    weights_by_node[index] = weights
    if node.kind == 'conv':
        s = node.stride
        return weights, tf.nn.conv2d(x, weights, [1, s, s, 1], node.padding,
                                     name='Conv2D')
    if node.kind == 'fc':
        return weights, tf.matmul(x, weights, name='MatMul')
    if node.kind == 'depthwise':
        s = node.stride
        return weights, tf.nn.depthwise_conv2d(x, weights, [1, s, s, 1],
                                               'SAME', name='depthwise')
    return weights, tf.nn.depthwise_conv2d(x, weights, [1, 1, 1, 1], 'SAME',
                                           dilations=[2, 2], name='depthwise')


def _partitioned_variable(name, value, parts):
    """A variable in `parts` parts along the last axis, holding `value`;
    returns the tensor a layer reads (the concatenation of the parts)."""
    def initializer(shape, dtype=tf.float32, partition_info=None):
        offset = (partition_info.var_offset if partition_info is not None
                  else [0] * len(shape))
        part = value[tuple(slice(o, o + s) for o, s in zip(offset, shape))]
        return tf.constant(part, dtype)

    variable = v1.get_variable(
        name, value.shape, tf.float32, initializer,
        partitioner=v1.fixed_size_partitioner(parts, value.ndim - 1))
    return tf.convert_to_tensor(variable)


def _build_layer(values, node, index, tensors, weights_by_node, training,
                 resource):
    name = 'L%d' % index
    x = tensors[node.src]
    with v1.variable_scope(name, use_resource=resource,
                           auxiliary_name_scope=not node.unscoped) as outer:
        inner = (v1.variable_scope(name, use_resource=resource)
                 if node.bypass is not None else _null_scope())
        with inner:
            weights, y = _layer_op(values, node, x, weights_by_node, index)
            bn_vars, biases, updates = (None,) * 4, None, []
            if node.identity:
                y = tf.identity(y, name='Identity')
            if node.bn:
                y, bn_vars, updates = contrib_batch_norm(values, node, y, training)
            elif node.bias:
                biases = graph_builders.variable('biases', values.normal([y.shape[-1]],
                                                           0.5))
                y = tf.nn.bias_add(y, biases, name='BiasAdd')
        biased = y
        if node.bypass is not None:
            with tf.name_scope(outer.original_name_scope):
                y = tf.add(y, tensors[node.bypass], name='AddV2')
        pre_activation = y
        with tf.name_scope(outer.original_name_scope):
            y = graph_builders.activation(y, node.activation)
    handles = LayerHandles(weights, *bn_vars, biases=biases, biased=biased,
                           pre_activation=pre_activation, output=y)
    return handles, updates


class _null_scope:  # pylint: disable=invalid-name
    def __enter__(self):
        return None

    def __exit__(self, *args):
        return False


def _build_norm(values, node, index, tensors, training, resource):
    """A `Norm` in variable scope ``N<k>``; returns (handles, updates)."""
    with v1.variable_scope('N%d' % index, use_resource=resource):
        out, variables, updates = contrib_batch_norm(values, node,
                                              tensors[node.src], training)
    return NormHandles(*variables, output=out), updates


def cond_layer_values(index: int, channels: int):
    """The [C, C] weights and [C] biases of the layer of `Cond` node
    `index`."""
    rng = np.random.RandomState(index)
    weights = rng.randn(channels, channels) / np.sqrt(channels)
    return (weights.astype(np.float32),
            rng.randn(channels).astype(np.float32))


def _build_cond(node, index, tensors, resource):
    """A `Cond` in variable scope ``N<k>``."""
    x = tensors[node.src]
    weight_values, bias_values = cond_layer_values(index, x.shape[-1])
    with v1.variable_scope('N%d' % index, use_resource=resource):
        x = tf.nn.relu(x, name='Relu')
        if x.shape.rank == 4:
            weight_values = weight_values.reshape((1, 1) +
                                                  weight_values.shape)
        weights = graph_builders.variable('weights', weight_values)
        biases = graph_builders.variable('biases', bias_values)
        flag = v1.placeholder_with_default(True, [], name='flag')

        def layer():
            y = (tf.nn.conv2d(x, weights, 1, 'SAME') if x.shape.rank == 4
                 else tf.matmul(x, weights))
            return tf.nn.relu(tf.nn.bias_add(y, biases))

        flow = (graph_builders.control_flow_v1() if node.v1 else
                contextlib.nullcontext())
        with flow:
            return tf.cond(flag, layer, lambda: tf.identity(x), name='cond')


def _build_other(node, index, tensors):
    with tf.name_scope('N%d' % index):
        if isinstance(node, Chain):
            s = tensors[node.src]
            for _ in range(node.depth):
                s = tf.add(s, s * 0.5)
            return s
        if isinstance(node, Add):
            return tf.add(tensors[node.a], tensors[node.b], name='add')
        if isinstance(node, Concat):
            return tf.concat([tensors[node.a], tensors[node.b]], -1,
                             name='concat')
        x = tensors[node.src]
        if isinstance(node, Pool):
            pool = tf.nn.max_pool2d if node.kind == 'max' else (
                tf.nn.avg_pool2d)
            return pool(x, node.size, node.stride, 'SAME',
                        name='MaxPool' if node.kind == 'max' else 'AvgPool')
        n, *rest = x.shape.as_list()
        if node.kind == 'flatten':
            return tf.reshape(x, [n, -1], name='Reshape')
        h, w, c = rest
        return tf.reshape(x, [n, w, h, c], name='Reshape')


def build(desc: GraphDesc, *, bn_training: bool = True,
          graph: Optional[tf.Graph] = None,
          inputs: Optional[tf.Tensor] = None) -> BuiltGraph:
    """Builds `desc` into a fresh graph (or `graph`).

    Args:
        desc: the description.
        bn_training: batch norms normalize with batch statistics and update
            their moving averages (training graph), or use the moving
            statistics (inference graph). Variable names are the same.
        graph: the graph to build in; a new one if None.
        inputs: a tensor to use as tensor 0 instead of a new ``input``
            placeholder (e.g. one of unknown shape, or a cast); its graph
            is used.

    Returns:
        The BuiltGraph.
    """
    if inputs is not None:
        graph = inputs.graph
    graph = graph or tf.Graph()
    values = seeded_values(desc.seed)
    tensors: List[tf.Tensor] = []
    layers: Dict[int, Union[LayerHandles, NormHandles]] = {}
    update_ops: List[tf.Operation] = []
    weights_by_node: Dict[int, object] = {}
    with graph.as_default():
        if inputs is None:
            inputs = v1.placeholder(tf.float32, desc.input_shape,
                                    name='input')
        tensors.append(inputs)
        for index, node in enumerate(desc.nodes):
            if isinstance(node, Layer):
                handles, updates = _build_layer(values, node, index, tensors,
                                                weights_by_node, bn_training,
                                                desc.resource)
                layers[index] = handles
                update_ops.extend(updates)
                tensors.append(handles.output)
            elif isinstance(node, Norm):
                handles, updates = _build_norm(values, node, index, tensors,
                                               bn_training, desc.resource)
                layers[index] = handles
                update_ops.extend(updates)
                tensors.append(handles.output)
            elif isinstance(node, Cond):
                tensors.append(_build_cond(node, index, tensors,
                                           desc.resource))
            else:
                tensors.append(_build_other(node, index, tensors))
        leaves = desc.leaves()
        probe_rng = np.random.RandomState(desc.seed + 1)
        readers, terms = [], []
        with tf.name_scope('loss'):
            for t in leaves:
                flat = tf.reshape(tensors[t], [1, -1], name='flat')
                readers.append(flat.op)
                if not tensors[t].shape.is_fully_defined():
                    # Unknown shape (a caller's `inputs`): plain sum.
                    terms.append(tf.reduce_sum(flat, 1, keepdims=True))
                    continue
                size = int(np.prod(tensors[t].shape.as_list()))
                coefficients = probe_rng.randn(size, 1).astype(np.float32)
                terms.append(tf.matmul(flat, coefficients, name='dot'))
            loss = tf.reshape(tf.add_n(terms, name='sum'), [], name='loss')
    feed = {inputs: np.random.RandomState(desc.seed + 2).randn(
        *desc.input_shape).astype(np.float32)}
    return BuiltGraph(graph=graph, desc=desc, inputs=inputs, feed=feed,
                      tensors=tensors, layers=layers, leaves=leaves, loss=loss,
                      probe_readers=readers, update_ops=update_ops)


# ---------------------------------------------------------------------------
# Helpers shared by the tests.


def session(graph: tf.Graph) -> v1.Session:
    """A single-threaded session without Grappler (tiny graphs, fast)."""
    config = v1.ConfigProto(intra_op_parallelism_threads=1,
                            inter_op_parallelism_threads=1)
    config.graph_options.rewrite_options.disable_meta_optimizer = True
    return v1.Session(graph=graph, config=config)


def graph_state(graph: tf.Graph) -> Tuple[bytes, Dict[str, List[str]]]:
    """What a failed rewrite must leave unchanged: the serialized GraphDef
    and the names in every collection."""
    graph_def = graph.as_graph_def().SerializeToString(deterministic=True)
    collections = {}
    for key in graph.get_all_collection_keys():
        collections[key] = [getattr(item, 'name', repr(item))
                            for item in graph.get_collection(key)]
    return graph_def, collections


def graph_def_bytes(graph: tf.Graph) -> bytes:
    """The deterministic serialization of the graph's GraphDef."""
    return graph.as_graph_def().SerializeToString(deterministic=True)


# ---------------------------------------------------------------------------
# Rewrite calls.


@dataclasses.dataclass(frozen=True)
class RewriteCall:
    """One call of a public rewrite function, e.g. for a property test.

    Attributes:
        function: name of a `tf1_quantize` function.
        kwargs: its keyword arguments (besides the graph), as sorted pairs.
    """
    function: str
    kwargs: Tuple[Tuple[str, object], ...] = ()

    @property
    def is_training(self) -> bool:
        if self.function == 'fold_batch_norms':
            return dict(self.kwargs).get('is_training', True)
        return 'training' in self.function

    def __call__(self, graph: tf.Graph):
        import tf1_quantize  # pylint: disable=import-outside-toplevel
        return getattr(tf1_quantize, self.function)(graph,
                                                    **dict(self.kwargs))

    def __repr__(self) -> str:
        args = ', '.join('%s=%r' % kv for kv in self.kwargs)
        return 'tf1_quantize.%s(graph%s)' % (self.function,
                                             ', ' + args if args else '')


def _call(function, **kwargs) -> RewriteCall:
    return RewriteCall(function, tuple(sorted(kwargs.items())))


_BITS = st.integers(2, 16)
_SCOPES = st.sampled_from((None, 'L0', 'L1/'))


@st.composite
def rewrite_calls(draw, modes=('training', 'eval', 'fold')):
    """Draws a valid call of one of the five public rewrite functions."""
    options = []
    if 'training' in modes:
        options += ['create_training_graph',
                    'experimental_create_training_graph']
    if 'eval' in modes:
        options += ['create_eval_graph', 'experimental_create_eval_graph']
    if 'fold' in modes:
        options += ['fold_batch_norms']
    function = draw(st.sampled_from(options))
    if function == 'create_training_graph':
        return _call(function, quant_delay=draw(st.sampled_from((0, 3))))
    if function == 'create_eval_graph':
        return _call(function)
    if function == 'fold_batch_norms':
        return _call(function, is_training=draw(st.booleans()),
                     freeze_bn_delay=draw(st.sampled_from((None, 0, 3))),
                     one_conv_fold=draw(st.booleans()))
    kwargs = dict(weight_bits=draw(_BITS), activation_bits=draw(_BITS),
                  symmetric=draw(st.booleans()), scope=draw(_SCOPES),
                  per_channel_weights=draw(st.booleans()))
    if function == 'experimental_create_training_graph':
        kwargs['quant_delay'] = draw(st.sampled_from((0, 3)))
        kwargs['freeze_bn_delay'] = draw(st.sampled_from((None, 0, 3)))
        kwargs['one_conv_fold'] = draw(st.booleans())
    else:
        kwargs['quant_delay'] = draw(st.sampled_from((None, 3)))
    return _call(function, **kwargs)


@st.composite
def training_eval_call_pairs(draw):
    """A training call and the eval call matching it (same bits, symmetry
    and scope), as a training script and its export script would make."""
    if draw(st.booleans()):
        return (_call('create_training_graph',
                      quant_delay=draw(st.sampled_from((0, 3)))),
                _call('create_eval_graph'))
    shared = dict(weight_bits=draw(_BITS), activation_bits=draw(_BITS),
                  symmetric=draw(st.booleans()), scope=draw(_SCOPES),
                  per_channel_weights=draw(st.booleans()))
    training = _call('experimental_create_training_graph',
                     quant_delay=draw(st.sampled_from((0, 3))),
                     freeze_bn_delay=draw(st.sampled_from((None, 3))),
                     one_conv_fold=draw(st.booleans()), **shared)
    return training, _call('experimental_create_eval_graph', **shared)
