"""`export_session`: freeze, convert, check, compare and save in one call."""

import dataclasses
from typing import Dict, Iterable, Optional, Tuple

import numpy as np
import tensorflow as tf

from tf1_quantize.export import check
from tf1_quantize.export import convert as convert_lib
from tf1_quantize.export import files
from tf1_quantize.export import freeze
from tf1_quantize.export import parity as parity_lib
from tf1_quantize.export import ranges


@dataclasses.dataclass(frozen=True)
class ExportReport:
    """What `export_session` produced.

    Attributes:
        inference_type: 'uint8' or 'int8'.
        size_bytes: size of the TFLite flatbuffer.
        input_stats: the `quantized_input_stats` used, per input op name.
        float_ops: ops that stayed float (empty unless `allow_float_ops`).
        parity: the parity report, when parity inputs were given.
        path: where the model was written, if anywhere.
    """
    inference_type: str
    size_bytes: int
    input_stats: Dict[str, ranges.Range]
    float_ops: Tuple[check.TfliteOp, ...] = ()
    parity: Optional[parity_lib.ParityReport] = None
    path: Optional[str] = None


def export_session(session: tf.compat.v1.Session,
                   input_name: str,
                   output_name: str,
                   inference_type=tf.uint8,
                   input_ranges: Optional[Dict[str, ranges.Range]] = None,
                   parity_inputs: Optional[np.ndarray] = None,
                   output_path: Optional[str] = None,
                   allow_float_ops: bool = False,
                   protected_paths: Iterable[str] = (),
                   per_layer: bool = False,
                   ) -> Tuple[bytes, ExportReport]:
    """Freezes, converts, checks and optionally saves a rewritten eval graph.

    The graph is checked before any conversion work: a training rewrite or
    a graph that was never rewritten is refused with what to do instead.

    Args:
        session: a session holding the eval graph (after `create_eval_graph`
            and a checkpoint restore).
        input_name: the input placeholder's op or tensor name.
        output_name: the output op or tensor name; a FakeQuant the rewrite
            left dangling on it is exported instead (`resolve_output_name`).
        inference_type: tf.uint8 or tf.int8.
        input_ranges: `{input: (min, max)}`, needed when no FakeQuant
            consumes the input.
        parity_inputs: float inputs for `compare_with_reference` against the
            frozen graph (sample by sample if the input's batch size is
            fixed); no parity check if None.
        output_path: where to write the .tflite (atomically); None: nowhere.
        allow_float_ops: warn instead of raising on float ops.
        protected_paths: input files that `output_path` must not be (e.g. a
            checkpoint or a frozen graph the caller read).
        per_layer: with `parity_inputs`, also compare every quantized
            activation (`ParityReport.layers`).

    Returns:
        `(tflite bytes, ExportReport)`.

    Raises:
        TrainingGraphError: the graph is a training rewrite.
        UnquantizedGraphError: the graph was never rewritten.
        ExportError: see `convert_to_tflite`.
        ValueError: unknown output name, or `output_path` is protected.
        OSError: `output_path` cannot be written (checked first, too).
    """
    if output_path is not None:
        files.check_output_path(output_path, protected_paths)
    output_name = freeze.resolve_output_name(session.graph, output_name)
    check.check_eval_graph(session.graph.as_graph_def(), output_name)
    frozen = freeze.freeze_session(session, output_name)
    conversion = convert_lib.convert(
        frozen, input_name, output_name, inference_type,
        input_ranges=input_ranges, allow_float_ops=allow_float_ops)
    parity = None
    if parity_inputs is not None:
        parity = parity_lib.compare_with_reference(
            conversion.model, frozen, input_name, output_name, parity_inputs,
            per_layer=per_layer)
    path = None
    if output_path is not None:
        path = files.write_atomic(output_path, conversion.model,
                                  protected_paths)
    return conversion.model, ExportReport(
        inference_type=tf.as_dtype(inference_type).name,
        size_bytes=len(conversion.model), input_stats=conversion.input_stats,
        float_ops=conversion.float_ops, parity=parity, path=path)
