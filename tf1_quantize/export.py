"""Export of a rewritten eval graph: freeze, convert to integer TFLite, check.

The flow this module serves is the one of `tf.contrib.quantize`:

1. build the forward graph with batch norm in inference mode, call
   `create_eval_graph` (or the experimental variant), restore the QAT
   checkpoint into a session;
2. `freeze_session` turns the variables into constants;
3. `convert_to_tflite` hands the frozen GraphDef, whose FakeQuant ops carry
   the learned ranges, to the TF1 converter with `inference_type` uint8 or
   int8;
4. `find_float_ops` / `check_integer_only` list the ops that stayed float;
5. `compare_with_reference` runs the TFLite model and the fake-quant graph on
   the same inputs and measures how far apart they are, in output LSBs.

`export_session` does all of that in one call (exporting, for an output
whose FakeQuant the rewrite left without consumers, that FakeQuant: see
`resolve_output_name`); `write_atomic` saves the bytes; `run_tflite` runs a
model on float inputs with the reference kernels.

Quantization parameters follow TFLite: `real = scale * (q - zero_point)`. The
converter's `quantized_input_stats` use `real = (q - mean) / std`, so
`mean = zero_point` and `std = 1 / scale`.
"""

import dataclasses
import math
import os
import tempfile
import warnings
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

from absl import logging
import numpy as np
import tensorflow as tf
# `tf.compat.v1.graph_util.convert_variables_to_constants` is a deprecated
# wrapper (it logs a warning) around this function.
from tensorflow.python.framework import convert_to_constants

_FAKE_QUANT_TYPES = frozenset([
    'FakeQuantWithMinMaxVars',
    'FakeQuantWithMinMaxVarsPerChannel',
    'FakeQuantWithMinMaxArgs',
])
# Ops that read weights as their second input (those the rewrite quantizes).
_WEIGHT_CONSUMER_TYPES = frozenset(
    ['Conv2D', 'DepthwiseConv2dNative', 'MatMul'])
_FLOAT_TYPES = (np.float16, np.float32, np.float64)
_SUPPORTED_TYPES = (tf.uint8, tf.int8)

Reference = Union[tf.compat.v1.GraphDef, tf.compat.v1.Session]
Range = Tuple[float, float]


class ExportError(ValueError):
    """Base class of the errors raised while exporting a quantized graph."""


class MissingInputRangeError(ExportError):
    """No FakeQuant consumes a model input and the caller gave no range."""


class AsymmetricWeightsError(ExportError):
    """Int8 export of a graph whose weight ranges are not symmetric."""


class FloatOpsError(ExportError):
    """The converted model still computes some ops in floating point.

    Attributes:
        float_ops: the offending `TfliteOp` records.
    """

    def __init__(self, float_ops: Sequence['TfliteOp']):
        self.float_ops = list(float_ops)
        lines = '\n'.join('  ' + str(op) for op in self.float_ops)
        super().__init__(
            f'{len(self.float_ops)} op(s) of the TFLite model are not '
            'integer (float inputs or outputs), usually because the rewrite '
            f'left a layer unquantized (no FakeQuant on its output):\n'
            f'{lines}\nPass allow_float_ops=True to accept a mixed model.')


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


@dataclasses.dataclass(frozen=True)
class ParityReport:
    """How closely a TFLite model follows the fake-quant graph.

    The step-based fields are None when the model output is float and not
    the result of a DEQUANTIZE (a mixed model whose last op is float).

    Attributes:
        num_samples: number of input samples compared.
        argmax_agreement: share of samples whose argmax agree.
        max_abs_diff: largest |tflite - reference|.
        max_diff_lsb: largest |tflite - reference|, in output steps.
        mean_diff_lsb: mean |tflite - reference|, in output steps.
        within_one_lsb: share of output values at most one step apart.
        output_scale: the model output's quantization step (one LSB).
    """
    num_samples: int
    argmax_agreement: float
    max_abs_diff: float
    max_diff_lsb: Optional[float]
    mean_diff_lsb: Optional[float]
    within_one_lsb: Optional[float]
    output_scale: Optional[float]

    def __str__(self) -> str:
        text = f'argmax agreement {100 * self.argmax_agreement:.2f}%, '
        if self.output_scale is None:
            text += f'max |diff| {self.max_abs_diff:.4g} (float output)'
        else:
            text += (f'max diff {self.max_diff_lsb:.2f} LSB, '
                     f'{100 * self.within_one_lsb:.2f}% within 1 LSB')
        return text + f' ({self.num_samples} samples)'



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
    input_stats: Dict[str, Range]
    float_ops: Tuple[TfliteOp, ...] = ()
    parity: Optional[ParityReport] = None
    path: Optional[str] = None


