"""What the tests inspect and assert about graphs before and after a
rewrite: the public API by name, FakeQuant quantizers and their ranges,
the graph state a refused rewrite must leave untouched, and small
sessions to run the graphs.

Importable as ``graph_checks`` (tests/ on ``sys.path``, see conftest.py).
"""

from typing import Callable, Dict, List, Tuple

import pytest
import tensorflow as tf

import tf1_quantize

v1 = tf.compat.v1

FQ = 'FakeQuantWithMinMaxVars'
GLOBAL = v1.GraphKeys.GLOBAL_VARIABLES
STEP = 'fake_quantization_step'
UPDATE_MARKERS = ('AssignMinLast', 'AssignMaxLast', 'AssignMinEma',
                  'AssignMaxEma')
API_NAMES = ('create_training_graph', 'create_eval_graph',
             'experimental_create_training_graph',
             'experimental_create_eval_graph')
TRAINING_API = ('create_training_graph', 'experimental_create_training_graph')
EXPERIMENTAL_API = ('experimental_create_training_graph',
                    'experimental_create_eval_graph')


# ---------------------------------------------------------------------------
# Helpers.


def api(name):
    return getattr(tf1_quantize, name)


def call(name, graph, **kwargs):
    result = api(name)(graph, **kwargs)
    assert result is None
    return result


def fake_quants(graph):
    return {op.name: op for op in graph.get_operations() if op.type == FQ}


def fq_prefixes(graph):
    """The quantizer scopes P of every FakeQuant (name minus '/FakeQuant')."""
    return {name.rpartition('/')[0] for name in fake_quants(graph)}


def graph_bytes(graph):
    return graph.as_graph_def().SerializeToString(deterministic=True)


def global_names(graph):
    return {v.op.name for v in graph.get_collection(GLOBAL)}


def ancestors(op: tf.Operation):
    """Every op `op` waits for, through data and control inputs."""
    seen, stack = set(), [op]
    while stack:
        current = stack.pop()
        for parent in [t.op for t in current.inputs] + current.control_inputs:
            if parent not in seen:
                seen.add(parent)
                stack.append(parent)
    return seen


def consumer_names(tensor):
    return sorted(op.name for op in tensor.consumers())


def reads(op, tensor):
    return any(t is tensor for t in op.inputs)


def range_source(tensor):
    """(update op name or None, range variable name) behind a FakeQuant
    min/max input.

    In training the input is the update op itself (ref range variables, as in
    TF1) or a read of the range variable ordered after the update op by a
    control dependency (resource range variables, TF2's default). In eval it
    is a plain read of the variable.
    """
    op = tensor.op
    if op.type in ('Assign', 'AssignAdd', 'AssignSub'):  # ref variable
        return op.name, op.inputs[0].op.name
    if op.type == 'ReadVariableOp':
        controls = [c.name for c in op.control_inputs]
        assert len(controls) <= 1, controls
        return (controls[0] if controls else None), op.inputs[0].op.name
    if op.type == 'Identity' and op.inputs[0].op.type in ('VariableV2',
                                                          'Variable'):
        return None, op.inputs[0].op.name
    raise AssertionError('unexpected range input %s (%s)' %
                         (op.name, op.type))


def ema_variables(prefix):
    return {'%s/%s/%s/%s' % (prefix, prefix, bound, kind)
            for bound in ('min', 'max') for kind in ('biased', 'local_step')}


