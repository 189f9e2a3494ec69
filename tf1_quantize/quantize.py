"""FakeQuant placement: which tensor gets which quantizer (spec §3).

Works from the `LayerRecord`s found once by `records.find_layers` (after
folding has updated them), then quantizes the intermediate Add/Mul outputs
that sit between quantized tensors.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Sequence, Set

import tensorflow as tf

from tf1_quantize import affine as affine_lib
from tf1_quantize import graph_edit
from tf1_quantize import names
from tf1_quantize import placement
from tf1_quantize import quant_ops
from tf1_quantize.errors import QuantizeError
from tf1_quantize.records import LayerRecord


@dataclasses.dataclass(frozen=True)
class QuantizeConfig:
    """The parameters of one quantization rewrite.

    Attributes:
        is_training: build range updates (training) or read ranges only.
        weight_bits: bits of the weight FakeQuants.
        activation_bits: bits of the activation FakeQuants.
        symmetric: symmetric ranges (needed for int8 weights).
        quant_delay: step from which quantized values are used, or None.
        scope: only quantize ops under this name scope, or None.
        ema_decay: decay of the activation range moving averages.
        per_channel_weights: symmetric per-output-channel weight ranges for
            Conv2D layers.
    """
    is_training: bool
    weight_bits: int = 8
    activation_bits: int = 8
    symmetric: bool = False
    quant_delay: Optional[int] = None
    scope: Optional[str] = None
    ema_decay: float = 0.999
    per_channel_weights: bool = False

    @property
    def scope_prefix(self) -> Optional[str]:
        if not self.scope:
            return None
        return self.scope if self.scope.endswith('/') else self.scope + '/'


@dataclasses.dataclass(frozen=True)
class InsertedQuant:
    """One FakeQuant the rewrite inserted: its name and what it quantizes."""
    name: str
    tensor: str


class _Inserter:
    """Inserts FakeQuants for one rewrite; remembers what it quantized.

    The range variables of the next quantizers go to `device` (that of the
    weights of the layer being quantized, see `placement`).
    """

    def __init__(self, graph: tf.Graph, config: QuantizeConfig):
        self.graph = graph
        self.config = config
        self.quantized_ops: Set[tf.Operation] = set()
        self.inserted: List[InsertedQuant] = []
        self.names = graph_edit.ScopeNames(graph)
        self.device = ''
        # The device of each quantizer, by the op that outputs its result.
        self._devices: Dict[tf.Operation, str] = {}

    def insert(self, context: str, name: str, producer: tf.Operation, *,
               moving_avg: bool, init_min: float = -6.0,
               init_max: float = 6.0, bits: int, narrow_range: bool = False,
               symmetric: Optional[bool] = None,
               per_channel: bool = False,
               filter_producer: bool = False,
               filter_consumers: bool = False) -> None:
        """Quantizes output 0 of `producer` for all its consumers."""
        tensor = producer.outputs[0]
        readers = graph_edit.consumers(tensor)
        if not self._in_scope(producer, readers, filter_producer,
                              filter_consumers):
            return
        if is_followed_by_fake_quant(tensor):
            return
        prefix = self.names.unique(_strip_caller_scope(
            self.graph, graph_edit.join_scope(context, name)))
        symmetric = self.config.symmetric if symmetric is None else symmetric
        ema_decay = self.config.ema_decay if moving_avg else None
        with (self.graph.as_default(), graph_edit.root_variable_scope(),
              placement.variables_on(self.device)):
            quantized = quant_ops.fake_quantize(
                tensor, name_prefix=prefix,
                is_training=self.config.is_training, ema_decay=ema_decay,
                num_bits=bits, narrow_range=narrow_range, symmetric=symmetric,
                init_min=init_min, init_max=init_max, per_channel=per_channel)
            output = quant_ops.delay_quantization(quantized, tensor,
                                                  self.config.quant_delay,
                                                  prefix)
        if readers and graph_edit.reroute(output, tensor,
                                          can_modify=readers) < len(readers):
            raise QuantizeError('No inputs quantized for ops: %s' %
                                [op.name for op in readers])
        self.inserted.append(InsertedQuant(quantized.op.name, tensor.name))
        self._devices[output.op] = self.device

    def device_of_inputs(self, op: tf.Operation) -> str:
        """The device of the first quantizer `op` reads ('' if none)."""
        for tensor in op.inputs:
            device = self._devices.get(_through_pass_through(tensor.op))
            if device is not None:
                return device
        return ''

    def _in_scope(self, producer, readers, filter_producer, filter_consumers):
        prefix = self.config.scope_prefix
        if prefix is None:
            return True
        if filter_producer and not producer.name.startswith(prefix):
            return False
        return not (filter_consumers and
                    any(not op.name.startswith(prefix) for op in readers))


def _strip_caller_scope(graph: tf.Graph, prefix: str) -> str:
    """Called inside name scope `S` on a model built in `S`, the quantizer
    names must not repeat `S` (spec §3.3 step 3): ops land in `S/prefix`
    and range variables in `prefix`, as contrib's checkpoints have them."""
    current = graph.get_name_scope()
    if current and prefix.startswith(current + '/'):
        return prefix[len(current) + 1:]
    return prefix


