"""Running TFLite models: the interpreter, (de)quantization, batching.

LiteRT's interpreter (`ai_edge_litert`) is used where it is installed;
`tf.lite.Interpreter`, deprecated since TF 2.20, otherwise. Both run on the
reference kernels: the default XNNPACK delegate refuses some int8
convolutions.
"""

import importlib
from typing import Iterator, Optional, Set, Tuple
import warnings

import numpy as np
import tensorflow as tf

_FLOAT_TYPES = (np.float16, np.float32, np.float64)
# Samples per interpreter run when the model's batch size is not fixed.
_DYNAMIC_BATCH = 64


def _interpreter_api():
    """(Interpreter, OpResolverType): LiteRT's if installed, else tf.lite's."""
    try:
        litert = importlib.import_module('ai_edge_litert.interpreter')
    except ImportError:
        return tf.lite.Interpreter, tf.lite.experimental.OpResolverType
    return litert.Interpreter, litert.OpResolverType


def tflite_interpreter(model: bytes, preserve_all_tensors: bool = False):
    """An interpreter on the reference kernels, tensors not yet allocated.

    Args:
        model: a TFLite flatbuffer.
        preserve_all_tensors: keep every intermediate tensor readable after
            `invoke()` (TFLite's `experimental_preserve_all_tensors`), for
            per-layer parity.

    Returns:
        The interpreter (LiteRT's or `tf.lite.Interpreter`).
    """
    interpreter_class, resolver = _interpreter_api()
    with warnings.catch_warnings():
        # TF >= 2.18 announces the move to ai_edge_litert on every call.
        warnings.filterwarnings('ignore', message='.*Interpreter is deprec')
        return interpreter_class(
            model_content=model,
            experimental_op_resolver_type=(
                resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES),
            experimental_preserve_all_tensors=preserve_all_tensors)


def ops_details(interpreter) -> list:
    """The operators in execution order.

    Neither interpreter has a public method for this; `_get_ops_details` is
    private but has been stable since TF 2.4 and exists in LiteRT too.
    """
    return interpreter._get_ops_details()  # pylint: disable=protected-access


def is_float(dtype) -> bool:
    """True for numpy float16/32/64 dtypes."""
    return np.dtype(dtype).type in _FLOAT_TYPES


def quantize(x: np.ndarray, scale: float, zero_point: int,
             dtype) -> np.ndarray:
    """Quantizes as TFLite does (round half away from zero, clamp)."""
    info = np.iinfo(dtype)
    scaled = x / scale
    q = np.sign(scaled) * np.floor(np.abs(scaled) + 0.5) + zero_point
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """`scale * (q - zero_point)` as float32."""
    return ((q.astype(np.float32) - zero_point) * scale).astype(np.float32)