# ------------------------------------------------------------------ names


def _op_name(name: str) -> str:
    """`'x:0'` -> `'x'`; op names pass through."""
    return name.split(':')[0]


def _tensor_name(name: str) -> str:
    """`'x'` -> `'x:0'`; tensor names pass through."""
    return name if ':' in name else name + ':0'


def _op_names(names: Union[str, Sequence[str]]) -> List[str]:
    names = [names] if isinstance(names, str) else list(names)
    return [_op_name(n) for n in names]


def _inference_dtype(inference_type) -> tf.dtypes.DType:
    dtype = tf.as_dtype(inference_type)
    if dtype not in _SUPPORTED_TYPES:
        raise ValueError(
            f'inference_type must be tf.uint8 or tf.int8, got {dtype.name}')
    return dtype


# ----------------------------------------------------------------- freeze


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
    names = _op_names(output_names)
    known = {op.name for op in session.graph.get_operations()}
    missing = [n for n in names if n not in known]
    if missing:
        raise ValueError(f'Output ops not found in the graph: {missing}')
    freeze = (convert_to_constants
              .convert_variables_to_constants_from_session_graph)
    return freeze(session, session.graph.as_graph_def(), names)


def resolve_output_name(graph: tf.Graph, output_name: str) -> str:
    """The tensor to export for an output: itself or its final FakeQuant.

    When a layer's output is also a graph output (nothing consumes it), the
    rewrite, like contrib, still creates the layer's FakeQuant but leaves it
    without consumers, and so does an Identity named like an output (the
    rewrite treats Identity as an activation). Exporting the unquantized
    tensor would leave the last layer float, so such a dangling FakeQuant is
    exported instead.

    Args:
        graph: the rewritten eval graph.
        output_name: an output op or tensor name.

    Returns:
        The tensor name to fetch and export.

    Raises:
        ValueError: if the name is not in the graph.
    """
    try:
        tensor = graph.get_tensor_by_name(_tensor_name(output_name))
    except KeyError as e:
        raise ValueError(f'Output {output_name} not found in the graph') from e
    fake_quants = [op for op in tensor.consumers()
                   if op.type in _FAKE_QUANT_TYPES]
    if len(fake_quants) == 1 and not fake_quants[0].outputs[0].consumers():
        quantized = fake_quants[0].outputs[0].name
        logging.info('Exporting %s (the FakeQuant of %s) as the output.',
                     quantized, tensor.name)
        return quantized
    return tensor.name


# ------------------------------------------------------- FakeQuant ranges


def _skip_identities(name: str, nodes: Dict[str, object]) -> str:
    """Follows Identity ops upwards from op `name` to the first other op."""
    while name in nodes and nodes[name].op == 'Identity':
        name = _op_name(nodes[name].input[0])
    return name


def _weight_fake_quants(graph_def: tf.compat.v1.GraphDef,
                        nodes: Dict[str, object]) -> set:
    """Names of the FakeQuant ops feeding a layer's weight input."""
    found = set()
    for node in graph_def.node:
        if node.op in _WEIGHT_CONSUMER_TYPES and len(node.input) > 1:
            source = _skip_identities(_op_name(node.input[1]), nodes)
            if source in nodes and nodes[source].op in _FAKE_QUANT_TYPES:
                found.add(source)
    return found


def _range_values(graph_def: tf.compat.v1.GraphDef,
                  fake_quants: Sequence[object]) -> Dict[str, Tuple]:
    """Evaluates the (min, max) of FakeQuant ops, by op name.

    Ranges that depend on a placeholder cannot be computed and are left out.
    """
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(graph_def, name='')
    values = {}
    with tf.compat.v1.Session(graph=graph) as session:
        for node in fake_quants:
            if node.op == 'FakeQuantWithMinMaxArgs':
                values[node.name] = (node.attr['min'].f, node.attr['max'].f)
                continue
            tensors = [graph.get_tensor_by_name(_tensor_name(n))
                       for n in node.input[1:3]]
            try:
                values[node.name] = tuple(session.run(tensors))
            except tf.errors.InvalidArgumentError:
                logging.info('Range of %s depends on a placeholder; skipped.',
                             node.name)
    return values


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
    nodes = {node.name: node for node in graph_def.node}
    fake_quants = [n for n in graph_def.node if n.op in _FAKE_QUANT_TYPES]
    weights = _weight_fake_quants(graph_def, nodes)
    values = _range_values(graph_def, fake_quants)
    ranges = []
    for node in fake_quants:
        if node.name not in values:
            continue
        range_min, range_max = values[node.name]
        narrow = bool(node.attr['narrow_range'].b)
        ranges.append(FakeQuantRange(
            name=node.name,
            input_name=_skip_identities(_op_name(node.input[0]), nodes),
            min=float(np.min(range_min)),
            max=float(np.max(range_max)),
            num_bits=int(node.attr['num_bits'].i or 8),
            narrow_range=narrow,
            is_weight=narrow or node.name in weights))
    return ranges


