"""Does a checkpoint fit a graph? Which variables are missing, unexpected or
mismatched, and why; and what quantization ranges and batch-norm statistics
it holds.

Used before restoring an old (e.g. TF 1.15 contrib QAT) checkpoint into a
rewritten graph, where a failed restore only says "Key not found". For
quantization state it says which ranges will start from their initializers
instead of trained values, what that does to accuracy, and the exact
`init_from_checkpoint` mapping that restores everything else.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Dict, List, Tuple

import numpy as np
import tensorflow as tf

from tf1_quantize import names

# Present in training checkpoints only; an eval graph does not read them.
_TRAINING_ONLY_SUFFIXES = ('/biased', '/local_step')
_TRAINING_ONLY_NAMES = (names.STEP_COUNTER,)
# `<P>/min` and `<P>/max` of a quantizer `<P>` (`.../act_quant`,
# `.../weights_quant_1`, ...), and their moving-average state.
_RANGE = re.compile(r'_quant(_\d+)?/(min|max)$')
_EMA_STATE = re.compile(r'_quant(_\d+)?/(min|max)/(biased|local_step)$')
_BN_STATISTIC_SUFFIXES = ('moving_mean', 'moving_variance')
_OBJECT_KEY_MARK = '.ATTRIBUTES/'
_EMA_DECAY = 0.999


@dataclasses.dataclass(frozen=True)
class FreshRange:
    """A quantization range that will not start from trained values.

    Attributes:
        prefix: the quantizer, e.g. `Conv/act_quant` (variables
            `prefix/min`, `prefix/max`).
        weights: a weight range (`weights_quant`), else an activation range.
        training: the graph updates the range (a training rewrite).
        initial: the `(min, max)` the range starts from.
        step: one quantization step of the initial range.
        restored: `min`/`max` restore, but not the moving-average state
            (training activation ranges only).
        lost: a trained range is lost: the graph evaluates it, or the
            checkpoint holds quantization ranges (a QAT checkpoint) and the
            training graph's moving average starts over.
    """
    prefix: str
    weights: bool
    training: bool
    initial: Tuple[float, float]
    step: float
    restored: bool
    lost: bool

    @property
    def effect(self) -> str:
        """What starting over does, the same for every range of its kind."""
        if self.restored:
            return ('activation range(s) restored without their moving-'
                    'average state: the first training step replaces each '
                    'with that batch\'s range (restore from a training '
                    'checkpoint, which holds that state, to keep them)')
        if self.weights and self.training:
            return ('weight range(s), recomputed from the weights every '
                    'training step: harmless in training')
        if self.weights:
            return ('weight range(s) read by the eval graph: weights under '
                    'half a step in magnitude become 0 and the rest are '
                    'coarse, so accuracy collapses')
        if self.training:
            return ('activation range(s): the moving average (decay %g, '
                    'debiased) takes the first batch\'s range, then averages '
                    'the batches seen; until it settles (a few thousand '
                    'steps) activations are clipped and rounded unlike the '
                    'trained model\'s, and accuracy dips' % _EMA_DECAY)
        return ('activation range(s) read by the eval graph: activations are '
                'clipped to them and rounded to their step, so accuracy is '
                'lost wherever the trained range differed')

    def __str__(self) -> str:
        low, high = self.initial
        start = ('restored from the checkpoint' if self.restored else
                 'starts from [%g, %g] (step %.3g)' % (low, high, self.step))
        return '%s%s: %s' % ('LOST ' if self.lost else '', self.prefix, start)


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
        checkpoint: the checkpoint checked, as given.
        problems: variables that stop a restore (missing from the
            checkpoint, or with another shape or dtype), other than the
            quantization state in `fresh_ranges` and `fresh_step_counter`.
        ignored: checkpoint variables the graph does not need, with why.
        ranges: `{range variable: value}` of the FakeQuant ranges held (a
            list for per-channel ranges).
        batch_norm_statistics: `{variable: (min, mean, max)}` of the moving
            statistics held.
        fresh_ranges: quantization ranges of the graph that will start from
            their initializers (or lose their moving-average state).
        fresh_step_counter: the graph's `fake_quantization_step` is not in
            the checkpoint and will count from 0.
        quantized_checkpoint: the checkpoint holds quantization ranges (a
            QAT checkpoint), so ranges starting over lose trained values.
        training_graph: the graph's quantizers update their ranges.
        assignment_map: `{checkpoint name: graph variable name}` of every
            graph variable the checkpoint can restore, for
            `tf.compat.v1.train.init_from_checkpoint`.
    """
    checkpoint: str
    problems: List[Problem]
    ignored: List[Problem]
    ranges: Dict[str, object]
    batch_norm_statistics: Dict[str, Tuple[float, float, float]]
    fresh_ranges: List[FreshRange]
    fresh_step_counter: bool
    quantized_checkpoint: bool
    training_graph: bool
    assignment_map: Dict[str, str]

    @property
    def lost(self) -> List[str]:
        """The trained quantization state a restore would lose."""
        lost = [r.prefix for r in self.fresh_ranges if r.lost]
        if self.fresh_step_counter and (self.quantized_checkpoint or
                                        not self.training_graph):
            lost.append(names.STEP_COUNTER)
        return lost

    @property
    def ok(self) -> bool:
        """No variable stops the restore and no trained range is lost."""
        return not self.problems and not self.lost

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
        return '\n'.join(lines + self._quantization_lines())

    def _quantization_lines(self) -> List[str]:
        if not self.fresh_ranges and not self.fresh_step_counter:
            return ['Quantization state: every range and counter the graph '
                    'has restores from the checkpoint.']
        lines = ['Quantization state: %d range(s) will not start from '
                 'trained values (the checkpoint %s):' % (
                     len(self.fresh_ranges), 'holds quantization ranges' if
                     self.quantized_checkpoint else 'holds no quantization '
                     'range: a float checkpoint')]
        groups = {}
        for fresh in self.fresh_ranges:
            groups.setdefault(fresh.effect, []).append(fresh)
        for effect, members in groups.items():
            lines.append('  %d %s.' % (len(members), effect))
            lines += ['    %s' % fresh for fresh in members]
        if self.fresh_step_counter:
            lines.append('  %s%s: counts from 0, so quant_delay and '
                         'freeze_bn_delay start over (an eval graph built '
                         'with quant_delay computes unquantized)' % (
                             'LOST ' if names.STEP_COUNTER in self.lost
                             else '', names.STEP_COUNTER))
        if self.lost:
            lines.append('Verdict: %d trained quantization value(s) would be '
                         'LOST: %s' % (len(self.lost), ', '.join(self.lost)))
        else:
            lines.append('Verdict: no trained quantization range is lost.')
        if not self.problems:
            lines += self._restore_lines()
        return lines

    def _restore_lines(self) -> List[str]:
        """The mapping that restores the rest (a full Saver would fail)."""
        return ['A Saver over all variables would fail ("Key not found"). '
                'Restore the other %d variable(s) with this call after '
                'building the graph and before running the initializers:' %
                len(self.assignment_map),
                '    tf.compat.v1.train.init_from_checkpoint(%r, {' %
                self.checkpoint] + [
                    '        %r: %r,' % item
                    for item in sorted(self.assignment_map.items())] + [
                        '    })']


