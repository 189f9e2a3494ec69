"""Parity: how closely a TFLite model follows the fake-quant graph.

Both run on the same inputs, batch by batch (sample by sample for a model
whose batch size is fixed at 1). The output is compared value by value in
output LSBs and, per position (the last axis holds the classes: one
position per sample for a classifier, one per pixel for a segmentation
head), by argmax. With `per_layer`, every quantized activation present in
both models is compared too (module `layers`), in the same runs.
"""

import contextlib
import dataclasses
from typing import Iterator, Optional, Tuple, Union

import numpy as np
import tensorflow as tf

from tf1_quantize.export import interpreter as interpreter_lib
from tf1_quantize.export import layers as layers_lib
from tf1_quantize.export import names

Reference = Union[tf.compat.v1.GraphDef, tf.compat.v1.Session]


@dataclasses.dataclass(frozen=True)
class ParityReport:
    """How closely a TFLite model follows the fake-quant graph.

    The step-based fields are None when the model output is float and not
    the result of a DEQUANTIZE (a mixed model whose last op is float).

    Argmax is taken over the last axis, per position. A position agrees
    when the class TFLite picks is, in the reference, within one output
    step of the reference's top value: integer outputs tie often, and
    values one step apart are as close as the two arithmetics can be.
    `exact_argmax_agreement` asks for the same index (lowest index on ties,
    in both models, on the output grid).

    Attributes:
        num_samples: number of input samples compared.
        argmax_agreement: share of positions whose argmax agree (above).
        max_abs_diff: largest |tflite - reference|.
        max_diff_lsb: largest |tflite - reference|, in output steps.
        mean_diff_lsb: mean |tflite - reference|, in output steps.
        within_one_lsb: share of output values at most one step apart.
        output_scale: the model output's quantization step (one LSB).
        argmax_positions: number of positions compared (samples times the
            positions of one output).
        exact_argmax_agreement: share of positions with the same argmax.
        layers: per-layer parity, in graph order (empty unless asked for).
        labels: the output holds class labels (an integer output that is
            not quantized, such as an ArgMax's); each value is a position,
            agreeing when the labels are equal.
    """
    num_samples: int
    argmax_agreement: float
    max_abs_diff: float
    max_diff_lsb: Optional[float]
    mean_diff_lsb: Optional[float]
    within_one_lsb: Optional[float]
    output_scale: Optional[float]
    argmax_positions: int = 0
    exact_argmax_agreement: float = 0.0
    layers: Tuple[layers_lib.LayerParity, ...] = ()
    labels: bool = False

    def __str__(self) -> str:
        text = (f'argmax agreement {100 * self.argmax_agreement:.2f}% of '
                f'{self.argmax_positions} positions (exact '
                f'{100 * self.exact_argmax_agreement:.2f}%), ')
        if self.output_scale is None:
            kind = 'labels' if self.labels else 'float output'
            text += f'max |diff| {self.max_abs_diff:.4g} ({kind})'
        else:
            text += (f'max diff {self.max_diff_lsb:.2f} LSB, '
                     f'{100 * self.within_one_lsb:.2f}% within 1 LSB')
        return text + f' ({self.num_samples} samples)'


def _by_position(values: np.ndarray) -> np.ndarray:
    """`[positions, classes]`: the last axis holds the classes."""
    return values.reshape(-1, values.shape[-1] if values.ndim > 1 else 1)


def _argmax_agreement(actual: np.ndarray, expected: np.ndarray,
                      step: Optional[float]) -> Tuple[np.ndarray, np.ndarray]:
    """Per position: (same argmax, TFLite's class within a step of the top).

    Without a step, both are plain argmax equality.
    """
    rows_a, rows_e = _by_position(actual), _by_position(expected)
    if step is None:
        exact = np.argmax(rows_a, axis=-1) == np.argmax(rows_e, axis=-1)
        return exact, exact
    # On the output grid, ties are exact in both models.
    rows_a, rows_e = np.round(rows_a / step), np.round(rows_e / step)
    picked = np.argmax(rows_a, axis=-1)
    chosen = rows_e[np.arange(len(rows_e)), picked]
    return (picked == np.argmax(rows_e, axis=-1),
            chosen >= np.max(rows_e, axis=-1) - 1)