def check_symmetric_weights(graph_def: tf.compat.v1.GraphDef) -> None:
    """Checks that every weight FakeQuant has a symmetric range (for int8).

    Args:
        graph_def: a frozen eval graph.

    Raises:
        AsymmetricWeightsError: listing the weight FakeQuants whose nudged
            zero point is not 0 in int8 (min != -max within nudging).
    """
    bad = [r for r in fake_quant_ranges(graph_def)
           if r.is_weight and not r.is_symmetric]
    if not bad:
        return
    listing = '\n'.join(
        f'  {r.name}: [{r.min:.6g}, {r.max:.6g}], int8 zero point '
        f'{r.zero_point - 2**(r.num_bits - 1)}' for r in bad)
    raise AsymmetricWeightsError(
        'int8 TFLite needs symmetric weights (zero point 0), but '
        f'{len(bad)} weight FakeQuant(s) have asymmetric ranges:\n'
        f'{listing}\nTrain with symmetric=True via '
        'experimental_create_training_graph (and build the eval graph with '
        'experimental_create_eval_graph(symmetric=True)), or export uint8.')


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
    return _stats(fq, _inference_dtype(inference_type))


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
    dtype = _inference_dtype(inference_type)
    name = _op_name(input_name)
    for fq in fake_quant_ranges(graph_def):
        if fq.input_name == name:
            return _stats(fq, dtype)
    return None


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
    ranges = {_op_name(k): v for k, v in (input_ranges or {}).items()}
    stats = {}
    for name in _op_names(input_names):
        if name in ranges:
            stats[name] = input_stats_from_range(*ranges[name],
                                                 inference_type)
            continue
        derived = input_stats_from_graph(graph_def, name, inference_type)
        if derived is None:
            raise MissingInputRangeError(
                f'No FakeQuant consumes input "{name}", so its quantization '
                'range is unknown (the rewrite does not quantize model '
                f'inputs). Pass input_ranges={{"{name}": (min, max)}}, the '
                'range of the float values fed to it, e.g. (0.0, 1.0) for '
                'scaled pixels.')
        stats[name] = derived
    return stats


# ------------------------------------------------------------- conversion


def convert_to_tflite(graph_def: tf.compat.v1.GraphDef,
                      input_names: Union[str, Sequence[str]],
                      output_names: Union[str, Sequence[str]],
                      inference_type=tf.uint8,
                      input_ranges: Optional[Dict[str, Range]] = None,
                      input_shapes: Optional[Dict[str, Sequence[int]]] = None,
                      float_io: bool = False,
                      allow_float_ops: bool = False) -> bytes:
    """Converts a frozen graph with FakeQuant ops to an integer TFLite model.

    Uses the TF1 converter (`TFLiteConverter.from_frozen_graph`) with
    `inference_type` and `quantized_input_stats`; the FakeQuant ranges become
    the quantization parameters of the tensors.

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
        AsymmetricWeightsError: int8 requested and weights are asymmetric.
        MissingInputRangeError: an input range is unknown.
        FloatOpsError: some ops are float and `allow_float_ops` is False.
        ValueError: unsupported inference type.
    """
    dtype = _inference_dtype(inference_type)
    if dtype == tf.int8:
        check_symmetric_weights(graph_def)
    stats = resolve_input_stats(graph_def, input_names, dtype, input_ranges)
    shapes = {_op_name(k): list(v) for k, v in (input_shapes or {}).items()}
    with tempfile.TemporaryDirectory(prefix='tf1_quantize_') as tmp:
        path = os.path.join(tmp, 'frozen.pb')
        with open(path, 'wb') as f:
            f.write(graph_def.SerializeToString())
        converter = tf.compat.v1.lite.TFLiteConverter.from_frozen_graph(
            path, _op_names(input_names), _op_names(output_names),
            input_shapes=shapes or None)
        converter.inference_type = dtype
        converter.quantized_input_stats = stats
        if float_io:
            converter.inference_input_type = tf.float32
            converter.inference_output_type = tf.float32
        model = converter.convert()
    check_integer_only(model, allow_float_ops)
    return model


