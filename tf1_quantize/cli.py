"""Command line: rewrite, report and export graphs that live on disk.

    python -m tf1_quantize report --meta model.meta
    python -m tf1_quantize train  --meta model.meta --out qat.meta --quant_delay 2000
    python -m tf1_quantize eval   --meta eval.meta  --out eval_q.meta
    python -m tf1_quantize export --meta eval_q.meta --checkpoint ckpt/model \\
        --input x --output logits --inference_type int8 --input_range=0,1 \\
        --out model.tflite --parity_inputs images.npy --per_layer
    python -m tf1_quantize check  --meta model.meta --rewrite train \\
        --checkpoint old_contrib_ckpt/model.ckpt-100000
    python -m tf1_quantize compare old.tflite new.tflite --inputs x.npy \\
        --max_lsb 1

A graph is a MetaGraph (`--meta`, keeps collections) or a GraphDef
(`--graph`, binary or text). Errors print one line on stderr and exit with
status 2; inputs are never modified and outputs are written atomically.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

import numpy as np
import tensorflow as tf
from google.protobuf import message
from google.protobuf import text_format

from tf1_quantize import api
from tf1_quantize import checkpoints
from tf1_quantize import compare
from tf1_quantize import export
from tf1_quantize import graph_def as graph_def_lib
from tf1_quantize import report as report_lib

_EXIT_ERROR = 2


class CliError(Exception):
    """A problem with the command's inputs, reported in one line."""


def enter_caller_directory() -> None:
    """Makes relative paths on a `bazel run` command line mean what they say.

    `bazel run` starts a program in its runfiles tree and keeps the directory
    Bazel was started from in `BUILD_WORKING_DIRECTORY`; `tools/bazel`, which
    starts Bazel in the workspace when called from outside it, keeps its own
    caller's directory in `TF1Q_CALLER_DIRECTORY`. This changes to that
    directory. Outside `bazel run` it does nothing.
    """
    started_in = os.environ.get('BUILD_WORKING_DIRECTORY')
    if started_in:
        os.chdir(os.environ.get('TF1Q_CALLER_DIRECTORY') or started_in)


def main(argv: Optional[List[str]] = None) -> int:
    """Runs the command line; returns the process exit status."""
    args = _parser().parse_args(argv)
    try:
        args.run(args)
    except (CliError, OSError, ValueError, TypeError, KeyError,
            tf.errors.OpError) as error:
        print('tf1_quantize %s: error: %s' %
              (args.command, _one_line(error)), file=sys.stderr)
        return _EXIT_ERROR
    return 0


def _one_line(error: Exception) -> str:
    text = str(error.message if isinstance(error, tf.errors.OpError) else
               error)
    return ' '.join(text.split()) or type(error).__name__


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='python -m tf1_quantize',
                                     description=__doc__.split('\n')[0])
    commands = parser.add_subparsers(dest='command', required=True)
    for name, run, help_text in (
            ('train', _run_rewrite, 'write the QAT training rewrite'),
            ('eval', _run_rewrite, 'write the eval rewrite'),
            ('report', _run_report, 'print what a rewrite would do')):
        command = commands.add_parser(name, help=help_text)
        _add_graph_arguments(command)
        _add_rewrite_arguments(command)
        if name != 'report':
            command.add_argument('--out', required=True,
                                 help='output file (same format as input)')
        else:
            command.add_argument('--training', action='store_true',
                                 help='report the training rewrite')
        command.set_defaults(run=run)
    _add_export_command(commands)
    _add_check_command(commands)
    _add_compare_command(commands)
    return parser


def _add_graph_arguments(command):
    source = command.add_mutually_exclusive_group(required=True)
    source.add_argument('--meta', help='a MetaGraphDef file (.meta)')
    source.add_argument('--graph', help='a GraphDef file (.pb or .pbtxt)')


def _add_rewrite_arguments(command):
    command.add_argument('--weight_bits', type=int, default=8)
    command.add_argument('--activation_bits', type=int, default=8)
    command.add_argument('--symmetric', action='store_true')
    command.add_argument('--per_channel_weights', action='store_true')
    command.add_argument('--quant_delay', type=int, default=None)
    command.add_argument('--freeze_bn_delay', type=int, default=None)
    command.add_argument('--scope', default=None)


