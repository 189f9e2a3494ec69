"""Export of a rewritten eval graph: freeze, convert to integer TFLite, check.

The flow this package serves is the one of `tf.contrib.quantize`:

1. build the forward graph with batch norm in inference mode, call
   `create_eval_graph` (or the experimental variant), restore the QAT
   checkpoint into a session;
2. `freeze_session` (module `freeze`) turns the variables into constants;
3. `convert_to_tflite` (module `convert`) hands the frozen GraphDef, whose
   FakeQuant ops carry the learned ranges (module `ranges`), to the TF1
   converter with `inference_type` uint8 or int8;
4. module `check`: `check_eval_graph` refuses training rewrites and graphs
   never rewritten before any conversion work; `find_float_ops` /
   `check_integer_only` list the ops that stayed float afterwards;
5. `compare_with_reference` (module `parity`) runs the TFLite model
   (module `interpreter`) and the fake-quant graph on the same inputs and
   measures how far apart they are, in output LSBs, per position and
   optionally per layer (module `layers`);
6. `write_atomic` (module `files`) saves the bytes.

`export_session` (module `session`) does all of that in one call.
"""

from tf1_quantize.export.check import bare_layers
from tf1_quantize.export.check import check_eval_graph
from tf1_quantize.export.check import check_integer_only
from tf1_quantize.export.check import check_symmetric_weights
from tf1_quantize.export.check import find_float_ops
from tf1_quantize.export.check import TfliteOp
from tf1_quantize.export.convert import convert_to_tflite
from tf1_quantize.export.errors import AsymmetricWeightsError
from tf1_quantize.export.errors import ExportError
from tf1_quantize.export.errors import FloatOpsError
from tf1_quantize.export.errors import MissingInputRangeError
from tf1_quantize.export.errors import TrainingGraphError
from tf1_quantize.export.errors import UnquantizedGraphError
from tf1_quantize.export.files import check_output_path
from tf1_quantize.export.files import write_atomic
from tf1_quantize.export.freeze import freeze_session
from tf1_quantize.export.freeze import resolve_output_name
from tf1_quantize.export.interpreter import output_step
from tf1_quantize.export.interpreter import run_tflite
from tf1_quantize.export.interpreter import tflite_interpreter
from tf1_quantize.export.layers import format_layers
from tf1_quantize.export.layers import LayerParity
from tf1_quantize.export.layers import plot_layers
from tf1_quantize.export.parity import compare_with_reference
from tf1_quantize.export.parity import parity_report
from tf1_quantize.export.parity import ParityReport
from tf1_quantize.export.parity import Reference
from tf1_quantize.export.parity import run_reference
from tf1_quantize.export.ranges import fake_quant_ranges
from tf1_quantize.export.ranges import FakeQuantRange
from tf1_quantize.export.ranges import input_stats_from_graph
from tf1_quantize.export.ranges import input_stats_from_range
from tf1_quantize.export.ranges import Range
from tf1_quantize.export.ranges import resolve_input_stats
from tf1_quantize.export.session import export_session
from tf1_quantize.export.session import ExportReport

__all__ = [
    'AsymmetricWeightsError',
    'bare_layers',
    'check_eval_graph',
    'check_integer_only',
    'check_output_path',
    'check_symmetric_weights',
    'compare_with_reference',
    'convert_to_tflite',
    'export_session',
    'ExportError',
    'ExportReport',
    'fake_quant_ranges',
    'FakeQuantRange',
    'find_float_ops',
    'FloatOpsError',
    'format_layers',
    'freeze_session',
    'input_stats_from_graph',
    'input_stats_from_range',
    'LayerParity',
    'MissingInputRangeError',
    'output_step',
    'parity_report',
    'ParityReport',
    'plot_layers',
    'Range',
    'Reference',
    'resolve_input_stats',
    'resolve_output_name',
    'run_reference',
    'run_tflite',
    'tflite_interpreter',
    'TfliteOp',
    'TrainingGraphError',
    'UnquantizedGraphError',
    'write_atomic',
]
