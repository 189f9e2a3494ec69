"""Does a checkpoint fit a graph? Which variables are missing, unexpected or
mismatched, and why; and what quantization ranges and batch-norm statistics
it holds.

Used before restoring an old (e.g. TF 1.15 contrib QAT) checkpoint into a
rewritten graph, where a failed restore only says "Key not found".
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Tuple

import numpy as np
import tensorflow as tf

# Present in training checkpoints only; an eval graph does not read them.
_TRAINING_ONLY_SUFFIXES = ('/biased', '/local_step')
_TRAINING_ONLY_NAMES = ('fake_quantization_step',)
_RANGE_SUFFIXES = ('_quant/min', '_quant/max')
_BN_STATISTIC_SUFFIXES = ('moving_mean', 'moving_variance')
_OBJECT_KEY_MARK = '.ATTRIBUTES/'


@dataclasses.dataclass(frozen=True)
class Problem:
    """One variable that will not restore, and why."""
    name: str
    kind: str  # 'missing', 'unexpected', 'shape', 'dtype'
    reason: str


@dataclasses.dataclass
class CheckpointReport:
    """How a checkpoint fits a graph.

    Attributes:
        problems: variables that stop a restore (missing from the
            checkpoint, or with another shape or dtype).
        ignored: checkpoint variables the graph does not need, with why.
        ranges: `{range variable: value}` of the FakeQuant ranges held (a
            list for per-channel ranges).
        batch_norm_statistics: `{variable: (min, mean, max)}` of the moving
            statistics held.
    """
    problems: List[Problem]
    ignored: List[Problem]
    ranges: Dict[str, object]
    batch_norm_statistics: Dict[str, Tuple[float, float, float]]

    @property
    def ok(self) -> bool:
        return not self.problems

    def __str__(self) -> str:
        lines = ['%d problem(s); %d checkpoint variable(s) not used.' %
                 (len(self.problems), len(self.ignored))]
        lines += ['  %s %s: %s' % (p.kind.upper(), p.name, p.reason)
                  for p in self.problems]
        lines += ['  unused %s: %s' % (p.name, p.reason) for p in self.ignored]
        lines += ['  range %s = %s' % item for item in sorted(
            self.ranges.items())]
        lines += ['  statistic %s: min %g, mean %g, max %g' %
                  ((name,) + values) for name, values in sorted(
                      self.batch_norm_statistics.items())]
        return '\n'.join(lines)


def check_checkpoint(graph: tf.Graph, checkpoint: str) -> CheckpointReport:
    """Compares a checkpoint with the global variables of `graph`.

    Args:
        graph: the graph to restore into (e.g. after `create_training_graph`).
        checkpoint: a checkpoint prefix or directory.

    Returns:
        A `CheckpointReport`; `report.ok` is False when a `Saver` over the
        graph's global variables would fail to restore.

    Raises:
        ValueError: if `checkpoint` cannot be read.
    """
    reader = _reader(checkpoint)
    stored_shapes = reader.get_variable_to_shape_map()
    stored_dtypes = reader.get_variable_to_dtype_map()
    wanted = _graph_variables(graph)
    problems = []
    for name, (shape, dtype) in sorted(wanted.items()):
        if name not in stored_shapes:
            problems.append(Problem(name, 'missing',
                                    _why_missing(name, stored_shapes)))
        elif list(stored_shapes[name]) != shape:
            problems.append(Problem(name, 'shape', 'graph %s, checkpoint %s'
                                    % (shape, list(stored_shapes[name]))))
        elif stored_dtypes[name] != dtype:
            problems.append(Problem(name, 'dtype', 'graph %s, checkpoint %s'
                                    % (dtype.name, stored_dtypes[name].name)))
    ignored = [Problem(name, 'unexpected', _why_unexpected(name, wanted))
               for name in sorted(stored_shapes) if name not in wanted]
    return CheckpointReport(problems=problems, ignored=ignored,
                            ranges=_ranges(reader, stored_shapes),
                            batch_norm_statistics=_statistics(
                                reader, stored_shapes))


def _reader(checkpoint: str):
    path = tf.train.latest_checkpoint(checkpoint) or checkpoint
    try:
        return tf.train.load_checkpoint(path)
    except (tf.errors.OpError, ValueError) as error:
        raise ValueError('Cannot read checkpoint %s: %s' %
                         (checkpoint, getattr(error, 'message', error))) from None


def _graph_variables(graph: tf.Graph) -> Dict[str, Tuple[list, tf.DType]]:
    variables = graph.get_collection(tf.compat.v1.GraphKeys.GLOBAL_VARIABLES)
    return {v.op.name: (v.shape.as_list(), v.dtype.base_dtype)
            for v in variables}


def _why_missing(name: str, stored) -> str:
    suffix = name.split('/', 1)[-1]
    renamed = [key for key in stored
               if key.endswith('/' + suffix) or key == suffix]
    if renamed:
        return ('not in the checkpoint; it holds %s: a renamed scope? '
                "(restore with a Saver var_list mapping names)" % renamed[0])
    if any(_OBJECT_KEY_MARK in key for key in stored):
        return ('not in the checkpoint, which is object-based (TF2 '
                'tf.train.Checkpoint keys); save with a tf.compat.v1 Saver')
    if name.endswith(_RANGE_SUFFIXES) or name in _TRAINING_ONLY_NAMES:
        return ('quantization variable not in the checkpoint: it was saved '
                'before the rewrite (or without quantization); initialize it '
                'and restore the rest with a Saver over the other variables')
    return 'not in the checkpoint'


def _why_unexpected(name: str, wanted) -> str:
    if name.endswith(_TRAINING_ONLY_SUFFIXES) or name in _TRAINING_ONLY_NAMES:
        return ('training-only state (EMA shadow or step counter); eval '
                'graphs do not read it')
    if _OBJECT_KEY_MARK in name:
        return 'object-based (TF2) key, not a graph variable name'
    suffix = name.split('/', 1)[-1]
    renamed = [key for key in wanted if key.endswith('/' + suffix)]
    if renamed:
        return 'the graph has %s: a renamed scope?' % renamed[0]
    return 'no graph variable of that name'


def _ranges(reader, stored) -> Dict[str, object]:
    """Scalars for per-tensor ranges, lists for per-channel ones."""
    return {name: np.asarray(reader.get_tensor(name)).tolist()
            for name in stored if name.endswith(_RANGE_SUFFIXES)}


def _statistics(reader, stored) -> Dict[str, Tuple[float, float, float]]:
    result = {}
    for name in stored:
        if name.endswith(_BN_STATISTIC_SUFFIXES):
            value = reader.get_tensor(name)
            result[name] = (float(value.min()), float(value.mean()),
                            float(value.max()))
    return result