def check_checkpoint(graph: tf.Graph, checkpoint: str) -> CheckpointReport:
    """Compares a checkpoint with the global variables of `graph`.

    Args:
        graph: the graph to restore into (e.g. after `create_training_graph`).
        checkpoint: a checkpoint prefix or directory.

    Returns:
        A `CheckpointReport`; `report.ok` is False when a variable would not
        restore or a trained quantization range would be lost.

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
            if not _is_quantization_state(name):
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
    ranges = _ranges(reader, stored_shapes)
    unusable = {p.name for p in problems}
    return CheckpointReport(
        checkpoint=checkpoint, problems=problems, ignored=ignored,
        ranges=ranges,
        batch_norm_statistics=_statistics(reader, stored_shapes),
        fresh_ranges=_fresh_ranges(graph, wanted, stored_shapes,
                                   bool(ranges)),
        fresh_step_counter=(names.STEP_COUNTER in wanted and
                            names.STEP_COUNTER not in stored_shapes),
        quantized_checkpoint=bool(ranges),
        training_graph=any(_is_training(graph, wanted, prefix)
                           for prefix in _range_prefixes(wanted)),
        assignment_map={name: name for name in sorted(wanted)
                        if name in stored_shapes and name not in unusable})


def _is_quantization_state(name: str) -> bool:
    """A range, its moving-average state or the step counter."""
    return (name in _TRAINING_ONLY_NAMES or bool(_RANGE.search(name)) or
            bool(_EMA_STATE.search(name)))


def _fresh_ranges(graph: tf.Graph, wanted, stored,
                  quantized_checkpoint: bool) -> List[FreshRange]:
    """The graph's ranges that will not start from trained values."""
    fresh = {}
    for prefix in _range_prefixes(wanted):
        missing = any(prefix + bound not in stored
                      for bound in ('/min', '/max'))
        if missing or any(name not in stored
                          for name in _ema_state(wanted, prefix)):
            fresh[prefix] = missing
    initial = _initial_ranges(graph, fresh)
    result = []
    for prefix, missing in fresh.items():
        weights = names.base_name(prefix) == names.WEIGHTS_QUANT
        training = _is_training(graph, wanted, prefix)
        low, high = initial[prefix]
        result.append(FreshRange(
            prefix=prefix, weights=weights, training=training,
            initial=(low, high), step=(high - low) / _levels(graph, prefix),
            restored=not missing,
            lost=not training or (quantized_checkpoint and not weights)))
    return result