def _add_export_command(commands):
    command = commands.add_parser(
        'export', help='freeze an eval MetaGraph + checkpoint to .tflite')
    command.add_argument('--meta', required=True,
                         help='eval MetaGraph written by `eval`')
    command.add_argument('--checkpoint', required=True,
                         help='checkpoint prefix or directory')
    command.add_argument('--input', required=True, help='input tensor name')
    command.add_argument('--output', required=True, help='output tensor name')
    command.add_argument('--inference_type', choices=['int8', 'uint8'],
                         default='int8')
    command.add_argument('--input_range', default=None,
                         help='MIN,MAX of the float input values')
    command.add_argument('--allow_float_ops', action='store_true')
    command.add_argument('--out', required=True, help='.tflite to write')
    command.add_argument('--parity_inputs', default=None,
                         help='.npy of float inputs (batch first): compare '
                         'the model with the fake-quant graph')
    command.add_argument('--per_layer', action='store_true',
                         help='with --parity_inputs: parity of every '
                         'quantized activation, as a table')
    command.add_argument('--per_layer_plot', default=None,
                         help='with --per_layer: also a PNG of the LSB '
                         'error by depth (needs matplotlib)')
    command.set_defaults(run=_run_export)


def _add_check_command(commands):
    command = commands.add_parser(
        'check', help='does a checkpoint restore into a (rewritten) graph?')
    _add_graph_arguments(command)
    _add_rewrite_arguments(command)
    command.add_argument('--checkpoint', required=True,
                         help='checkpoint prefix or directory')
    command.add_argument('--rewrite', choices=['none', 'train', 'eval'],
                         default='none',
                         help='rewrite the graph first (default: as is)')
    command.set_defaults(run=_run_check)


def _add_compare_command(commands):
    command = commands.add_parser(
        'compare', help='run two .tflite models on the same inputs and '
        'compare their outputs (e.g. an old contrib export and its '
        'migrated re-export)')
    command.add_argument('old', help='the reference .tflite')
    command.add_argument('new', help='the .tflite to compare with it')
    command.add_argument('--inputs', required=True, nargs='+',
                         help='.npy per model input (batch first), in the '
                         'old model\'s input order; float values are '
                         'quantized with each model\'s input quantization')
    command.add_argument('--max_lsb', type=float, default=None,
                         help='exit with status 2 if any output differs by '
                         'more than this many output LSB')
    command.set_defaults(run=_run_compare)


def _run_compare(args):
    inputs = [np.load(path, allow_pickle=False) for path in args.inputs]
    report = compare.compare_models(args.old, args.new, inputs)
    print(report)
    if args.max_lsb is None:
        return
    if not report.within(args.max_lsb):
        raise CliError('outputs differ by up to %.2f LSB, more than '
                       '--max_lsb %g' % (report.max_diff_lsb, args.max_lsb))
    print('within --max_lsb %g' % args.max_lsb)


def _run_check(args):
    graph = _import_graph(args)
    if args.rewrite != 'none':
        is_training = args.rewrite == 'train'
        rewrite = (api.experimental_create_training_graph if is_training
                   else api.experimental_create_eval_graph)
        rewrite(graph, **_rewrite_kwargs(args, is_training))
        float_ops = api.last_report(graph).float_ops
    else:
        float_ops = report_lib.find_function_layers(graph)
    report = checkpoints.check_checkpoint(graph, args.checkpoint)
    print(report)
    for op in float_ops:  # Their weights restore, but stay float.
        print('  %s' % op)
    failures = []
    if report.problems:
        failures.append('%d variable(s) would not restore from %s: %s' % (
            len(report.problems), args.checkpoint,
            ', '.join(p.name for p in report.problems)))
    if report.lost:
        failures.append('%d trained quantization value(s) would be lost: %s'
                        % (len(report.lost), ', '.join(report.lost)))
    if failures:
        raise CliError('; '.join(failures))


def _rewrite_kwargs(args, is_training):
    kwargs = dict(weight_bits=args.weight_bits,
                  activation_bits=args.activation_bits,
                  symmetric=args.symmetric, scope=args.scope,
                  per_channel_weights=args.per_channel_weights)
    if args.quant_delay is not None:
        kwargs['quant_delay'] = args.quant_delay
    if is_training:
        kwargs['freeze_bn_delay'] = args.freeze_bn_delay
    elif args.freeze_bn_delay is not None:
        raise CliError('--freeze_bn_delay only applies to `train`.')
    return kwargs


def _run_rewrite(args):
    is_training = args.command == 'train'
    kwargs = _rewrite_kwargs(args, is_training)
    source = args.meta or args.graph
    if args.meta:
        result = graph_def_lib.rewrite_meta_graph_def(
            _read_proto(source, tf.compat.v1.MetaGraphDef), is_training,
            **kwargs)
    else:
        result = graph_def_lib.rewrite_graph_def(
            _read_proto(source, tf.compat.v1.GraphDef), is_training,
            **kwargs)
    path = export.write_atomic(args.out, result.SerializeToString(),
                               protected_paths=[source])
    print('wrote %s' % path)


