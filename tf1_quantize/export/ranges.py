"""FakeQuant ops of a frozen graph, their ranges, and the input statistics.

Quantization parameters follow TFLite: `real = scale * (q - zero_point)`.
The converter's `quantized_input_stats` use `real = (q - mean) / std`, so
`mean = zero_point` and `std = 1 / scale`.
"""

import dataclasses
import math
from typing import Dict, List, Optional, Sequence, Tuple, Union

from absl import logging
import numpy as np
import tensorflow as tf

from tf1_quantize.export import errors
from tf1_quantize.export import names

Range = Tuple[float, float]


@dataclasses.dataclass(frozen=True)
class FakeQuantRange:
    """A FakeQuant op of a GraphDef with its range.

    The derived properties reproduce the op's nudging (spec §4.3).

    Attributes:
        name: the FakeQuant op name.
        input_name: the op producing its input (Identity ops skipped).
        min: the range minimum the op reads (before nudging).
        max: the range maximum the op reads (before nudging).
        num_bits: the op's `num_bits` attribute.
        narrow_range: the op's `narrow_range` attribute.
        is_weight: True if it feeds the weight input of a Conv2D, depthwise
            conv or MatMul, or is narrow-range (the rewrite uses narrow
            ranges only for weights).
    """
    name: str
    input_name: str
    min: float
    max: float
    num_bits: int = 8
    narrow_range: bool = False
    is_weight: bool = False

    @property
    def quant_min(self) -> int:
        return 1 if self.narrow_range else 0

    @property
    def quant_max(self) -> int:
        return 2**self.num_bits - 1

    @property
    def scale(self) -> float:
        return (self.max - self.min) / (self.quant_max - self.quant_min)

    @property
    def zero_point(self) -> int:
        """The unsigned zero point after nudging."""
        from_min = self.quant_min - self.min / self.scale
        nudged = math.floor(from_min + 0.5)
        return int(min(max(nudged, self.quant_min), self.quant_max))

    @property
    def is_symmetric(self) -> bool:
        """True if the signed zero point is 0, as int8 weights need."""
        return self.zero_point == 2**(self.num_bits - 1)


def _weight_fake_quants(graph_def: tf.compat.v1.GraphDef,
                        nodes: names.Nodes) -> set:
    """Names of the FakeQuant ops feeding a layer's weight input."""
    found = set()
    for node in graph_def.node:
        if node.op in names.LAYER_TYPES and len(node.input) > 1:
            source = names.skip_identities(names.op_name(node.input[1]),
                                           nodes)
            if source in nodes and nodes[source].op in names.FAKE_QUANT_TYPES:
                found.add(source)
    return found


def fake_quant_nodes(graph_def: tf.compat.v1.GraphDef,
                     ) -> List[Tuple[tf.compat.v1.NodeDef, str, bool]]:
    """The FakeQuant ops of a GraphDef, in graph order, without running it.

    Args:
        graph_def: any GraphDef.

    Returns:
        `(node, input op name with Identity ops skipped, is_weight)` per
        FakeQuant op (`is_weight` as in `FakeQuantRange`).
    """
    nodes = names.node_map(graph_def)
    weights = _weight_fake_quants(graph_def, nodes)
    return [(node,
             names.skip_identities(names.op_name(node.input[0]), nodes),
             bool(node.attr['narrow_range'].b) or node.name in weights)
            for node in graph_def.node if node.op in names.FAKE_QUANT_TYPES]


def _range_values(graph_def: tf.compat.v1.GraphDef,
                  fake_quants: Sequence[tf.compat.v1.NodeDef],
                  ) -> Dict[str, Tuple]:
    """Evaluates the (min, max) of FakeQuant ops, by op name, in one run.

    Ranges that depend on a placeholder cannot be computed and are left out.
    """
    values, fetches = {}, {}
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(graph_def, name='')
    for node in fake_quants:
        if node.op == 'FakeQuantWithMinMaxArgs':
            values[node.name] = (node.attr['min'].f, node.attr['max'].f)
            continue
        tensors = [graph.get_tensor_by_name(names.tensor_name(n))
                   for n in node.input[1:3]]
        if any(_needs_feed(t.op) for t in tensors):
            logging.info('Range of %s depends on a placeholder; skipped.',
                         node.name)
            continue
        fetches[node.name] = tensors
    with tf.compat.v1.Session(graph=graph) as session:
        values.update(session.run(fetches))
    return values


def _needs_feed(op: tf.Operation) -> bool:
    """True if a placeholder reaches `op` (through data inputs)."""
    seen, stack = set(), [op]
    while stack:
        op = stack.pop()
        if op.type in ('Placeholder', 'PlaceholderWithDefault'):
            return True
        for tensor in op.inputs:
            if tensor.op.name not in seen:
                seen.add(tensor.op.name)
                stack.append(tensor.op)
    return False