def parity_report(actual: np.ndarray, expected: np.ndarray,
                  step: Optional[float],
                  labels: bool = False) -> ParityReport:
    """Summarizes the difference of two output batches.

    Args:
        actual: outputs of the TFLite model, batch first.
        expected: outputs of the reference, same shape.
        step: one output quantization step (LSB); None for a float output
            (the step-based fields are then None, argmax is plain argmax).
        labels: the outputs are class labels already (an integer output
            such as an ArgMax's): every value is a position, and positions
            agree when their labels are equal. Needs `step` None.

    Returns:
        A `ParityReport` (without layers).

    Raises:
        ValueError: if the shapes differ, the batch is empty, the step is
            not positive or given with labels.
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
    if labels and step is not None:
        raise ValueError('Labels have no quantization step.')
    abs_diff = np.abs(actual - expected)
    max_diff = mean_diff = within = None
    if step is not None:
        diff = abs_diff / step
        max_diff, mean_diff = float(np.max(diff)), float(np.mean(diff))
        within = float(np.mean(diff <= layers_lib.ONE_LSB))
    if labels:
        exact = agree = (actual == expected).reshape(-1)
    else:
        exact, agree = _argmax_agreement(actual, expected, step)
    return ParityReport(
        num_samples=len(actual),
        argmax_agreement=float(np.mean(agree)),
        max_abs_diff=float(np.max(abs_diff)),
        max_diff_lsb=max_diff,
        mean_diff_lsb=mean_diff,
        within_one_lsb=within,
        output_scale=None if step is None else float(step),
        argmax_positions=len(exact),
        exact_argmax_agreement=float(np.mean(exact)),
        labels=labels)


# -------------------------------------------------------------- running


@contextlib.contextmanager
def _reference_session(reference: Reference,
                       ) -> Iterator[tf.compat.v1.Session]:
    """The session to run: the caller's, or one on the imported GraphDef."""
    if isinstance(reference, tf.compat.v1.Session):
        yield reference
        return
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(reference, name='')
    with tf.compat.v1.Session(graph=graph) as session:
        yield session


def _fixed_batch(graph: tf.Graph, input_name: str) -> Optional[int]:
    """The batch size of the input placeholder, None if not fixed."""
    shape = graph.get_tensor_by_name(names.tensor_name(input_name)).shape
    return shape[0] if shape.rank else None


def run_reference(reference: Reference, input_name: str, output_name: str,
                  inputs: np.ndarray) -> np.ndarray:
    """Runs the fake-quant graph: a session holding it, or a GraphDef.

    An input whose batch size is fixed is fed batch by batch.

    Args:
        reference: a session (restored eval graph) or a frozen GraphDef.
        input_name: the input op or tensor name.
        output_name: the output op or tensor name.
        inputs: the float batch.

    Returns:
        The float outputs.

    Raises:
        ValueError: a fixed batch size that does not divide the inputs.
    """
    fetch, feed = names.tensor_name(output_name), names.tensor_name(input_name)
    with _reference_session(reference) as session:
        batch = _fixed_batch(session.graph, input_name)
        return np.concatenate([session.run(fetch, {feed: inputs[part]})
                               for part in interpreter_lib.batches(
                                   len(inputs), batch)])


def compare_with_reference(model: bytes,
                           reference: Reference,
                           input_name: str,
                           output_name: str,
                           inputs: np.ndarray,
                           round_trip_inputs: bool = True,
                           per_layer: bool = False) -> ParityReport:
    """Measures how closely a TFLite model follows the fake-quant graph.

    Both run on the same float inputs, batch by batch (by the model's batch
    size when it is fixed, e.g. one sample at a time), the reference once
    per batch for the output and every layer. With `round_trip_inputs`, the
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
        per_layer: also compare every quantized activation found in both
            models (`ParityReport.layers`), with TFLite's
            `experimental_preserve_all_tensors`.

    Returns:
        A `ParityReport`.

    Raises:
        ValueError: no inputs, or a fixed batch size that does not divide
            them.
    """
    inputs = np.asarray(inputs, np.float32)
    runner = interpreter_lib.TfliteRunner(model,
                                          preserve_all_tensors=per_layer)
    ref_inputs = inputs
    quantization = interpreter_lib.boundary_quantization(runner.interpreter,
                                                         'input')
    if round_trip_inputs and quantization:
        scale, zero_point, dtype = quantization
        ref_inputs = interpreter_lib.dequantize(
            interpreter_lib.quantize(inputs, scale, zero_point, dtype),
            scale, zero_point)
    actual, expected = [], []
    with _reference_session(reference) as session:
        batch = (runner.batch_size or
                 _fixed_batch(session.graph, input_name))
        parts = list(interpreter_lib.batches(len(inputs), batch))
        layers = []
        if per_layer and parts:
            runner.allocate(len(inputs[parts[0]]))
            layers = layers_lib.match_layers(session.graph.as_graph_def(),
                                             runner.interpreter,
                                             runner.shared_tensors())
        fetches = [names.tensor_name(output_name)] + [
            names.tensor_name(layer.name) for layer in layers]
        for part in parts:
            values = session.run(
                fetches, {names.tensor_name(input_name): ref_inputs[part]})
            actual.append(runner.run(inputs[part]))
            expected.append(values[0])
            for layer, value in zip(layers, values[1:]):
                layer.add(runner.tensor(layer.detail), value)
    if not actual:
        raise ValueError('Parity needs at least one sample.')
    output = interpreter_lib.boundary_quantization(runner.interpreter,
                                                   'output')
    step = output[0] if output and output[0] > 0 else None
    labels = output is not None and not (
        output[0] > 0 or interpreter_lib.is_float(output[2]))
    report = parity_report(np.concatenate(actual), np.concatenate(expected),
                           step, labels)
    return dataclasses.replace(report, layers=tuple(
        r for r in (layer.result() for layer in layers) if r))