def is_followed_by_fake_quant(tensor: tf.Tensor) -> bool:
    """True if a FakeQuant reads `tensor`, possibly via Reshape/Identity."""
    pending = list(tensor.consumers())
    seen = set()
    while pending:
        op = pending.pop()
        if op in seen:
            continue
        seen.add(op)
        if op.type in names.FAKE_QUANT_TYPES:
            return True
        if op.type in names.VALUE_PRESERVING_TYPES:
            pending.extend(op.outputs[0].consumers())
    return False


def quantize_layers(graph: tf.Graph, records: Sequence[LayerRecord],
                    affines: Sequence[affine_lib.AffineBatchNorm],
                    config: QuantizeConfig,
                    weight_devices: Sequence[str]) -> List[InsertedQuant]:
    """Inserts the FakeQuants of every layer, then of intermediate ops.

    The range variables of a layer go to the device of its weights; those of
    an affine batch norm to the device of its parameters; those of an
    intermediate op to the device of the first quantizer it reads.

    Args:
        graph: the graph to rewrite in place.
        records: the layers (already folded) found in the graph.
        affines: the batch norms rewritten as affine ops.
        config: the rewrite's parameters.
        weight_devices: the device of each record's weight variable (read
            before folding, see `placement.variable_device`).

    Returns:
        The FakeQuants inserted, in order.

    Raises:
        QuantizeError: if consumers could not be rerouted.
    """
    inserter = _Inserter(graph, config)
    for record, device in zip(records, weight_devices, strict=True):
        inserter.device = device
        _quantize_layer(inserter, record)
    for affine in affines:
        bn = affine.batch_norm
        inserter.device = placement.variable_device(
            bn.beta if bn.gamma is None else bn.gamma)
        _quantize_affine(inserter, affine)
    _quantize_intermediate_ops(inserter)
    return inserter.inserted


def _quantize_layer(inserter: _Inserter, record: LayerRecord) -> None:
    config = inserter.config
    context = record.scope
    per_channel = config.per_channel_weights and _supports_per_channel(record)
    inserter.insert(context, names.WEIGHTS_QUANT, record.weights.op,
                    moving_avg=False, bits=config.weight_bits,
                    narrow_range=True, per_channel=per_channel,
                    symmetric=True if per_channel else None,
                    filter_consumers=True)
    activation = _activation_op(record)
    # With a bypass the activation belongs to the block, one scope up.
    activation_context = (graph_edit.scope_of(context)
                          if record.bypass is not None else context)
    inserter.insert(activation_context, names.ACT_QUANT, activation,
                    moving_avg=True, init_min=0.0,
                    bits=config.activation_bits, filter_producer=True)
    inserter.quantized_ops.add(activation)
    if record.bypass is not None and record.bias_add is not None:
        inserter.insert(context, names.CONV_QUANT, record.bias_add,
                        moving_avg=True, bits=config.activation_bits,
                        filter_producer=True, filter_consumers=True)
        inserter.quantized_ops.add(record.bias_add)
    _quantize_post_activation_bypass(inserter, record)


def _quantize_affine(inserter: _Inserter,
                     affine: affine_lib.AffineBatchNorm) -> None:
    """A standalone batch norm becomes integer Mul and Add ops in TFLite:
    its multiplier is quantized like weights, its offset and both outputs
    like activations."""
    config = inserter.config
    inserter.insert(affine.scope, names.WEIGHTS_QUANT, affine.multiplier.op,
                    moving_avg=False, bits=config.weight_bits,
                    narrow_range=True)
    inserter.insert(affine.scope, names.MUL_QUANT, affine.mul, moving_avg=True,
                    bits=config.activation_bits, filter_producer=True)
    inserter.insert(affine.scope, names.OFFSET_QUANT, affine.offset.op,
                    moving_avg=False, bits=config.activation_bits)
    inserter.insert(affine.scope, names.ACT_QUANT, affine.add, moving_avg=True,
                    bits=config.activation_bits, filter_producer=True)
    inserter.quantized_ops.update((affine.mul, affine.add))