# ------------------------------------------------------------- inspection


def tflite_interpreter(model: bytes) -> tf.lite.Interpreter:
    """An interpreter on the reference kernels, tensors not yet allocated.

    The default XNNPACK delegate refuses some int8 convolutions, the
    reference kernels run them.

    Args:
        model: a TFLite flatbuffer.

    Returns:
        The interpreter.
    """
    resolver = tf.lite.experimental.OpResolverType
    with warnings.catch_warnings():
        # TF >= 2.18 announces the move to ai_edge_litert on every call.
        warnings.filterwarnings('ignore', message='.*Interpreter is deprec')
        return tf.lite.Interpreter(
            model_content=model,
            experimental_op_resolver_type=(
                resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES))


def _ops_details(interpreter: tf.lite.Interpreter) -> List[dict]:
    """The operators in execution order (a private but long-lived method)."""
    return interpreter._get_ops_details()  # pylint: disable=protected-access


def _is_float(dtype) -> bool:
    return np.dtype(dtype).type in _FLOAT_TYPES


def find_float_ops(model: bytes) -> List[TfliteOp]:
    """Lists the ops of a TFLite model that read or write float tensors.

    The float boundary is allowed: a QUANTIZE that reads only model inputs
    and a DEQUANTIZE that writes only model outputs are not listed.

    Args:
        model: a TFLite flatbuffer.

    Returns:
        The float ops, in execution order.
    """
    interpreter = tflite_interpreter(model)
    tensors = {t['index']: t for t in interpreter.get_tensor_details()}
    model_inputs = {d['index'] for d in interpreter.get_input_details()}
    model_outputs = {d['index'] for d in interpreter.get_output_details()}
    found = []
    for op in _ops_details(interpreter):
        ins = [int(i) for i in op['inputs'] if i >= 0]
        outs = [int(i) for i in op['outputs'] if i >= 0]
        if op['op_name'] == 'QUANTIZE' and set(ins) <= model_inputs:
            continue
        if op['op_name'] == 'DEQUANTIZE' and set(outs) <= model_outputs:
            continue
        in_types = tuple(np.dtype(tensors[i]['dtype']).name for i in ins)
        out_types = tuple(np.dtype(tensors[i]['dtype']).name for i in outs)
        if any(_is_float(t) for t in in_types + out_types):
            found.append(TfliteOp(
                index=int(op['index']), op_name=op['op_name'],
                output_names=tuple(tensors[i]['name'] for i in outs),
                input_types=in_types, output_types=out_types))
    return found


def check_integer_only(model: bytes,
                       allow_float_ops: bool = False) -> List[TfliteOp]:
    """Raises (or warns) if a TFLite model has float ops.

    Args:
        model: a TFLite flatbuffer.
        allow_float_ops: warn through absl logging instead of raising.

    Returns:
        The float ops found (empty for an integer-only model).

    Raises:
        FloatOpsError: float ops found and `allow_float_ops` is False.
    """
    float_ops = find_float_ops(model)
    if float_ops and not allow_float_ops:
        raise FloatOpsError(float_ops)
    for op in float_ops:
        logging.warning('TFLite op stays float: %s', op)
    return float_ops


# --------------------------------------------------------------- running


def _quantize(x: np.ndarray, scale: float, zero_point: int,
              dtype) -> np.ndarray:
    """Quantizes as TFLite does (round half away from zero, clamp)."""
    info = np.iinfo(dtype)
    scaled = x / scale
    q = np.sign(scaled) * np.floor(np.abs(scaled) + 0.5) + zero_point
    return np.clip(q, info.min, info.max).astype(dtype)


def _dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    return ((q.astype(np.float32) - zero_point) * scale).astype(np.float32)


