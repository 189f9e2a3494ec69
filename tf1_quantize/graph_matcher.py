"""A small declarative matcher for op-type patterns in a `tf.Graph`.

A pattern describes an op by its type and, optionally, the producers of its
inputs. Patterns are matched upwards: the root is the consumer, its input
patterns describe the ops that produce its inputs. Named sub-patterns can be
read back from a `MatchResult`, so rewriting code never walks the graph by
hand.
"""

from __future__ import annotations

import itertools
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import tensorflow as tf

_MAX_INPUT_PATTERNS = 8


class Pattern:
    """Base class of patterns; `_match` returns updated bindings or None."""

    name: Optional[str] = None

    def _match(self, op: tf.Operation, tensor: Optional[tf.Tensor],
               bindings: Dict['Pattern', Tuple[tf.Operation, tf.Tensor]]):
        raise NotImplementedError


class OpTypePattern(Pattern):
    """Matches an op by type and, optionally, by the producers of its inputs.

    Args:
        op_type: '*' for any op, or one or more op types joined by '|'.
        name: optional name under which the matched op can be looked up.
        inputs: optional list of patterns (or op-type strings) for the op's
            inputs. When given, the op must have exactly that many inputs.
        ordered_inputs: when False, the input patterns may match in any order.
        variadic: when True, the first input pattern matches each of the
            op's leading inputs (one or more: e.g. the parts a ConcatV2
            joins), the other input patterns its last inputs. Named
            sub-patterns of the first input refer to the op's input 0.

    Raises:
        ValueError: if more than 8 input patterns are given, or `variadic`
            is combined with unordered or no inputs.
    """

    def __init__(self,
                 op_type: str,
                 name: Optional[str] = None,
                 inputs: Optional[Sequence[Union[Pattern, str]]] = None,
                 ordered_inputs: bool = True,
                 variadic: bool = False):
        self._op_types = None if op_type == '*' else frozenset(
            op_type.split('|'))
        self.name = name
        inputs = list(inputs or [])
        if len(inputs) > _MAX_INPUT_PATTERNS:
            raise ValueError('A pattern supports at most %d inputs, got %d.' %
                             (_MAX_INPUT_PATTERNS, len(inputs)))
        self._inputs = [
            p if isinstance(p, Pattern) else OpTypePattern(p) for p in inputs
        ]
        self._ordered_inputs = ordered_inputs
        if variadic and (not self._inputs or not ordered_inputs):
            raise ValueError('A variadic pattern needs ordered inputs.')
        self._variadic = variadic

    def _match(self, op, tensor, bindings):
        if self._op_types is not None and op.type not in self._op_types:
            return None
        bound = bindings.get(self)
        if bound is not None:
            # The same pattern object used twice must bind the same op both times.
            return bindings if bound[0] is op else None
        bindings = dict(bindings)
        bindings[self] = (op, tensor)
        if not self._inputs:
            return bindings
        op_inputs = list(op.inputs)
        if self._variadic:
            return self._match_variadic(op_inputs, bindings)
        if len(op_inputs) != len(self._inputs):
            return None
        orders = ([self._inputs] if self._ordered_inputs else
                  itertools.permutations(self._inputs))
        for patterns in orders:
            result = _match_inputs(patterns, op_inputs, bindings)
            if result is not None:
                return result
        return None

    def _match_variadic(self, op_inputs, bindings):
        repeated = len(op_inputs) - len(self._inputs) + 1
        if repeated < 1:
            return None
        first = self._inputs[0]
        for extra in op_inputs[1:repeated]:
            # Checked on its own: the pattern binds the first input only.
            if first._match(extra.op, extra, bindings) is None:  # pylint: disable=protected-access
                return None
        return _match_inputs(self._inputs,
                             op_inputs[:1] + op_inputs[repeated:], bindings)


class OneofPattern(Pattern):
    """Matches the first of its sub-patterns that matches."""

    def __init__(self,
                 sub_patterns: Sequence[Pattern],
                 name: Optional[str] = None):
        self._sub_patterns = list(sub_patterns)
        self.name = name

    def _match(self, op, tensor, bindings):
        for sub_pattern in self._sub_patterns:
            result = sub_pattern._match(op, tensor, bindings)  # pylint: disable=protected-access
            if result is not None:
                result = dict(result)
                result[self] = (op, tensor)
                return result
        return None


def _match_inputs(patterns, tensors, bindings):
    for pattern, tensor in zip(patterns, tensors):
        bindings = pattern._match(tensor.op, tensor, bindings)  # pylint: disable=protected-access
        if bindings is None:
            return None
    return bindings


class MatchResult:
    """The ops and tensors bound by one successful match, looked up by name."""

    def __init__(self, bindings, names: Dict[str, List[Pattern]]):
        self._bindings = bindings
        self._names = names

    def _lookup(self, key):
        if isinstance(key, Pattern):
            return self._bindings.get(key, (None, None))
        if not isinstance(key, str):
            raise ValueError('Look up a match by pattern or name, got %r.' %
                             (key, ))
        # Alternatives of a OneofPattern may share a name; one is bound.
        for pattern in self._names.get(key, []):
            if pattern in self._bindings:
                return self._bindings[pattern]
        return None, None

    def get_op(self, key) -> Optional[tf.Operation]:
        """Returns the op bound to a pattern (or pattern name), or None."""
        return self._lookup(key)[0]

    def get_tensor(self, key) -> Optional[tf.Tensor]:
        """Returns the tensor bound to a pattern (or pattern name), or None."""
        return self._lookup(key)[1]


class GraphMatcher:
    """Finds the ops of a graph at which a pattern matches.

    Args:
        pattern: the root pattern.

    Raises:
        ValueError: if two different sub-patterns share a name.
    """

    def __init__(self, pattern: Pattern):
        self._pattern = pattern
        self._names: Dict[str, List[Pattern]] = {}
        _collect_names(pattern, self._names, set())

    def match_op(self, op: tf.Operation) -> Optional[MatchResult]:
        """Returns the match rooted at `op`, or None."""
        bindings = self._pattern._match(op, None, {})  # pylint: disable=protected-access
        return None if bindings is None else MatchResult(bindings, self._names)

    def match_ops(self, ops: Iterable[tf.Operation]) -> Iterator[MatchResult]:
        """Yields the matches rooted at each of `ops`, in order."""
        for op in ops:
            result = self.match_op(op)
            if result is not None:
                yield result

    def match_graph(self, graph: tf.Graph) -> Iterator[MatchResult]:
        """Yields the matches rooted at every op of `graph`, in graph order."""
        return self.match_ops(graph.get_operations())


def _collect_names(pattern, names, seen):
    if id(pattern) in seen:
        return
    seen.add(id(pattern))
    if pattern.name is not None:
        names.setdefault(pattern.name, []).append(pattern)
    children: List[Pattern] = getattr(pattern, '_inputs', None) or getattr(
        pattern, '_sub_patterns', [])
    for child in children:
        _collect_names(child, names, seen)
