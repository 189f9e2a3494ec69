"""Checks around a conversion: is the graph an eval rewrite, are the weights
int8-ready, is the converted model integer-only (and if not, why)."""

import dataclasses
from typing import Dict, List, Optional, Sequence, Set, Tuple, Union

from absl import logging
import numpy as np
import tensorflow as tf

from tf1_quantize.export import errors
from tf1_quantize.export import interpreter
from tf1_quantize.export import names
from tf1_quantize.export import ranges as ranges_lib


@dataclasses.dataclass(frozen=True)
class TfliteOp:
    """An operator of a TFLite model that reads or writes float tensors.

    Attributes:
        index: the operator's position in the subgraph.
        op_name: the TFLite builtin name (e.g. `FULLY_CONNECTED`).
        output_names: names of its output tensors; TFLite names them after
            the graph ops fused into them (`Conv/Relu6;Conv/Conv2D`).
        input_types: numpy dtype names of its inputs.
        output_types: numpy dtype names of its outputs.
    """
    index: int
    op_name: str
    output_names: Tuple[str, ...]
    input_types: Tuple[str, ...]
    output_types: Tuple[str, ...]

    def __str__(self) -> str:
        return (f'#{self.index} {self.op_name} -> '
                f'{", ".join(self.output_names)} '
                f'(in: {", ".join(self.input_types)}; '
                f'out: {", ".join(self.output_types)})')


# ------------------------------------------------------------ eval graph


def _reachable(nodes: names.Nodes, output_names: Sequence[str]) -> List[str]:
    """Op names the outputs depend on (data and control inputs)."""
    seen = set()
    stack = [n for n in names.op_names(output_names) if n in nodes]
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        stack.extend(names.op_name(i) for i in nodes[name].input
                     if names.op_name(i) in nodes)
    return sorted(seen)


def check_eval_graph(graph_def: tf.compat.v1.GraphDef,
                     output_names: Union[str, Sequence[str]]) -> None:
    """Checks that the outputs come from an eval rewrite, before converting.

    Args:
        graph_def: the graph to export (frozen or not).
        output_names: output op or tensor names.

    Raises:
        TrainingGraphError: a range update of a training rewrite, or the
            step counter of a rewrite with delays, feeds the outputs.
        UnquantizedGraphError: no FakeQuant op feeds the outputs.
    """
    nodes = names.node_map(graph_def)
    reachable = _reachable(nodes, output_names)
    updates = [n for n in reachable
               if set(n.split('/')).intersection(names.RANGE_UPDATES)]
    if updates:
        raise errors.TrainingGraphError(
            f'The graph is a training rewrite: {len(updates)} range-update '
            f'op(s) such as {updates[0]} feed the outputs, and TFLite cannot '
            'convert them. Build the model again in inference mode in a new '
            'graph, rewrite it with create_eval_graph (or '
            'experimental_create_eval_graph with the training options), '
            'restore the checkpoint and export that.')
    if any(n.split('/')[0] == names.STEP_COUNTER for n in reachable):
        raise errors.TrainingGraphError(
            f'The outputs depend on the step counter {names.STEP_COUNTER}, '
            'which every run increments: the graph was rewritten with '
            'quant_delay (or freeze_bn_delay), and such a graph cannot be '
            'frozen. For export, rewrite the inference graph without '
            'delays: create_eval_graph(), or experimental_create_eval_graph '
            'without quant_delay (the checkpoint restores the trained '
            'ranges).')
    if not any(nodes[n].op in names.FAKE_QUANT_TYPES for n in reachable):
        raise errors.UnquantizedGraphError(
            f'No FakeQuant op feeds {", ".join(names.op_names(output_names))}:'
            ' the graph was never rewritten. Call '
            'tf1_quantize.create_eval_graph() (or '
            'experimental_create_eval_graph) on the inference graph before '
            'restoring the QAT checkpoint and exporting.')


# --------------------------------------------------------------- weights


def check_weight_ranges(ranges: Sequence[ranges_lib.FakeQuantRange]) -> None:
    """`check_symmetric_weights` on ranges already read.

    Raises:
        AsymmetricWeightsError: as `check_symmetric_weights`.
    """
    bad = [r for r in ranges if r.is_weight and not r.is_symmetric]
    if not bad:
        return
    listing = '\n'.join(
        f'  {r.name}: [{r.min:.6g}, {r.max:.6g}], int8 zero point '
        f'{r.zero_point - 2**(r.num_bits - 1)}' for r in bad)
    raise errors.AsymmetricWeightsError(
        'int8 TFLite needs symmetric weights (zero point 0), but '
        f'{len(bad)} weight FakeQuant(s) have asymmetric ranges:\n'
        f'{listing}\nTrain with symmetric=True via '
        'experimental_create_training_graph (and build the eval graph with '
        'experimental_create_eval_graph(symmetric=True)), or export uint8.')


