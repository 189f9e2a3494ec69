"""Names, op types and GraphDef helpers shared by the export modules."""

from typing import Dict, List, Sequence, Union

import tensorflow as tf

FAKE_QUANT_TYPES = frozenset([
    'FakeQuantWithMinMaxVars',
    'FakeQuantWithMinMaxVarsPerChannel',
    'FakeQuantWithMinMaxArgs',
])
# Ops that read weights as their second input (those the rewrite quantizes).
LAYER_TYPES = frozenset(['Conv2D', 'DepthwiseConv2dNative', 'MatMul'])
SUPPORTED_TYPES = (tf.uint8, tf.int8)

Nodes = Dict[str, tf.compat.v1.NodeDef]


def op_name(name: str) -> str:
    """`'x:0'` -> `'x'`; `'^x'` -> `'x'`; op names pass through."""
    return name.lstrip('^').split(':')[0]


def tensor_name(name: str) -> str:
    """`'x'` -> `'x:0'`; tensor names pass through."""
    return name if ':' in name else name + ':0'


def op_names(names: Union[str, Sequence[str]]) -> List[str]:
    """One name or several, as op names."""
    names = [names] if isinstance(names, str) else list(names)
    return [op_name(n) for n in names]


def inference_dtype(inference_type) -> tf.dtypes.DType:
    """Checks and returns the integer type of a TFLite export.

    Raises:
        ValueError: the type is not uint8 or int8.
    """
    dtype = tf.as_dtype(inference_type)
    if dtype not in SUPPORTED_TYPES:
        raise ValueError(
            f'inference_type must be tf.uint8 or tf.int8, got {dtype.name}')
    return dtype


def node_map(graph_def: tf.compat.v1.GraphDef) -> Nodes:
    """`{op name: NodeDef}`."""
    return {node.name: node for node in graph_def.node}


def skip_identities(name: str, nodes: Nodes) -> str:
    """Follows Identity ops upwards from op `name` to the first other op."""
    while name in nodes and nodes[name].op == 'Identity':
        name = op_name(nodes[name].input[0])
    return name