def assert_quantizer(graph, prefix, source, consumers, *, moving_avg,
                      is_training=True, delay=None, num_bits=8,
                      narrow_range=False):
    """Checks one quantizer `prefix` (spec 3.2, 3.3, 7.4).

    Args:
        graph: the rewritten graph.
        prefix: the quantizer scope P (`P/FakeQuantWithMinMaxVars`).
        source: name of the quantized tensor.
        consumers: names of the ops that must now read the quantized value.
        moving_avg: EMA (activations) or last-value (weights) ranges.
        is_training: whether range updates are expected.
        delay: the quant_delay (None or 0: no conditional).
        num_bits, narrow_range: expected FakeQuant attributes.
    """
    fq = graph.get_operation_by_name(prefix + '/' + FQ)
    src = graph.get_tensor_by_name(source)
    assert fq.inputs[0] is src, (prefix, fq.inputs[0].name, source)
    kind = 'Ema' if moving_avg else 'Last'
    for index, bound in ((1, 'min'), (2, 'max')):
        update, variable = range_source(fq.inputs[index])
        assert variable == '%s/%s' % (prefix, bound)
        if is_training:
            assert update == '%s/Assign%s%s' % (prefix, bound.title(), kind)
        else:
            assert update is None
    assert fq.get_attr('num_bits') == num_bits
    assert fq.get_attr('narrow_range') == narrow_range
    if delay:
        select = graph.get_operation_by_name(prefix + '/delayed_quant')
        assert select.type == 'Select'
        assert consumer_names(fq.outputs[0]) == [select.name]
        quantized = select.outputs[0]
        # Before the delay the original tensor passes through.
        assert select.inputs[1] is fq.outputs[0] and select.inputs[2] is src
        activate = graph.get_operation_by_name(prefix + '/activate_quant')
        assert select.inputs[0].op is activate
        assert activate.type == 'GreaterEqual'
        assert activate.inputs[0].name == STEP + '/Identity:0'
        threshold = graph.get_operation_by_name(prefix + '/activate_quant/y')
        assert threshold.get_attr('dtype') == tf.int64
        assert tf.make_ndarray(threshold.get_attr('value')) == delay
    else:
        assert not [op for op in graph.get_operations()
                    if op.name.startswith(prefix + '/delayed_quant')]
        quantized = fq.outputs[0]
    assert consumer_names(quantized) == sorted(consumers), prefix
    for name in consumers:
        consumer = graph.get_operation_by_name(name)
        assert reads(consumer, quantized)
        assert not reads(consumer, src), (name, 'still reads', source)


def assert_no_double_slash(graph):
    assert not [op.name for op in graph.get_operations() if '//' in op.name]


# ---------------------------------------------------------------------------
# Graph state, refusals and sessions.


def session(graph: tf.Graph) -> v1.Session:
    """A single-threaded session without Grappler (tiny graphs, fast)."""
    config = v1.ConfigProto(intra_op_parallelism_threads=1,
                            inter_op_parallelism_threads=1)
    config.graph_options.rewrite_options.disable_meta_optimizer = True
    return v1.Session(graph=graph, config=config)


def graph_state(graph: tf.Graph) -> Tuple[bytes, Dict[str, List[str]]]:
    """What a failed rewrite must leave unchanged: the serialized GraphDef
    and the names in every collection."""
    collections = {}
    for key in graph.get_all_collection_keys():
        collections[key] = [getattr(item, 'name', repr(item))
                            for item in graph.get_collection(key)]
    return graph_bytes(graph), collections


def graph_diff(before: bytes, graph: tf.Graph) -> str:
    """New and modified node names since the serialized GraphDef `before`,
    for failure messages."""
    old = {n.name: n for n in v1.GraphDef.FromString(before).node}
    new, changed = [], []
    for node in graph.as_graph_def().node:
        if node.name not in old:
            new.append(node.name)
        elif node != old[node.name]:
            changed.append(node.name)
    return 'new ops %s, changed ops %s' % (new[:10], changed[:10])


def assert_refused(graph: tf.Graph, rewrite: Callable, error_type,
                   *fragments: str, **kwargs) -> BaseException:
    """`rewrite(graph, **kwargs)` raises `error_type` whose message contains
    every fragment, and the graph is unchanged."""
    before = graph_state(graph)
    with pytest.raises(error_type) as info:
        rewrite(graph, **kwargs)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    after = graph_state(graph)
    assert after[0] == before[0], 'the GraphDef changed: %s' % graph_diff(
        before[0], graph)
    assert after[1] == before[1], 'the collections changed'
    return info.value