def check_symmetric_weights(graph_def: tf.compat.v1.GraphDef) -> None:
    """Checks that every weight FakeQuant has a symmetric range (for int8).

    Args:
        graph_def: a frozen eval graph.

    Raises:
        AsymmetricWeightsError: listing the weight FakeQuants whose nudged
            zero point is not 0 in int8 (min != -max within nudging).
    """
    check_weight_ranges(ranges_lib.fake_quant_ranges(graph_def))


# ------------------------------------------------------------- float ops


def find_float_ops(model: bytes) -> List[TfliteOp]:
    """Lists the ops of a TFLite model that read or write float tensors.

    The float boundary is allowed: a QUANTIZE that reads only model inputs
    and a DEQUANTIZE that writes only model outputs are not listed.

    Args:
        model: a TFLite flatbuffer.

    Returns:
        The float ops, in execution order.
    """
    runner = interpreter.tflite_interpreter(model)
    tensors = {t['index']: t for t in runner.get_tensor_details()}
    model_inputs = {d['index'] for d in runner.get_input_details()}
    model_outputs = {d['index'] for d in runner.get_output_details()}
    found = []
    for op in interpreter.ops_details(runner):
        ins = [int(i) for i in op['inputs'] if i >= 0]
        outs = [int(i) for i in op['outputs'] if i >= 0]
        if op['op_name'] == 'QUANTIZE' and set(ins) <= model_inputs:
            continue
        if op['op_name'] == 'DEQUANTIZE' and set(outs) <= model_outputs:
            continue
        in_types = tuple(np.dtype(tensors[i]['dtype']).name for i in ins)
        out_types = tuple(np.dtype(tensors[i]['dtype']).name for i in outs)
        if any(interpreter.is_float(t) for t in in_types + out_types):
            found.append(TfliteOp(
                index=int(op['index']), op_name=op['op_name'],
                output_names=tuple(tensors[i]['name'] for i in outs),
                input_types=in_types, output_types=out_types))
    return found


def _consumers(graph_def: tf.compat.v1.GraphDef) -> Dict[str, Set[str]]:
    found: Dict[str, Set[str]] = {}
    for node in graph_def.node:
        for source in node.input:
            found.setdefault(names.op_name(source), set()).add(node.name)
    return found


def _feeds_fake_quant(name: str, nodes: names.Nodes,
                      consumers: Dict[str, Set[str]]) -> bool:
    """True if a FakeQuant reads op `name`'s output (through Identity ops)."""
    for consumer in consumers.get(name, ()):
        op = nodes[consumer].op
        if op in names.FAKE_QUANT_TYPES or (
                op == 'Identity' and
                _feeds_fake_quant(consumer, nodes, consumers)):
            return True
    return False


def bare_layers(graph_def: tf.compat.v1.GraphDef,
                float_ops: Sequence[TfliteOp]) -> List[str]:
    """The graph layers behind float ops with no FakeQuant on their output.

    TFLite names an op's outputs after the graph ops fused into it; a
    Conv2D, DepthwiseConv2dNative or MatMul among them (Identity ops
    skipped) whose output no FakeQuant reads is a bare layer: the rewrite
    quantizes it only with `quantize_bare_layers=True`.

    Args:
        graph_def: the frozen graph that was converted.
        float_ops: from `find_float_ops`.

    Returns:
        The layer op names, in the order of the float ops.
    """
    nodes = names.node_map(graph_def)
    consumers = _consumers(graph_def)
    found = []
    for op in float_ops:
        for output in op.output_names:
            for part in output.split(';'):
                name = names.skip_identities(part, nodes)
                if (name in nodes and nodes[name].op in names.LAYER_TYPES and
                        not _feeds_fake_quant(name, nodes, consumers) and
                        name not in found):
                    found.append(name)
    return found


def check_integer_only(model: bytes,
                       allow_float_ops: bool = False,
                       graph_def: Optional[tf.compat.v1.GraphDef] = None,
                       ) -> List[TfliteOp]:
    """Raises (or warns) if a TFLite model has float ops.

    Args:
        model: a TFLite flatbuffer.
        allow_float_ops: warn through absl logging instead of raising.
        graph_def: the frozen graph it came from; with it, the error names
            the bare layers that stayed float (see `bare_layers`).

    Returns:
        The float ops found (empty for an integer-only model).

    Raises:
        FloatOpsError: float ops found and `allow_float_ops` is False.
    """
    float_ops = find_float_ops(model)
    if float_ops and not allow_float_ops:
        raise errors.FloatOpsError(
            float_ops,
            bare_layers(graph_def, float_ops) if graph_def else ())
    for op in float_ops:
        logging.warning('TFLite op stays float: %s', op)
    return float_ops