def run_tflite(model: bytes, inputs: np.ndarray) -> np.ndarray:
    """Runs a one-input, one-output TFLite model on a float batch.

    An integer input is fed the inputs quantized with the model's input
    scale and zero point; an integer output is dequantized.

    Args:
        model: a TFLite flatbuffer.
        inputs: the float batch, batch first.

    Returns:
        The float outputs, batch first.
    """
    interpreter = tflite_interpreter(model)
    index = interpreter.get_input_details()[0]['index']
    shape = interpreter.get_input_details()[0]['shape']
    interpreter.resize_tensor_input(index, [len(inputs)] + list(shape[1:]))
    interpreter.allocate_tensors()
    in_detail = interpreter.get_input_details()[0]
    out_detail = interpreter.get_output_details()[0]
    x = np.asarray(inputs, np.float32)
    if not _is_float(in_detail['dtype']):
        x = _quantize(x, *in_detail['quantization'], in_detail['dtype'])
    interpreter.set_tensor(index, x)
    interpreter.invoke()
    y = interpreter.get_tensor(out_detail['index'])
    if not _is_float(out_detail['dtype']):
        y = _dequantize(y, *out_detail['quantization'])
    return y


def run_reference(reference: Reference, input_name: str, output_name: str,
                  inputs: np.ndarray) -> np.ndarray:
    """Runs the fake-quant graph: a session holding it, or a GraphDef.

    Args:
        reference: a session (restored eval graph) or a frozen GraphDef.
        input_name: the input op or tensor name.
        output_name: the output op or tensor name.
        inputs: the float batch.

    Returns:
        The float outputs.
    """
    fetch, feed = _tensor_name(output_name), _tensor_name(input_name)
    if isinstance(reference, tf.compat.v1.Session):
        return reference.run(fetch, {feed: inputs})
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(reference, name='')
    with tf.compat.v1.Session(graph=graph) as session:
        return session.run(fetch, {feed: inputs})


# ----------------------------------------------------------------- parity


def _boundary_quantization(model: bytes, which: str) -> Optional[Tuple]:
    """(scale, zero point, dtype) of the first model input or output.

    For a float input (output), those of the tensor its QUANTIZE writes (its
    DEQUANTIZE reads); None if there is no such op.
    """
    interpreter = tflite_interpreter(model)
    details = (interpreter.get_input_details() if which == 'input'
               else interpreter.get_output_details())
    index = details[0]['index']
    tensors = {t['index']: t for t in interpreter.get_tensor_details()}
    boundary_op, own, other = (('QUANTIZE', 'inputs', 'outputs')
                               if which == 'input' else
                               ('DEQUANTIZE', 'outputs', 'inputs'))
    if _is_float(tensors[index]['dtype']):
        for op in _ops_details(interpreter):
            if op['op_name'] == boundary_op and index in list(op[own]):
                index = int(op[other][0])
                break
        else:
            return None
    scale, zero_point = tensors[index]['quantization']
    return float(scale), int(zero_point), tensors[index]['dtype']


def output_step(model: bytes) -> Optional[float]:
    """The quantization step (LSB) of a TFLite model's first output.

    Args:
        model: a TFLite flatbuffer.

    Returns:
        The step; for a float output, the step of the tensor its DEQUANTIZE
        reads, or None if no DEQUANTIZE writes it.
    """
    quantization = _boundary_quantization(model, 'output')
    return quantization[0] if quantization else None


def parity_report(actual: np.ndarray, expected: np.ndarray,
                  step: Optional[float]) -> ParityReport:
    """Summarizes the difference of two output batches.

    Args:
        actual: outputs of the TFLite model, batch first.
        expected: outputs of the reference, same shape.
        step: one output quantization step (LSB); None for a float output
            (the step-based fields are then None).

    Returns:
        A `ParityReport`.

    Raises:
        ValueError: if the shapes differ, the batch is empty or the step is
            not positive.
    """
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    if actual.shape != expected.shape:
        raise ValueError(
            f'Output shapes differ: {actual.shape} vs {expected.shape}')
    if not actual.size:
        raise ValueError('Parity needs at least one sample.')
    if step is not None and not step > 0:
        raise ValueError(f'Output step must be positive, got {step}')
    abs_diff = np.abs(actual - expected)
    rows_a = actual.reshape(len(actual), -1)
    rows_e = expected.reshape(len(expected), -1)
    agree = np.argmax(rows_a, axis=-1) == np.argmax(rows_e, axis=-1)
    max_diff = mean_diff = within = None
    if step is not None:
        diff = abs_diff / step
        max_diff, mean_diff = float(np.max(diff)), float(np.mean(diff))
        # The margin absorbs float rounding of values on the same grid.
        within = float(np.mean(diff <= 1.0 + 1e-3))
    return ParityReport(
        num_samples=len(actual),
        argmax_agreement=float(np.mean(agree)),
        max_abs_diff=float(np.max(abs_diff)),
        max_diff_lsb=max_diff,
        mean_diff_lsb=mean_diff,
        within_one_lsb=within,
        output_scale=None if step is None else float(step))


