"""What a rewrite did, and what it left float, in a form a person can read."""

from __future__ import annotations

import dataclasses
from typing import Iterable, List

import tensorflow as tf

from tf1_quantize import graph_edit
from tf1_quantize import names
from tf1_quantize import quantize


@dataclasses.dataclass(frozen=True)
class FloatOp:
    """A compute op the rewrite leaves float, and why."""
    name: str
    type: str
    reason: str

    def __str__(self) -> str:
        return 'stays float: %s (%s): %s' % (self.name, self.type,
                                             self.reason)


@dataclasses.dataclass
class RewriteReport:
    """The outcome of one rewrite.

    Attributes:
        is_training: whether the training rewrite was built.
        layers: names of the layer ops found (before folding).
        folded: names of the layer ops whose batch norm was folded.
        affine: names of the batch norms no layer could take, rewritten as
            quantized per-channel multiply and add ops.
        fake_quants: the FakeQuant ops inserted.
        float_ops: compute ops that stay float, with the reason.
        folded_forward: names of the batch norms no layer precedes that were
            folded forward, into the layer reading their output.
        forward_layers: the layer each of `folded_forward` went into.
    """
    is_training: bool
    layers: List[str]
    folded: List[str]
    affine: List[str]
    fake_quants: List[quantize.InsertedQuant]
    float_ops: List[FloatOp]
    folded_forward: List[str] = dataclasses.field(default_factory=list)
    forward_layers: List[str] = dataclasses.field(default_factory=list)

    def __str__(self) -> str:
        lines = [
            '%s rewrite: %d layers, %d batch norms folded, %d folded '
            'forward, %d rewritten as affine ops, %d FakeQuant ops '
            'inserted, %d compute ops left float.'
            % ('Training' if self.is_training else 'Eval', len(self.layers),
               len(self.folded), len(self.folded_forward), len(self.affine),
               len(self.fake_quants), len(self.float_ops))
        ]
        lines += ['  folded: %s' % name for name in self.folded]
        lines += ['  folded forward: %s into %s' % pair
                  for pair in zip(self.folded_forward, self.forward_layers)]
        lines += ['  affine (not after a layer): %s' % name
                  for name in self.affine]
        lines += ['  quantized %s with %s' % (q.tensor, q.name)
                  for q in self.fake_quants]
        lines += ['  %s' % f for f in self.float_ops]
        return '\n'.join(lines)


def find_float_layers(graph: tf.Graph,
                      quantized_layers: Iterable[str]) -> List[FloatOp]:
    """Lists the compute ops that no FakeQuant will cover, with the reason.

    Args:
        graph: the rewritten graph.
        quantized_layers: names of the layer ops the rewrite quantized.

    Returns:
        One `FloatOp` per such op, in graph order.
    """
    quantized = set(quantized_layers)
    clones = {op.name for op in graph.get_operations()
              if op.name.endswith(names.FOLD_SUFFIX)}
    found = []
    for op in graph.get_operations():
        if (op.type not in names.LAYER_TYPES + names.UNSUPPORTED_LAYER_TYPES
                or op.name in quantized or
                op.name + names.FOLD_SUFFIX in clones or
                graph_edit.is_skipped(op) or _quantized_earlier(op)):
            continue
        found.append(FloatOp(op.name, op.type, _float_reason(op)))
    return found


def find_function_layers(graph: tf.Graph) -> List[FloatOp]:
    """Lists the compute ops inside function bodies: the branches and bodies
    of control flow v2 (`If`, `While`, `Case`) and of `tf.function` calls,
    nested ones included. The rewrite cannot change a function body, so
    these stay float.

    Args:
        graph: the graph to inspect.

    Returns:
        One `FloatOp` per such op, named `<calling op>/<op in the body>`.
    """
    callers = [op for op in graph.get_operations()
               if op.type in names.FUNCTION_CALL_TYPES]
    if not callers:
        return []
    library = {f.signature.name: f
               for f in graph.as_graph_def().library.function}
    found = []
    for caller in callers:
        pending = list(_called_functions(caller.node_def))
        seen = set(pending)
        while pending:
            function = library.get(pending.pop())
            if function is None:
                continue
            for node in function.node_def:
                if node.op in (names.LAYER_TYPES
                               + names.UNSUPPORTED_LAYER_TYPES):
                    found.append(FloatOp(
                        '%s/%s' % (caller.name, node.name), node.op,
                        _FUNCTION_BODY_REASON % (function.signature.name,
                                                 caller.type, caller.name)))
                for name in _called_functions(node):
                    if name not in seen:
                        seen.add(name)
                        pending.append(name)
    return found


_FUNCTION_BODY_REASON = (
    "it is inside function '%s' called by %s op '%s' (control flow v2: "
    'tf.cond / tf.while_loop, or a tf.function); the rewrite cannot add ops '
    'to a function body. Build this part with control flow v1: call '
    'tf.compat.v1.disable_control_flow_v2() before building the model.')


def _called_functions(node_def) -> List[str]:
    """Names of the functions an op calls (`then_branch`, `body`, `f`...)."""
    called = []
    for value in node_def.attr.values():
        if value.HasField('func'):
            called.append(value.func.name)
        elif value.HasField('list'):
            called.extend(f.name for f in value.list.func)
    return called


def _quantized_earlier(op: tf.Operation) -> bool:
    """A layer whose weights an earlier rewrite already fake-quantized (a
    one-convolution fold's layers read them through a Switch or rescaled)."""
    if op.type not in names.LAYER_TYPES:
        return False
    weights = op.inputs[1].op
    while weights.type in ('Switch', 'RealDiv'):
        weights = weights.inputs[0].op
    return quantize.is_fake_quant_output(weights)


def _float_reason(op: tf.Operation) -> str:
    if op.type in names.UNSUPPORTED_LAYER_TYPES:
        return ('op type %s is not quantized; only %s are' %
                (op.type, ', '.join(names.LAYER_TYPES)))
    if 'while/' in op.name:
        return 'it is inside a while loop'
    weights = op.inputs[1].op
    if weights.type not in names.WEIGHT_READ_TYPES:
        return ('its weights come from a %s op (%s), not a variable read' %
                (weights.type, weights.name))
    return ('no bias add, batch norm or activation after it matched a layer '
            'pattern')
