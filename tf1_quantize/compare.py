"""Does a migrated TFLite model compute what the old one did?

Runs two TFLite models (e.g. one converted from a TF 1.15 contrib QAT model
years ago, and its re-export with this library) on the same inputs and
measures how far apart their outputs are, in output quantization steps
(LSB), and how often their argmax agree.

Inputs and outputs are matched by order and per-sample shape. Each model
gets the float inputs quantized with its own input scale and zero point
(a float input takes them as they are), and is run one batch at a time
where its batch size is fixed. Integer outputs are dequantized with each
model's own scale and zero point before they are compared.
"""

from __future__ import annotations

import dataclasses
import os
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

from tf1_quantize.export import interpreter as interpreter_lib

Model = Union[bytes, str, os.PathLike]
# Absorbs float rounding of values on the same grid.
_LSB_MARGIN = 1e-3


@dataclasses.dataclass(frozen=True)
class OutputDifference:
    """How one output of the new model differs from the old model's.

    Attributes:
        old_name: the output's tensor name in the old model.
        new_name: the matching output's name in the new model.
        shape: the per-sample shape.
        positions: number of argmax positions compared: one per sample, or
            per sample and position for a dense output (argmax over the
            last axis); 0 when the last axis has one element or none.
        argmax_agreement: share of positions whose argmax agree; None when
            there are no positions.
        max_abs_diff: largest |new - old| of the dequantized outputs.
        step: one LSB: the old output's quantization step (the new one's
            if the old output is float); None if both are float.
        max_diff_lsb: largest |new - old| in LSB; None without a step.
        mean_diff_lsb: mean |new - old| in LSB; None without a step.
        within_one_lsb: share of values at most one LSB apart; None without
            a step.
    """
    old_name: str
    new_name: str
    shape: Tuple[int, ...]
    positions: int
    argmax_agreement: Optional[float]
    max_abs_diff: float
    step: Optional[float]
    max_diff_lsb: Optional[float]
    mean_diff_lsb: Optional[float]
    within_one_lsb: Optional[float]

    def __str__(self) -> str:
        names = (self.old_name if self.new_name == self.old_name else
                 '%s -> %s' % (self.old_name, self.new_name))
        text = '%s %s: ' % (names, list(self.shape))
        if self.argmax_agreement is not None:
            text += 'argmax agreement %.2f%% of %d, ' % (
                100 * self.argmax_agreement, self.positions)
        if self.step is None:
            return text + 'max |diff| %.4g (float outputs)' % (
                self.max_abs_diff)
        return text + ('max diff %.2f LSB, mean %.3f LSB, %.2f%% within 1 '
                       'LSB (LSB %.4g)' % (
                           self.max_diff_lsb, self.mean_diff_lsb,
                           100 * self.within_one_lsb, self.step))


@dataclasses.dataclass(frozen=True)
class Comparison:
    """The result of `compare_models`.

    Attributes:
        num_samples: number of input samples both models ran on.
        old: how the old model was fed and run.
        new: how the new model was fed and run.
        outputs: one `OutputDifference` per output, in the old model's order.
    """
    num_samples: int
    old: str
    new: str
    outputs: Tuple[OutputDifference, ...]

    @property
    def max_diff_lsb(self) -> Optional[float]:
        """The largest difference in LSB over all outputs (None if none)."""
        diffs = [o.max_diff_lsb for o in self.outputs
                 if o.max_diff_lsb is not None]
        return max(diffs) if diffs else None

    def within(self, max_lsb: float) -> bool:
        """Whether every output differs by at most `max_lsb` LSB.

        Raises:
            ValueError: if no output has an LSB (both models float).
        """
        if self.max_diff_lsb is None:
            raise ValueError('An LSB bound needs a quantized output; both '
                             'models have float outputs')
        return self.max_diff_lsb <= max_lsb + _LSB_MARGIN

    def __str__(self) -> str:
        lines = ['%d samples' % self.num_samples, 'old: ' + self.old,
                 'new: ' + self.new]
        lines += ['output %d: %s' % item for item in enumerate(self.outputs)]
        return '\n'.join(lines)


def compare_models(old: Model, new: Model,
                   inputs: Union[np.ndarray, Sequence[np.ndarray]]
                   ) -> Comparison:
    """Runs two TFLite models on the same inputs and compares the outputs.

    Args:
        old: the reference model: a TFLite flatbuffer or a path to one.
        new: the model to compare with it, the same way.
        inputs: one batch (batch first) per input of the old model, in its
            order; a single array for a one-input model. Float values are
            quantized with each model's own input quantization; integer
            values are fed as they are to a model whose input has their
            dtype (and cast for a float input).

    Returns:
        A `Comparison`.

    Raises:
        ValueError: if the models' inputs or outputs do not match each other
            or the inputs, or the inputs cannot be fed to a model.
    """
    if isinstance(inputs, np.ndarray):
        inputs = [inputs]
    inputs = [np.asarray(x) for x in inputs]
    old_model, new_model = _Model(old, 'old'), _Model(new, 'new')
    if not inputs or any(x.ndim == 0 or len(x) != len(inputs[0])
                         for x in inputs) or not len(inputs[0]):
        raise ValueError('Give one non-empty batch per model input, all of '
                         'the same length')
    old_inputs = old_model.inputs
    if [x.shape[1:] for x in inputs] != [_shape(d) for d in old_inputs]:
        raise ValueError('The inputs have per-sample shapes %s; the old '
                         'model takes %s' % (
                             [list(x.shape[1:]) for x in inputs],
                             [list(_shape(d)) for d in old_inputs]))
    new_order = _match(old_inputs, new_model.inputs, 'input')
    old_outputs = old_model.run(inputs)
    new_outputs = new_model.run([inputs[new_order.index(i)]
                                 for i in range(len(inputs))])
    output_order = _match(old_model.outputs, new_model.outputs, 'output')
    differences = tuple(
        _difference(old_model.outputs[i], new_model.outputs[j],
                    old_outputs[i], new_outputs[j])
        for i, j in enumerate(output_order))
    return Comparison(num_samples=len(inputs[0]), old=str(old_model),
                      new=str(new_model), outputs=differences)


