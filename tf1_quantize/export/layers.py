"""Per-layer parity: each quantized activation, TFLite against fake quant.

Every quantized activation present in both models is compared in LSBs of
that tensor, in graph order, which shows where in a deep net the output's
differences come from. The TFLite tensors are read after each run with the
interpreter's `experimental_preserve_all_tensors`.
"""

import dataclasses
import io
from typing import Iterable, List, Optional, Sequence, Set

from absl import logging
import numpy as np
import tensorflow as tf

from tf1_quantize.export import files
from tf1_quantize.export import names
from tf1_quantize.export import ranges as ranges_lib

# Absorbs float rounding of values on the same grid.
ONE_LSB = 1.0 + 1e-3


@dataclasses.dataclass(frozen=True)
class LayerParity:
    """One quantized activation: TFLite tensor against FakeQuant output.

    Attributes:
        name: the FakeQuant op in the graph.
        tflite_name: the TFLite tensor compared with it.
        max_lsb: largest |tflite - reference|, in steps of the tensor.
        within_one_lsb: share of values at most one step apart.
    """
    name: str
    tflite_name: str
    max_lsb: float
    within_one_lsb: float


class LayerDifference:
    """Accumulates one layer's differences over the batches.

    Attributes:
        name: the FakeQuant op in the graph.
        detail: the TFLite tensor's details (`get_tensor_details()`).
    """

    def __init__(self, name: str, detail: dict):
        self.name, self.detail = name, detail
        self.max_lsb, self.within, self.count = 0.0, 0, 0
        self.comparable = True

    def add(self, actual: np.ndarray, expected: np.ndarray) -> None:
        """Adds one batch: the TFLite tensor (dequantized), the reference."""
        if actual.size != expected.size:
            self.comparable = False
            return
        diff = np.abs(actual.reshape(expected.shape).astype(np.float64) -
                      expected) / self.detail['quantization'][0]
        self.max_lsb = max(self.max_lsb, float(np.max(diff)))
        self.within += int(np.sum(diff <= ONE_LSB))
        self.count += diff.size

    def result(self) -> Optional[LayerParity]:
        """The summary; None if the tensors' sizes differed or nothing ran."""
        if not (self.comparable and self.count):
            return None
        return LayerParity(self.name, self.detail['name'], self.max_lsb,
                           self.within / self.count)


def match_layers(graph_def: tf.compat.v1.GraphDef, interpreter,
                 shared: Set[int]) -> List[LayerDifference]:
    """Quantized activations of the graph with their TFLite tensors.

    TFLite names a tensor after the graph ops fused into the op writing it,
    the last one first (`conv/Relu6;conv/Conv2D`): the op a FakeQuant reads.
    A model output is named after the graph output, an Identity of the
    FakeQuant. Weight tensors (named after their FakeQuant too) and int32
    biases are left out, and so are tensors in `shared`
    (`TfliteRunner.shared_tensors`), whose values do not survive a run.

    Args:
        graph_def: the fake-quant graph.
        interpreter: the TFLite interpreter, tensors allocated.
        shared: indices of tensors whose memory another tensor uses too.

    Returns:
        One accumulator per layer found in both models, in graph order.
    """
    found = ranges_lib.fake_quant_nodes(graph_def)
    weights = {node.name for node, _, is_weight in found if is_weight}
    nodes = names.node_map(graph_def)
    identities = {}
    for node in graph_def.node:
        if node.op == 'Identity':
            source = names.skip_identities(names.op_name(node.input[0]),
                                           nodes)
            identities.setdefault(source, []).append(node.name)
    by_name = {}
    for detail in interpreter.get_tensor_details():
        parts = detail['name'].split(';')
        if (np.dtype(detail['dtype']) in (np.int8, np.uint8) and
                detail['quantization'][0] > 0 and not weights & set(parts)):
            by_name.setdefault(parts[0], detail)
    layers = []
    for node, input_name, is_weight in found:
        keys = [node.name, input_name] + identities.get(node.name, [])
        details = [by_name[key] for key in keys if key in by_name]
        if details and not is_weight:
            layers.append(LayerDifference(node.name, details[0]))
    for layer in layers:
        if layer.detail['index'] in shared:
            logging.warning(
                'Per-layer parity leaves out %s: the interpreter reuses the '
                'memory of its tensor %s in place.', layer.name,
                layer.detail['name'])
    return [layer for layer in layers if layer.detail['index'] not in shared]


def format_layers(layers: Sequence[LayerParity]) -> str:
    """A table of per-layer parity, one line per layer in graph order.

    Args:
        layers: `ParityReport.layers`.

    Returns:
        The table (header and rows), without a final newline.
    """
    width = max([len('layer')] + [len(layer.name) for layer in layers])
    lines = [f'{"depth":>5}  {"layer":<{width}}  {"max LSB":>7}  '
             f'{"<=1 LSB":>8}']
    for depth, layer in enumerate(layers):
        lines.append(f'{depth:>5}  {layer.name:<{width}}  '
                     f'{layer.max_lsb:>7.2f}  '
                     f'{100 * layer.within_one_lsb:>7.2f}%')
    return '\n'.join(lines)


def plot_layers(layers: Sequence[LayerParity], path: str,
                protected_paths: Iterable[str] = ()) -> str:
    """Writes a PNG of per-layer LSB error by depth (needs matplotlib).

    Args:
        layers: `ParityReport.layers`.
        path: the .png to write (atomically).
        protected_paths: input files `path` must not be.

    Returns:
        The absolute path written.

    Raises:
        ImportError: matplotlib is not installed.
        ValueError: `path` is protected.
    """
    try:
        # pylint: disable=g-import-not-at-top
        import matplotlib
        matplotlib.use('Agg')
        from matplotlib import pyplot
    except ImportError:
        raise ImportError('The per-layer plot needs matplotlib (pip install '
                          'matplotlib); the table has the same numbers.'
                          ) from None
    depth = np.arange(len(layers))
    figure, axis = pyplot.subplots(figsize=(8, 4))
    axis.plot(depth, [layer.max_lsb for layer in layers], 'o-',
              label='max |TFLite - fake quant|')
    axis.set_xlabel('depth (quantized activations in graph order)')
    axis.set_ylabel("LSB of the layer's output")
    share = axis.twinx()
    share.plot(depth, [100 * layer.within_one_lsb for layer in layers],
               's--', color='tab:orange', label='within 1 LSB (right, %)')
    share.set_ylabel('% within 1 LSB')
    figure.legend(loc='upper center', ncol=2)
    figure.tight_layout(rect=(0, 0, 1, 0.9))
    buffer = io.BytesIO()
    figure.savefig(buffer, format='png', dpi=100)
    pyplot.close(figure)
    return files.write_atomic(path, buffer.getvalue(), protected_paths)