def fake_quant_ranges(
        graph_def: tf.compat.v1.GraphDef) -> List[FakeQuantRange]:
    """Lists the FakeQuant ops of a (frozen) GraphDef with their ranges.

    A per-channel FakeQuant is reported with its widest channel range.

    Args:
        graph_def: a GraphDef whose FakeQuant ranges do not depend on a
            placeholder (a frozen eval graph).

    Returns:
        One `FakeQuantRange` per FakeQuant op with a computable range, in
        graph order.
    """
    found = fake_quant_nodes(graph_def)
    values = _range_values(graph_def, [node for node, _, _ in found])
    return [FakeQuantRange(
        name=node.name, input_name=input_name,
        min=float(np.min(values[node.name][0])),
        max=float(np.max(values[node.name][1])),
        num_bits=int(node.attr['num_bits'].i or 8),
        narrow_range=bool(node.attr['narrow_range'].b),
        is_weight=is_weight)
        for node, input_name, is_weight in found if node.name in values]


# ------------------------------------------------------------ input stats


def _stats(fq: FakeQuantRange, dtype: tf.dtypes.DType) -> Range:
    """Converter `(mean, std)` of a quantizer for uint8 or int8."""
    zero_point = fq.zero_point
    if dtype == tf.int8:
        zero_point -= 2**(fq.num_bits - 1)
    return float(zero_point), 1.0 / fq.scale


def input_stats_from_range(range_min: float, range_max: float,
                           inference_type=tf.uint8) -> Range:
    """Converter `(mean, std)` for an 8-bit input with a known float range.

    The range is nudged as FakeQuant nudges it, so that 0.0 is exact.

    Args:
        range_min: smallest input value (0 is added to the range if needed).
        range_max: largest input value; must exceed `range_min`.
        inference_type: tf.uint8 or tf.int8.

    Returns:
        `(mean, std)` such that `real = (q - mean) / std`.

    Raises:
        ValueError: empty range or unsupported type.
    """
    if not range_max > range_min:
        raise ValueError(
            f'Input range needs max > min, got [{range_min}, {range_max}]')
    fq = FakeQuantRange('input', 'input', min(float(range_min), 0.0),
                        max(float(range_max), 0.0))
    return _stats(fq, names.inference_dtype(inference_type))


def _stats_from_ranges(ranges: Sequence[FakeQuantRange], input_name: str,
                       dtype: tf.dtypes.DType) -> Optional[Range]:
    for fq in ranges:
        if fq.input_name == names.op_name(input_name):
            return _stats(fq, dtype)
    return None


def input_stats_from_graph(graph_def: tf.compat.v1.GraphDef,
                           input_name: str,
                           inference_type=tf.uint8) -> Optional[Range]:
    """Derives an input's `(mean, std)` from the FakeQuant consuming it.

    Args:
        graph_def: a frozen eval graph.
        input_name: the input placeholder's op or tensor name.
        inference_type: tf.uint8 or tf.int8.

    Returns:
        `(mean, std)`, or None when no FakeQuant consumes the input directly
        (or through Identity ops).
    """
    dtype = names.inference_dtype(inference_type)
    return _stats_from_ranges(fake_quant_ranges(graph_def), input_name, dtype)


def input_stats(ranges: Sequence[FakeQuantRange],
                input_names: Union[str, Sequence[str]],
                dtype: tf.dtypes.DType,
                input_ranges: Optional[Dict[str, Range]] = None,
                ) -> Dict[str, Range]:
    """`resolve_input_stats` from ranges already read (`fake_quant_ranges`).

    Raises:
        MissingInputRangeError: as `resolve_input_stats`.
    """
    given = {names.op_name(k): v for k, v in (input_ranges or {}).items()}
    stats = {}
    for name in names.op_names(input_names):
        if name in given:
            stats[name] = input_stats_from_range(*given[name], dtype)
            continue
        derived = _stats_from_ranges(ranges, name, dtype)
        if derived is None:
            raise errors.MissingInputRangeError(
                f'No FakeQuant consumes input "{name}", so its quantization '
                'range is unknown (the rewrite does not quantize model '
                f'inputs). Pass input_ranges={{"{name}": (min, max)}}, the '
                'range of the float values fed to it, e.g. (0.0, 1.0) for '
                'scaled pixels.')
        stats[name] = derived
    return stats


def resolve_input_stats(graph_def: tf.compat.v1.GraphDef,
                        input_names: Union[str, Sequence[str]],
                        inference_type=tf.uint8,
                        input_ranges: Optional[Dict[str, Range]] = None,
                        ) -> Dict[str, Range]:
    """`quantized_input_stats` for every input: given range, else graph's.

    Args:
        graph_def: a frozen eval graph.
        input_names: input op or tensor names.
        inference_type: tf.uint8 or tf.int8.
        input_ranges: optional `{input name: (min, max)}` of the float values
            fed to the inputs; it wins over a FakeQuant found in the graph.

    Returns:
        `{input op name: (mean, std)}`.

    Raises:
        MissingInputRangeError: an input has neither a FakeQuant consumer nor
            an entry in `input_ranges`.
    """
    return input_stats(fake_quant_ranges(graph_def), input_names,
                       names.inference_dtype(inference_type), input_ranges)