def _shape(detail) -> Tuple[int, ...]:
    return tuple(int(d) for d in detail['shape'][1:])


def _match(old: List[dict], new: List[dict], kind: str) -> List[int]:
    """For each old tensor, the first unused new one of its shape."""
    if len(old) != len(new):
        raise ValueError('The old model has %d %ss, the new one %d' %
                         (len(old), kind, len(new)))
    order = []
    for index, detail in enumerate(old):
        candidates = [j for j, other in enumerate(new)
                      if j not in order and _shape(other) == _shape(detail)]
        if not candidates:
            raise ValueError(
                'No %s of the new model (per-sample shapes %s) matches %s %d '
                '(%s, shape %s) of the old one' % (
                    kind, [list(_shape(d)) for d in new], kind, index,
                    detail['name'], list(_shape(detail))))
        order.append(candidates[0])
    return order


class _Model:
    """A TFLite model, fed float inputs and giving float outputs."""

    def __init__(self, model: Model, label: str):
        if not isinstance(model, bytes):
            with open(model, 'rb') as f:
                model = f.read()
        try:
            self._interpreter = interpreter_lib.tflite_interpreter(model)
        except ValueError as error:
            raise ValueError('The %s model is not a TFLite model: %s' %
                             (label, error)) from None
        self.inputs = self._interpreter.get_input_details()
        self.outputs = self._interpreter.get_output_details()
        batches = {int(d['shape_signature'][0]) for d in self.inputs}
        # A batch size the model fixes (-1: any batch size).
        self.batch = None if -1 in batches else max(batches)
        self.label = label

    def __str__(self) -> str:
        def describe(detail):
            text = '%s %s' % (np.dtype(detail['dtype']).name, detail['name'])
            if not interpreter_lib.is_float(detail['dtype']):
                text += ' (scale %.6g, zero point %d)' % detail[
                    'quantization']
            return text
        return '%s; %s; runs %s' % (
            ', '.join('in ' + describe(d) for d in self.inputs),
            ', '.join('out ' + describe(d) for d in self.outputs),
            'the whole batch at once' if self.batch is None else
            '%d sample(s) at a time' % self.batch)

    def run(self, inputs: List[np.ndarray]) -> List[np.ndarray]:
        feeds = [self._feed(x, d) for x, d in zip(inputs, self.inputs)]
        size = self.batch or len(inputs[0])
        if len(inputs[0]) % size:
            raise ValueError('The %s model takes batches of %d; %d samples '
                             'do not divide into them' %
                             (self.label, size, len(inputs[0])))
        interpreter = self._interpreter
        for detail, x in zip(self.inputs, feeds):
            interpreter.resize_tensor_input(detail['index'],
                                            [size] + list(x.shape[1:]))
        interpreter.allocate_tensors()
        chunks = []
        for start in range(0, len(inputs[0]), size):
            for detail, x in zip(self.inputs, feeds):
                interpreter.set_tensor(detail['index'],
                                       x[start:start + size])
            interpreter.invoke()
            chunks.append([self._dequantized(d) for d in self.outputs])
        return [np.concatenate(parts) for parts in zip(*chunks)]

    def _feed(self, x: np.ndarray, detail) -> np.ndarray:
        dtype = np.dtype(detail['dtype'])
        if interpreter_lib.is_float(dtype):
            return x.astype(dtype)
        if not interpreter_lib.is_float(x.dtype):
            if x.dtype != dtype:
                raise ValueError(
                    'The inputs hold %s values, the %s model takes %s: give '
                    'float values' % (x.dtype.name, self.label, dtype.name))
            return x
        scale, zero_point = detail['quantization']
        return interpreter_lib.quantize(x.astype(np.float32), scale,
                                        zero_point, dtype)

    def _dequantized(self, detail) -> np.ndarray:
        y = self._interpreter.get_tensor(detail['index'])
        if interpreter_lib.is_float(y.dtype):
            return y.astype(np.float64)
        scale, zero_point = detail['quantization']
        return interpreter_lib.dequantize(y, scale, zero_point).astype(
            np.float64)


def _step(old_detail, new_detail) -> Optional[float]:
    for detail in (old_detail, new_detail):
        if not interpreter_lib.is_float(detail['dtype']):
            return float(detail['quantization'][0])
    return None


def _difference(old_detail, new_detail, old: np.ndarray,
                new: np.ndarray) -> OutputDifference:
    diff = np.abs(new - old)
    shape = old.shape[1:]
    positions, agreement = 0, None
    if shape and shape[-1] > 1:
        agree = np.argmax(old, axis=-1) == np.argmax(new, axis=-1)
        positions, agreement = agree.size, float(np.mean(agree))
    step = _step(old_detail, new_detail)
    in_lsb = None if step is None else diff / step
    return OutputDifference(
        old_name=old_detail['name'], new_name=new_detail['name'],
        shape=tuple(int(d) for d in shape), positions=positions,
        argmax_agreement=agreement, max_abs_diff=float(np.max(diff)),
        step=step,
        max_diff_lsb=None if step is None else float(np.max(in_lsb)),
        mean_diff_lsb=None if step is None else float(np.mean(in_lsb)),
        within_one_lsb=None if step is None else float(
            np.mean(in_lsb <= 1 + _LSB_MARGIN)))
