"""Freezing a session's graph and choosing the tensor to export."""

from typing import Sequence, Union

from absl import logging
import tensorflow as tf
# `tf.compat.v1.graph_util.convert_variables_to_constants` is a deprecated
# wrapper (it logs a warning) around this function.
from tensorflow.python.framework import convert_to_constants

from tf1_quantize.export import names


def freeze_session(session: tf.compat.v1.Session,
                   output_names: Union[str, Sequence[str]],
                   ) -> tf.compat.v1.GraphDef:
    """Freezes a session's graph: variables become constants.

    Only what the outputs depend on is kept, so training-only ops and the
    dead originals left by the rewrite (unfolded conv and batch norm) go.

    Args:
        session: a session whose variables hold the values to freeze.
        output_names: output op or tensor names (`'logits'`, `'logits:0'`).

    Returns:
        The frozen GraphDef.

    Raises:
        ValueError: if an output name is not in the session's graph.
    """
    wanted = names.op_names(output_names)
    known = {op.name for op in session.graph.get_operations()}
    missing = [n for n in wanted if n not in known]
    if missing:
        raise ValueError(f'Output ops not found in the graph: {missing}')
    freeze = (convert_to_constants
              .convert_variables_to_constants_from_session_graph)
    return freeze(session, session.graph.as_graph_def(), wanted)


def resolve_output_name(graph: tf.Graph, output_name: str) -> str:
    """The tensor to export for an output: itself or its FakeQuant.

    The rewrite quantizes a layer's output by rerouting every consumer to a
    new FakeQuant; the tensor the model code returned (e.g. the logits)
    then feeds only that FakeQuant. When the output is also a graph output
    (nothing consumed it), the rewrite, like contrib, still creates the
    FakeQuant but leaves it without consumers. Either way, exporting the
    unquantized tensor would leave the last layer float, so a tensor read
    by exactly one op, a FakeQuant, is exported as that FakeQuant's output.

    Args:
        graph: the rewritten eval graph.
        output_name: an output op or tensor name.

    Returns:
        The tensor name to fetch and export.

    Raises:
        ValueError: if the name is not in the graph.
    """
    try:
        tensor = graph.get_tensor_by_name(names.tensor_name(output_name))
    except KeyError as e:
        raise ValueError(f'Output {output_name} not found in the graph') from e
    consumers = tensor.consumers()
    if (len(consumers) == 1 and
            consumers[0].type in names.FAKE_QUANT_TYPES):
        quantized = consumers[0].outputs[0].name
        logging.info('Exporting %s (the FakeQuant of %s) as the output.',
                     quantized, tensor.name)
        return quantized
    return tensor.name
