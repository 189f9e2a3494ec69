"""Plain, hashable descriptions of the small random graphs of
``graph_generator``: the node kinds, `GraphDesc` and the static shapes they
imply (see graph_generator's docstring for the graphs they build)."""

from __future__ import annotations

import dataclasses
import math
from typing import List, Optional, Tuple, Union

import numpy as np

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
