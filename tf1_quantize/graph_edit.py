"""Small graph-surgery helpers shared by folding and quantization."""

from __future__ import annotations

import contextlib
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import tensorflow as tf

from tf1_quantize import names


def is_skipped(op: tf.Operation) -> bool:
    """True for ops the rewrite must leave alone (gradients, summaries...)."""
    return op.name.startswith(names.SKIPPED_PREFIXES)


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
                _journal(op.graph, op._update_input, index, tensor)  # pylint: disable=protected-access
                op._update_input(index, new)  # pylint: disable=protected-access
                count += 1
    return count


def set_attr(op: tf.Operation, name: str, value: tf.compat.v1.AttrValue):
    """Sets attribute `name` of an existing op (undone if the rewrite
    fails, see `transaction`)."""
    if name in op.node_def.attr:
        old = tf.compat.v1.AttrValue()
        old.CopyFrom(op.node_def.attr[name])
        _journal(op.graph, op._set_attr, name, old)  # pylint: disable=protected-access
    else:
        _journal(op.graph, op._clear_attr, name)  # pylint: disable=protected-access
    op._set_attr(name, value)  # pylint: disable=protected-access


# The undo actions of each graph with a rewrite in progress.
_JOURNALS: Dict[tf.Graph, List[Tuple[Callable, tuple]]] = {}


def _journal(graph: tf.Graph, undo: Callable, *args) -> None:
    journal = _JOURNALS.get(graph)
    if journal is not None:
        journal.append((undo, args))


@contextlib.contextmanager
def transaction(graph: tf.Graph):
    """Undoes the changes to existing ops if the block raises.

    Every input rerouted (`reroute`), attribute set (`set_attr`) and graph
    collection changed in the block is restored, so the graph computes what
    it did before. Ops created in the block stay, unconnected: TensorFlow
    cannot delete ops from a graph. The rewrite checks its whole plan first
    (`validation`), so this only guards against errors it did not foresee.

    Raises:
        RuntimeError: if a transaction on `graph` is already open.
    """
    if graph in _JOURNALS:
        raise RuntimeError('A rewrite of this graph is already in progress.')
    saved = {key: list(graph.get_collection(key))
             for key in graph.get_all_collection_keys()}
    _JOURNALS[graph] = []
    try:
        yield
    except BaseException:
        for undo, args in reversed(_JOURNALS[graph]):
            undo(*args)
        for key in graph.get_all_collection_keys():
            graph.get_collection_ref(key)[:] = saved.get(key, [])
        raise
    finally:
        del _JOURNALS[graph]


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


@contextlib.contextmanager
def no_control_dependencies(graph: tf.Graph):
    """Builds the block's ops without the active control dependencies.

    For ops that need not wait: constants, and ops of a gradient that read
    only forward tensors (the rest of the gradient still waits through its
    inputs). A training script builds its gradients inside
    `control_dependencies(update_ops)`, which would give each such op one
    control edge per update op. Inside a TF1 conditional or while loop
    nothing changes: leaving the control dependencies would also leave the
    loop's or branch's frame.

    Yields:
        Nothing.
    """
    if graph._get_control_flow_context() is not None:  # pylint: disable=protected-access
        yield
        return
    with graph.control_dependencies(None):
        yield


@contextlib.contextmanager
def root_variable_scope():
    """Opens the root variable scope of the default graph, whatever variable
    scope is active, keeping the caller's `use_resource`: contrib created its
    variables with `get_variable` in the caller's scope, so their kind (ref
    or resource) followed that setting; only their names move to the root.
    """
    caller = tf.compat.v1.get_variable_scope()
    root = tf.compat.v1.VariableScope(reuse=False,
                                      use_resource=caller.use_resource)
    with tf.compat.v1.variable_scope(root, auxiliary_name_scope=False):
        yield


class ScopeNames:
    """Chooses scope names no op of a graph uses yet, as contrib's
    `variable_scope(None, default_name=...)` did: `P`, then `P_1`, `P_2`...

    TF's own uniquifier cannot serve here: entering the root variable scope
    object restores its counters on exit, so each quantizer would get `P`.
    Built once per rewrite (linear in the total length of the op names).
    """

    def __init__(self, graph: tf.Graph):
        self._used = set()
        for op in graph.get_operations():
            parts = op.name.split('/')
            for end in range(1, len(parts) + 1):
                self._used.add('/'.join(parts[:end]))

    def unique(self, name: str) -> str:
        """Returns `name` or `name_<k>` (smallest k), now reserved."""
        candidate, k = name, 0
        while candidate in self._used:
            k += 1
            candidate = '%s_%d' % (name, k)
        self._used.add(candidate)
        return candidate