def _range_prefixes(wanted) -> List[str]:
    return sorted({name.rsplit('/', 1)[0] for name in wanted
                   if _RANGE.search(name)})


def _ema_state(wanted, prefix: str) -> List[str]:
    """The moving-average variables of quantizer `prefix` (training)."""
    return [name for name in wanted
            if name.startswith('%s/%s/' % (prefix, prefix))]


def _is_training(graph: tf.Graph, wanted, prefix: str) -> bool:
    """Whether quantizer `prefix` updates its range."""
    return bool(_ema_state(wanted, prefix)) or _has_op(
        graph, '%s/%s' % (prefix, names.WEIGHTS_RANGE_UPDATE))


def _initial_ranges(graph: tf.Graph, prefixes) -> Dict[str, Tuple]:
    """`{prefix: (min, max)}` from the range variables' initial values."""
    if not prefixes:
        return {}
    variables = {v.op.name: v for v in graph.get_collection(
        tf.compat.v1.GraphKeys.GLOBAL_VARIABLES)}
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as session:
        values = session.run({
            prefix: [variables[prefix + bound].initial_value
                     for bound in ('/min', '/max')] for prefix in prefixes})
    return {prefix: (float(np.min(low)), float(np.max(high)))
            for prefix, (low, high) in values.items()}


def _levels(graph: tf.Graph, prefix: str) -> int:
    """Quantization steps in the range of the quantizer `prefix`."""
    for op_type in names.VARIABLE_RANGE_FAKE_QUANT_TYPES:
        name = '%s/%s' % (prefix, op_type)
        if _has_op(graph, name):
            op = graph.get_operation_by_name(name)
            return 2**op.get_attr('num_bits') - 1 - int(
                op.get_attr('narrow_range'))
    return 2**8 - 1


def _has_op(graph: tf.Graph, name: str) -> bool:
    try:
        graph.get_operation_by_name(name)
    except KeyError:
        return False
    return True


def _reader(checkpoint: str):
    path = tf.train.latest_checkpoint(checkpoint) or checkpoint
    try:
        return tf.train.load_checkpoint(path)
    except (tf.errors.OpError, ValueError) as error:
        raise ValueError('Cannot read checkpoint %s: %s' %
                         (checkpoint, getattr(error, 'message', error))) from None


def _graph_variables(graph: tf.Graph) -> Dict[str, Tuple[list, tf.DType]]:
    """`{checkpoint key: (shape, dtype)}`; the parts of a partitioned variable
    are saved together, under the whole variable's name and shape."""
    found = {}
    for v in graph.get_collection(tf.compat.v1.GraphKeys.GLOBAL_VARIABLES):
        info = v._save_slice_info  # pylint: disable=protected-access
        if info is None:
            found[v.op.name] = (v.shape.as_list(), v.dtype.base_dtype)
        else:
            found[info.full_name] = (list(info.full_shape),
                                     v.dtype.base_dtype)
    return found


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
            for name in stored if _RANGE.search(name)}


def _statistics(reader, stored) -> Dict[str, Tuple[float, float, float]]:
    result = {}
    for name in stored:
        if name.endswith(_BN_STATISTIC_SUFFIXES):
            value = reader.get_tensor(name)
            result[name] = (float(value.min()), float(value.mean()),
                            float(value.max()))
    return result
