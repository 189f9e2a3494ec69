"""Small random TF1-style graphs for the property tests: building them.

A drawn graph is a `GraphDesc` (graph_descriptions.py, drawn by the
Hypothesis strategies of graph_strategies.py; both re-exported here): a plain, hashable description (input shape,
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
from typing import Dict, List, Optional, Union

import numpy as np
import tensorflow as tf

import builders
# The descriptions, strategies and graph helpers, re-exported: tests and
# tools use them as graph_generator's.
from graph_checks import graph_bytes as graph_def_bytes  # noqa: F401
from graph_checks import graph_state, session  # noqa: F401
from graph_descriptions import (  # noqa: F401
    ACTIVATIONS, BATCH_NORMS, LAYER_KINDS, SPATIAL_SIZES, Add, Chain, Concat,
    Cond, GraphDesc, Layer, Node, Norm, Pool, Reshape, bn_elements_per_channel,
    fan_in, node_inputs, node_shape, weight_shape)
from graph_strategies import (  # noqa: F401
    RewriteCall, _call, graph_descriptions, rewrite_calls,
    training_eval_call_pairs)

v1 = tf.compat.v1

EPSILON = builders.EPSILON
MOMENTUM = 0.9


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


def seeded_values(seed: int) -> builders.Values:
    """The generator's values: standard normal by default."""
    return builders.Values(seed, normal_scale=1.0)


def _batch_norm(values, node, y, training):
    """contrib's batch_norm of a `Layer` or `Norm` node, in scope
    ``BatchNorm``; returns (output, variables, update ops)."""
    bn = builders.batch_norm(values, y, fused=node.bn == 'fused',
                             training=training, scale=node.bn_scale,
                             updates=node.bn_updates, momentum=MOMENTUM,
                             normal_scale=0.5)
    return bn.output, bn.variables, bn.update_ops


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
            weights = builders.variable(name, value)
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
                y, bn_vars, updates = _batch_norm(values, node, y, training)
            elif node.bias:
                biases = builders.variable(
                    'biases', values.normal([y.shape[-1]], 0.5))
                y = tf.nn.bias_add(y, biases, name='BiasAdd')
        biased = y
        if node.bypass is not None:
            with tf.name_scope(outer.original_name_scope):
                y = tf.add(y, tensors[node.bypass], name='AddV2')
        pre_activation = y
        with tf.name_scope(outer.original_name_scope):
            y = builders.activation(y, node.activation)
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
        out, variables, updates = _batch_norm(values, node,
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
        weights = builders.variable('weights', weight_values)
        biases = builders.variable('biases', bias_values)
        flag = v1.placeholder_with_default(True, [], name='flag')

        def layer():
            y = (tf.nn.conv2d(x, weights, 1, 'SAME') if x.shape.rank == 4
                 else tf.matmul(x, weights))
            return tf.nn.relu(tf.nn.bias_add(y, biases))

        flow = (builders.control_flow_v1() if node.v1 else
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