def _supports_per_channel(record: LayerRecord) -> bool:
    """Per-channel weights only for Conv2D: TFLite's converter rejects
    per-channel FakeQuant ranges on MatMul weights (measured on TF 2.21), and
    a depthwise filter's last axis is its multiplier, not its output
    channel."""
    return record.layer.type == 'Conv2D'


def _activation_op(record: LayerRecord) -> tf.Operation:
    """The op whose output is the layer's activation (contrib's rules)."""
    if record.activation is not None:
        return record.activation
    if record.is_separable_inner:
        return record.layer
    return record.output_op


def _quantize_post_activation_bypass(inserter: _Inserter,
                                     record: LayerRecord) -> None:
    add = record.post_activation_bypass
    if add is None or any(op.type in names.TFLITE_FUSED_ACTIVATION_TYPES
                          for op in graph_edit.op_consumers(add)):
        return
    inserter.insert(graph_edit.scope_of(add),
                    names.POST_ACTIVATION_BYPASS_QUANT,
                    add, moving_avg=True,
                    bits=inserter.config.activation_bits,
                    filter_producer=True)
    inserter.quantized_ops.add(add)


def _quantize_intermediate_ops(inserter: _Inserter) -> None:
    """Quantizes Add/Mul/... outputs computed from quantized tensors (§3.4).

    Insertion happens during the scan, so an Add of two freshly quantized
    Muls is quantized too. Symmetric ranges are not applied here, as in
    contrib.
    """
    decided: Dict[tf.Operation, bool] = {}
    for op in inserter.graph.get_operations():
        if _should_quantize_intermediate(op, inserter.quantized_ops, decided):
            inserter.device = inserter.device_of_inputs(op)
            inserter.insert(op.name, names.ACTIVATION_QUANT % op.type, op,
                            moving_avg=True,
                            bits=inserter.config.activation_bits,
                            symmetric=False, filter_producer=True)


def _should_quantize_intermediate(op: tf.Operation,
                                  quantized_ops: Set[tf.Operation],
                                  decided: Dict[tf.Operation, bool]) -> bool:
    """Whether `op` is an intermediate op reading a quantized tensor, directly
    or through other such ops (contrib's recursive rule).

    Evaluated with an explicit stack and memoized in `decided`, so that long
    Add chains and Add/Mul DAGs cost one visit per op. A decision never
    changes during the scan: quantizing an op only puts a FakeQuant where a
    quantized value already was.
    """
    stack, visiting = [op], set()
    while stack:
        top = stack[-1]
        if top in decided:
            stack.pop()
            continue
        visiting.add(top)
        pending = []
        result = False
        if _is_intermediate_candidate(top, quantized_ops):
            for source in (_through_pass_through(t.op) for t in top.inputs):
                if is_fake_quant_output(source) or decided.get(source):
                    result = True
                    break
                if (source.type in names.INTERMEDIATE_TYPES
                        and source not in decided
                        and source not in visiting):
                    pending.append(source)
        if result or not pending:
            decided[top] = result
            visiting.discard(top)
            stack.pop()
        else:
            stack.extend(pending)
    return decided[op]


def _is_intermediate_candidate(op: tf.Operation,
                               quantized_ops: Set[tf.Operation]) -> bool:
    if op in quantized_ops or op.type not in names.INTERMEDIATE_TYPES:
        return False
    if graph_edit.is_skipped(op):
        return False
    readers = graph_edit.op_consumers(op)
    # TFLite fuses a lone Relu/Relu6 reader into the op.
    return not (len(op.outputs) == 1 and len(readers) == 1
                and readers[0].type in names.TFLITE_FUSED_ACTIVATION_TYPES)


def _through_pass_through(op: tf.Operation) -> tf.Operation:
    while op.type in names.QUANTIZED_PASS_THROUGH_TYPES and op.inputs:
        op = op.inputs[0].op
    return op


def is_fake_quant_output(op: tf.Operation) -> bool:
    """Whether `op` outputs a fake-quantized tensor (a FakeQuant, or the
    quant_delay conditional choosing between one and its input)."""
    return op.type in names.FAKE_QUANT_TYPES or names.is_delayed_quant(op)
