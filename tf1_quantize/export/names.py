"""Names, op types and GraphDef helpers shared by the export modules.

The op types and names of the rewrite are those of `tf1_quantize.names`,
imported here.
"""

from typing import Dict, List, Sequence, Union

import tensorflow as tf

from tf1_quantize.names import FAKE_QUANT_TYPES, LAYER_TYPES, RANGE_UPDATES
from tf1_quantize.names import STEP_COUNTER

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
