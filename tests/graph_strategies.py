"""Hypothesis strategies: random `GraphDesc` descriptions
(`graph_descriptions`) and valid calls of the public rewrite functions
(`rewrite_calls`, `training_eval_call_pairs`)."""

from __future__ import annotations

import dataclasses
from typing import List, Tuple

import numpy as np
import tensorflow as tf
from hypothesis import strategies as st

from graph_descriptions import (ACTIVATIONS, BATCH_NORMS, LAYER_KINDS,
                                SPATIAL_SIZES, Add, Chain, Concat, Cond,
                                GraphDesc, Layer, Node, Norm, Pool, Reshape,
                                node_shape)


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
