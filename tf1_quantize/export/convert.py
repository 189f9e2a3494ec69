"""Conversion of a frozen FakeQuant graph to an integer TFLite model.

The TF1 converter (`TFLiteConverter.from_frozen_graph`) with
`inference_type` uint8 or int8 turns the FakeQuant ranges into the
quantization parameters of the tensors.
"""

import dataclasses
import os
import tempfile
from typing import Dict, Optional, Sequence, Tuple, Union

import tensorflow as tf

from tf1_quantize.export import check
from tf1_quantize.export import names
from tf1_quantize.export import ranges as ranges_lib


@dataclasses.dataclass(frozen=True)
class Conversion:
    """A converted model with what was learned on the way.

    Attributes:
        model: the TFLite flatbuffer.
        input_stats: the `quantized_input_stats` used, per input op name.
        float_ops: ops that stayed float (empty unless allowed).
    """
    model: bytes
    input_stats: Dict[str, ranges_lib.Range]
    float_ops: Tuple[check.TfliteOp, ...]


def convert(graph_def: tf.compat.v1.GraphDef,
            input_names: Union[str, Sequence[str]],
            output_names: Union[str, Sequence[str]],
            inference_type=tf.uint8,
            input_ranges: Optional[Dict[str, ranges_lib.Range]] = None,
            input_shapes: Optional[Dict[str, Sequence[int]]] = None,
            float_io: bool = False,
            allow_float_ops: bool = False) -> Conversion:
    """`convert_to_tflite`, returning the input statistics and float ops too.

    The graph's FakeQuant ranges are read once, for the int8 weight check
    and the input statistics.
    """
    dtype = names.inference_dtype(inference_type)
    check.check_eval_graph(graph_def, output_names)
    ranges = ranges_lib.fake_quant_ranges(graph_def)
    if dtype == tf.int8:
        check.check_weight_ranges(ranges)
    stats = ranges_lib.input_stats(ranges, input_names, dtype, input_ranges)
    shapes = {names.op_name(k): list(v)
              for k, v in (input_shapes or {}).items()}
    with tempfile.TemporaryDirectory(prefix='tf1_quantize_') as tmp:
        path = os.path.join(tmp, 'frozen.pb')
        with open(path, 'wb') as f:
            f.write(graph_def.SerializeToString())
        converter = tf.compat.v1.lite.TFLiteConverter.from_frozen_graph(
            path, names.op_names(input_names), names.op_names(output_names),
            input_shapes=shapes or None)
        converter.inference_type = dtype
        converter.quantized_input_stats = stats
        if float_io:
            converter.inference_input_type = tf.float32
            converter.inference_output_type = tf.float32
        model = converter.convert()
    float_ops = check.check_integer_only(model, allow_float_ops, graph_def)
    return Conversion(model, stats, tuple(float_ops))


def convert_to_tflite(graph_def: tf.compat.v1.GraphDef,
                      input_names: Union[str, Sequence[str]],
                      output_names: Union[str, Sequence[str]],
                      inference_type=tf.uint8,
                      input_ranges: Optional[Dict[str,
                                                  ranges_lib.Range]] = None,
                      input_shapes: Optional[Dict[str, Sequence[int]]] = None,
                      float_io: bool = False,
                      allow_float_ops: bool = False) -> bytes:
    """Converts a frozen graph with FakeQuant ops to an integer TFLite model.

    Uses the TF1 converter (`TFLiteConverter.from_frozen_graph`) with
    `inference_type` and `quantized_input_stats`; the FakeQuant ranges become
    the quantization parameters of the tensors. The graph is checked first
    (`check_eval_graph`), the model afterwards (`check_integer_only`).

    Args:
        graph_def: frozen eval graph (see `freeze_session`).
        input_names: input op or tensor names.
        output_names: output op or tensor names.
        inference_type: tf.uint8 or tf.int8 (int8 needs symmetric weights).
        input_ranges: `{input: (min, max)}`; required for inputs that no
            FakeQuant consumes (see `resolve_input_stats`).
        input_shapes: optional `{input: shape}`; by default the placeholder
            shapes, an unknown batch size becoming 1.
        float_io: float32 model inputs and outputs: the model starts with
            QUANTIZE ops and ends with DEQUANTIZE ops. Otherwise inputs and
            outputs have `inference_type`.
        allow_float_ops: log float ops as warnings instead of raising.

    Returns:
        The TFLite flatbuffer.

    Raises:
        TrainingGraphError: the graph is a training rewrite.
        UnquantizedGraphError: the graph was never rewritten.
        AsymmetricWeightsError: int8 requested and weights are asymmetric.
        MissingInputRangeError: an input range is unknown.
        FloatOpsError: some ops are float and `allow_float_ops` is False.
        ValueError: unsupported inference type.
    """
    return convert(graph_def, input_names, output_names, inference_type,
                   input_ranges, input_shapes, float_io,
                   allow_float_ops).model