def compare_with_reference(model: bytes,
                           reference: Reference,
                           input_name: str,
                           output_name: str,
                           inputs: np.ndarray,
                           round_trip_inputs: bool = True) -> ParityReport:
    """Measures how closely a TFLite model follows the fake-quant graph.

    Both run on the same float inputs. With `round_trip_inputs`, the
    reference is fed the inputs after the model's own input quantization
    (quantize, then dequantize), so only the arithmetic differs; otherwise
    it sees the raw floats (different only for inputs that no FakeQuant
    consumes in the graph).

    Args:
        model: a TFLite flatbuffer with one input and one output.
        reference: the fake-quant eval graph: a session holding it
            (restored), or its frozen GraphDef.
        input_name: the reference's input op or tensor name.
        output_name: the reference's output op or tensor name.
        inputs: the float input batch.
        round_trip_inputs: feed the reference the quantized inputs.

    Returns:
        A `ParityReport`.
    """
    inputs = np.asarray(inputs, np.float32)
    ref_inputs = inputs
    quantization = _boundary_quantization(model, 'input')
    if round_trip_inputs and quantization:
        scale, zero_point, dtype = quantization
        ref_inputs = _dequantize(_quantize(inputs, scale, zero_point, dtype),
                                 scale, zero_point)
    expected = run_reference(reference, input_name, output_name, ref_inputs)
    actual = run_tflite(model, inputs)
    return parity_report(actual, expected, output_step(model))


# ----------------------------------------------------------------- output


def _file_mode(path: str) -> int:
    """The existing file's mode, else what `open()` would give a new file."""
    if os.path.exists(path):
        return os.stat(path).st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_atomic(path: str, data: bytes,
                 protected_paths: Iterable[str] = ()) -> str:
    """Writes bytes to `path` atomically (temp file in its dir, os.replace).

    A new file gets the usual permissions (0o666 minus the umask), a
    replaced one keeps its own.

    Args:
        path: destination file; missing directories are created.
        data: the bytes.
        protected_paths: input files that must never be overwritten.

    Returns:
        The absolute destination path.

    Raises:
        ValueError: if `path` is one of `protected_paths`.
    """
    target = os.path.realpath(path)
    for protected in protected_paths:
        if os.path.realpath(protected) == target:
            raise ValueError(f'Refusing to overwrite input file {protected}')
    directory = os.path.dirname(target)
    os.makedirs(directory, exist_ok=True)
    mode = _file_mode(target)
    fd, tmp = tempfile.mkstemp(
        prefix='.' + os.path.basename(target) + '.', suffix='.tmp',
        dir=directory)
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return target


# --------------------------------------------------------------- one call


def export_session(session: tf.compat.v1.Session,
                   input_name: str,
                   output_name: str,
                   inference_type=tf.uint8,
                   input_ranges: Optional[Dict[str, Range]] = None,
                   parity_inputs: Optional[np.ndarray] = None,
                   output_path: Optional[str] = None,
                   allow_float_ops: bool = False,
                   protected_paths: Iterable[str] = (),
                   ) -> Tuple[bytes, ExportReport]:
    """Freezes, converts, checks and optionally saves a rewritten eval graph.

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
            frozen graph; no parity check if None.
        output_path: where to write the .tflite (atomically); None: nowhere.
        allow_float_ops: warn instead of raising on float ops.
        protected_paths: input files that `output_path` must not be (e.g. a
            checkpoint or a frozen graph the caller read).

    Returns:
        `(tflite bytes, ExportReport)`.

    Raises:
        ExportError: see `convert_to_tflite`.
        ValueError: unknown output name, or `output_path` is protected.
    """
    dtype = _inference_dtype(inference_type)
    output_name = resolve_output_name(session.graph, output_name)
    frozen = freeze_session(session, output_name)
    stats = resolve_input_stats(frozen, input_name, dtype, input_ranges)
    model = convert_to_tflite(frozen, input_name, output_name, dtype,
                              input_ranges=input_ranges,
                              allow_float_ops=allow_float_ops)
    parity = None
    if parity_inputs is not None:
        parity = compare_with_reference(model, frozen, input_name,
                                        output_name, parity_inputs)
    path = None
    if output_path is not None:
        path = write_atomic(output_path, model, protected_paths)
    return model, ExportReport(
        inference_type=dtype.name, size_bytes=len(model), input_stats=stats,
        float_ops=tuple(find_float_ops(model)), parity=parity, path=path)
