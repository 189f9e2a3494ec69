"""Small graph-surgery helpers shared by folding and quantization."""

from __future__ import annotations

import contextlib
from typing import Iterable, List, Optional

import tensorflow as tf

# Ops under these name prefixes belong to gradients, optimizers or summaries;
# the rewrite never reroutes their inputs (contrib skipped the same prefixes).
SKIPPED_PREFIXES = ('gradients/', 'RMSProp/', 'Adagrad/', 'Const_',
                    'HistogramSummary', 'ScalarSummary')


def is_skipped(op: tf.Operation) -> bool:
    """True for ops the rewrite must leave alone (gradients, summaries...)."""
    return op.name.startswith(SKIPPED_PREFIXES)


def consumers(tensor: tf.Tensor) -> List[tf.Operation]:
    """Returns the ops reading `tensor`, without skipped ops, deduplicated."""
    seen = []
    for op in tensor.consumers():
        if not is_skipped(op) and op not in seen:
            seen.append(op)
    return seen


def op_consumers(op: tf.Operation) -> List[tf.Operation]:
    """Returns the ops reading any output of `op` (see `consumers`)."""
    result = []
    for output in op.outputs:
        result.extend(c for c in consumers(output) if c not in result)
    return result


def reroute(new: tf.Tensor,
            old: tf.Tensor,
            can_modify: Optional[Iterable[tf.Operation]] = None) -> int:
    """Makes consumers of `old` read `new` instead.

    Args:
        new: the tensor to read from now on.
        old: the tensor currently read.
        can_modify: if given, only these ops are changed.

    Returns:
        The number of input slots changed.
    """
    targets = consumers(old) if can_modify is None else list(can_modify)
    count = 0
    for op in targets:
        for index, tensor in enumerate(op.inputs):
            if same_tensor(tensor, old):
                op._update_input(index, new)  # pylint: disable=protected-access
                count += 1
    return count


def same_tensor(a: Optional[tf.Tensor], b: Optional[tf.Tensor]) -> bool:
    """Identity of graph tensors without `==` (elementwise under TF2)."""
    if a is None or b is None:
        return a is b
    return a.op is b.op and a.value_index == b.value_index


def scope_of(op_or_name) -> str:
    """Returns the name scope holding an op: its name minus the last part."""
    name = op_or_name if isinstance(op_or_name, str) else op_or_name.name
    return name.rpartition('/')[0]


def join_scope(*parts: str) -> str:
    """Joins non-empty name-scope parts with '/'."""
    return '/'.join(p.strip('/') for p in parts if p and p.strip('/'))


@contextlib.contextmanager
def absolute_name_scope(graph: tf.Graph, scope: str):
    """Opens name scope `scope` from the root, whatever scope is active.

    Yields:
        The scope string with a trailing '/' ('' at the root).
    """
    with graph.name_scope(None):
        if not scope:
            yield ''
            return
        with graph.name_scope(scope.rstrip('/') + '/') as opened:
            yield opened