def _run_report(args):
    graph = _import_graph(args)
    rewrite = (api.experimental_create_training_graph if args.training else
               api.experimental_create_eval_graph)
    rewrite(graph, **_rewrite_kwargs(args, args.training))
    print(api.last_report(graph))


def _run_export(args):
    if args.per_layer and args.parity_inputs is None:
        raise CliError('--per_layer needs --parity_inputs')
    if args.per_layer_plot and not args.per_layer:
        raise CliError('--per_layer_plot needs --per_layer')
    inputs = [args.meta] + ([args.parity_inputs] if args.parity_inputs else [])
    export.check_output_path(args.out, inputs)
    if args.per_layer_plot:
        export.check_output_path(args.per_layer_plot, inputs + [args.out])
    parity_inputs = None
    if args.parity_inputs:
        parity_inputs = np.load(args.parity_inputs, allow_pickle=False)
    checkpoint = _checkpoint_prefix(args.checkpoint)
    graph = tf.Graph()
    with graph.as_default():
        saver = tf.compat.v1.train.import_meta_graph(
            _read_proto(args.meta, tf.compat.v1.MetaGraphDef))
        _check_tensor(graph, args.input)
        _check_tensor(graph, args.output)
        with tf.compat.v1.Session() as sess:
            saver.restore(sess, checkpoint)
            input_ranges = None
            if args.input_range:
                input_ranges = {args.input: _parse_range(args.input_range)}
            _, report = export.export_session(
                sess, args.input, args.output,
                inference_type=getattr(tf, args.inference_type),
                input_ranges=input_ranges, parity_inputs=parity_inputs,
                output_path=args.out, allow_float_ops=args.allow_float_ops,
                protected_paths=inputs, per_layer=args.per_layer)
    print('wrote %s (%d bytes, %s)' % (report.path, report.size_bytes,
                                        report.inference_type))
    if report.parity:
        print('parity: %s' % report.parity)
    if args.per_layer:
        print(export.format_layers(report.parity.layers))
    if args.per_layer_plot:
        try:
            print('wrote %s' % export.plot_layers(
                report.parity.layers, args.per_layer_plot,
                inputs + [args.out]))
        except ImportError as error:
            print('tf1_quantize export: no plot: %s' % error,
                  file=sys.stderr)


def _checkpoint_prefix(path: str) -> str:
    """A checkpoint prefix, or the latest checkpoint of a directory."""
    if not os.path.isdir(path):
        return path
    prefix = tf.train.latest_checkpoint(path)
    if prefix is None:
        raise CliError("no checkpoint in directory %s (no 'checkpoint' file "
                       'naming one)' % path)
    return prefix


def _import_graph(args) -> tf.Graph:
    graph = tf.Graph()
    with graph.as_default():
        if args.meta:
            tf.compat.v1.train.import_meta_graph(
                _read_proto(args.meta, tf.compat.v1.MetaGraphDef))
        else:
            tf.graph_util.import_graph_def(
                _read_proto(args.graph, tf.compat.v1.GraphDef), name='')
    return graph


def _read_proto(path: str, proto_type):
    """Reads a binary or text protocol buffer, with a clear error."""
    with open(path, 'rb') as f:
        data = f.read()
    proto = proto_type()
    try:
        proto.ParseFromString(data)
        if proto.ByteSize():
            return proto
    except message.DecodeError:
        pass
    try:
        text_format.Parse(data.decode('utf-8'), proto)
    except (UnicodeDecodeError, text_format.ParseError):
        raise CliError('%s is not a %s (binary or text protocol buffer)' %
                       (path, proto_type.DESCRIPTOR.name)) from None
    if not proto.ByteSize():
        raise CliError('%s holds an empty %s' %
                       (path, proto_type.DESCRIPTOR.name))
    return proto


def _check_tensor(graph: tf.Graph, name: str) -> None:
    op_name = name.split(':')[0]
    try:
        graph.get_operation_by_name(op_name)
    except KeyError:
        raise CliError("no op named '%s' in the graph" % op_name) from None


def _parse_range(text: str):
    try:
        low, high = (float(v) for v in text.split(','))
    except ValueError:
        raise CliError("--input_range must be 'MIN,MAX', got '%s'" %
                       text) from None
    return low, high
