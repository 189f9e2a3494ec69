"""The errors an export raises; each says what to do about it."""

from typing import Sequence


class ExportError(ValueError):
    """Base class of the errors raised while exporting a quantized graph."""


class TrainingGraphError(ExportError):
    """Training state feeds the outputs: range updates or the delay step."""


class UnquantizedGraphError(ExportError):
    """No FakeQuant op feeds the outputs: the graph was never rewritten."""


class MissingInputRangeError(ExportError):
    """No FakeQuant consumes a model input and the caller gave no range."""


class AsymmetricWeightsError(ExportError):
    """Int8 export of a graph whose weight ranges are not symmetric."""


class FloatOpsError(ExportError):
    """The converted model still computes some ops in floating point.

    Attributes:
        float_ops: the offending `TfliteOp` records.
        bare_layers: graph layers (Conv2D, DepthwiseConv2dNative, MatMul)
            among them with no FakeQuant on their output.
    """

    def __init__(self, float_ops: Sequence[object],
                 bare_layers: Sequence[str] = ()):
        self.float_ops = list(float_ops)
        self.bare_layers = list(bare_layers)
        lines = '\n'.join('  ' + str(op) for op in self.float_ops)
        text = (f'{len(self.float_ops)} op(s) of the TFLite model are not '
                'integer (float inputs or outputs), usually because the '
                'rewrite left a layer unquantized (no FakeQuant on its '
                f'output):\n{lines}\n')
        if self.bare_layers:
            text += (
                f'Layer(s) {", ".join(self.bare_layers)} have no bias, batch '
                'norm or activation after them, so the rewrite (like '
                'contrib) left them float: pass quantize_bare_layers=True '
                'to experimental_create_training_graph and '
                'experimental_create_eval_graph to quantize them.\n')
        super().__init__(
            text + 'Pass allow_float_ops=True to accept a mixed model.')