def boundary_quantization(interpreter, which: str) -> Optional[Tuple]:
    """(scale, zero point, dtype) of the first model input or output.

    For a float input (output), those of the tensor its QUANTIZE writes (its
    DEQUANTIZE reads); None if there is no such op.
    """
    details = (interpreter.get_input_details() if which == 'input'
               else interpreter.get_output_details())
    index = details[0]['index']
    tensors = {t['index']: t for t in interpreter.get_tensor_details()}
    boundary_op, own, other = (('QUANTIZE', 'inputs', 'outputs')
                               if which == 'input' else
                               ('DEQUANTIZE', 'outputs', 'inputs'))
    if is_float(tensors[index]['dtype']):
        for op in ops_details(interpreter):
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
        reads, or None if no DEQUANTIZE writes it; None for an integer
        output that is not quantized (e.g. the labels of an ArgMax).
    """
    quantization = boundary_quantization(tflite_interpreter(model), 'output')
    return quantization[0] if quantization and quantization[0] > 0 else None


def batches(num_samples: int, batch_size: Optional[int]) -> Iterator[slice]:
    """Slices of the samples, each one run of a model.

    Args:
        num_samples: how many samples there are.
        batch_size: the model's fixed batch size; None if it is dynamic.

    Raises:
        ValueError: the samples do not split into fixed-size batches.
    """
    if batch_size is not None and num_samples % batch_size:
        raise ValueError(
            f'The model input has a fixed batch size of {batch_size}; give '
            f'a multiple of {batch_size} samples (got {num_samples}).')
    step = batch_size or _DYNAMIC_BATCH
    for start in range(0, num_samples, step):
        yield slice(start, start + step)


class TfliteRunner:
    """Runs a one-input, one-output TFLite model on float batches.

    An integer input is fed the inputs quantized with the model's input
    scale and zero point; a quantized output is dequantized.

    Attributes:
        interpreter: the interpreter (see `tflite_interpreter`).
        batch_size: the input's fixed batch size, None if it is dynamic.
    """

    def __init__(self, model: bytes, preserve_all_tensors: bool = False):
        self.interpreter = tflite_interpreter(model, preserve_all_tensors)
        detail = self.interpreter.get_input_details()[0]
        signature = detail.get('shape_signature', detail['shape'])
        self.batch_size = None if signature[0] < 0 else int(signature[0])
        self._allocated = None

    def allocate(self, batch_size: int) -> None:
        """Allocates the tensors for batches of `batch_size` samples."""
        if self._allocated == batch_size:
            return
        in_detail = self.interpreter.get_input_details()[0]
        if self.batch_size is None:
            shape = [batch_size] + list(in_detail['shape'][1:])
            self.interpreter.resize_tensor_input(in_detail['index'], shape)
        self.interpreter.allocate_tensors()
        self._allocated = batch_size

    def shared_tensors(self) -> Set[int]:
        """Indices of allocated tensors that share memory with another one.

        An op that works in place (TF 2.15's ADD does, even with
        `preserve_all_tensors`) overwrites its input with its output, so
        such a tensor does not keep its own value after `invoke()`.
        """
        owners = {}
        for detail in self.interpreter.get_tensor_details():
            try:
                view = self.interpreter.tensor(detail['index'])()
            except ValueError:  # A tensor without memory.
                continue
            if view.nbytes:
                owners.setdefault(view.__array_interface__['data'][0],
                                  []).append(detail['index'])
        return {index for group in owners.values() if len(group) > 1
                for index in group}

    def run(self, inputs: np.ndarray) -> np.ndarray:
        """Runs one batch (of `batch_size` samples, if fixed).

        Args:
            inputs: the float batch, batch first.

        Returns:
            The float outputs, batch first.
        """
        interpreter = self.interpreter
        in_detail = interpreter.get_input_details()[0]
        self.allocate(len(inputs))
        x = np.asarray(inputs, np.float32)
        if not is_float(in_detail['dtype']):
            x = quantize(x, *in_detail['quantization'], in_detail['dtype'])
        interpreter.set_tensor(in_detail['index'], x)
        interpreter.invoke()
        return self.tensor(interpreter.get_output_details()[0])

    def tensor(self, detail: dict) -> np.ndarray:
        """A tensor of the latest run, dequantized if it is quantized."""
        value = self.interpreter.get_tensor(detail['index'])
        if is_float(detail['dtype']) or not detail['quantization'][0]:
            return value
        return dequantize(value, *detail['quantization'])


def run_tflite(model: bytes, inputs: np.ndarray) -> np.ndarray:
    """Runs a one-input, one-output TFLite model on a float batch.

    A model with a fixed batch size (e.g. 1) runs batch by batch.

    Args:
        model: a TFLite flatbuffer.
        inputs: the float batch, batch first.

    Returns:
        The float outputs, batch first.

    Raises:
        ValueError: a fixed batch size that does not divide the inputs.
    """
    runner = TfliteRunner(model)
    return np.concatenate([runner.run(inputs[part]) for part in
                           batches(len(inputs), runner.batch_size)])
