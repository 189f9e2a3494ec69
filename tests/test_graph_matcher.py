"""The declarative op-type matcher: types, inputs, names, alternatives,
unordered and variadic inputs, and rollback of partial bindings."""

import pytest
import tensorflow as tf

from tf1_quantize.graph_matcher import GraphMatcher, OneofPattern
from tf1_quantize.graph_matcher import OpTypePattern as P

v1 = tf.compat.v1


@pytest.fixture(name='graph')
def graph_fixture():
    graph = tf.Graph()
    with graph.as_default():
        yield graph


def _ops(graph, *names):
    return [graph.get_operation_by_name(n) for n in names]


def test_type_alternatives_and_wildcards(graph):
    x = v1.placeholder(tf.float32, [2], name='x')
    tf.nn.relu(x, name='relu')
    tf.nn.relu6(x, name='relu6')
    tf.identity(x, name='id')
    matcher = GraphMatcher(P('Relu|Relu6', name='act', inputs=['*']))
    found = [m.get_op('act').name for m in matcher.match_graph(graph)]
    assert found == ['relu', 'relu6']


def test_named_inputs_are_read_back(graph):
    x = v1.placeholder(tf.float32, [2], name='x')
    y = tf.add(x, 1.0, name='add')
    tf.nn.relu(y, name='relu')
    pattern = P('Relu', name='act',
                inputs=[P('AddV2|Add', name='sum',
                          inputs=[P('Placeholder', name='in'), '*'])])
    match = GraphMatcher(pattern).match_op(graph.get_operation_by_name('relu'))
    assert match.get_op('sum').name == 'add'
    assert match.get_tensor('in') is x
    assert match.get_op('act').name == 'relu'
    assert match.get_op('missing') is None


def test_input_count_must_match(graph):
    x = v1.placeholder(tf.float32, [2], name='x')
    tf.add_n([x, x, x], name='sum3')
    two = GraphMatcher(P('AddN', inputs=['*', '*']))
    three = GraphMatcher(P('AddN', inputs=['*', '*', '*']))
    op = graph.get_operation_by_name('sum3')
    assert two.match_op(op) is None
    assert three.match_op(op) is not None


def test_unordered_inputs_match_either_order(graph):
    x = v1.placeholder(tf.float32, [2], name='x')
    c = tf.constant([1.0, 2.0], name='c')
    tf.add(x, c, name='xc')
    tf.add(c, x, name='cx')
    pattern = P('AddV2|Add', name='sum', ordered_inputs=False,
                inputs=[P('Placeholder', name='p'), P('Const')])
    matcher = GraphMatcher(pattern)
    assert [m.get_op('sum').name for m in matcher.match_graph(graph)] == [
        'xc', 'cx']
    ordered = GraphMatcher(P('AddV2|Add', name='sum',
                             inputs=['Placeholder', 'Const']))
    assert [m.get_op('sum').name for m in ordered.match_graph(graph)] == [
        'xc']


def test_a_failed_alternative_leaves_no_bindings(graph):
    """The first alternative binds 'inner' before it fails deeper down;
    the match found by the second must not report that binding."""
    x = v1.placeholder(tf.float32, [2], name='x')
    y = tf.nn.relu(x, name='relu')
    tf.identity(y, name='out')
    failing = P('Relu', name='inner', inputs=[P('Const')])
    pattern = P('Identity', inputs=[OneofPattern(
        [failing, P('Relu', name='other', inputs=['Placeholder'])])])
    match = GraphMatcher(pattern).match_op(graph.get_operation_by_name('out'))
    assert match is not None
    assert match.get_op('inner') is None
    assert match.get_op('other').name == 'relu'


def test_a_pattern_used_twice_binds_one_op(graph):
    x = v1.placeholder(tf.float32, [2], name='x')
    z = v1.placeholder(tf.float32, [2], name='z')
    tf.multiply(x, x, name='square')
    tf.multiply(x, z, name='product')
    shared = P('Placeholder', name='p')
    matcher = GraphMatcher(P('Mul', name='mul', inputs=[shared, shared]))
    assert [m.get_op('mul').name for m in matcher.match_graph(graph)] == [
        'square']


@pytest.mark.parametrize('parts', [2, 3, 5])
def test_variadic_inputs_match_every_leading_input(graph, parts):
    values = [v1.placeholder(tf.float32, [2], name='v%d' % i)
              for i in range(parts)]
    tf.concat(values, 0, name='joined')
    pattern = P('ConcatV2', name='concat', variadic=True,
                inputs=[P('Placeholder', name='part'), 'Const'])
    match = GraphMatcher(pattern).match_op(
        graph.get_operation_by_name('joined'))
    assert match is not None
    assert match.get_op('part').name == 'v0'


def test_variadic_inputs_all_must_match(graph):
    x = v1.placeholder(tf.float32, [2], name='x')
    tf.concat([x, tf.nn.relu(x), x], 0, name='joined')
    pattern = P('ConcatV2', variadic=True, inputs=['Placeholder', 'Const'])
    assert GraphMatcher(pattern).match_op(
        graph.get_operation_by_name('joined')) is None


def test_bad_patterns_are_refused():
    with pytest.raises(ValueError, match='at most 8'):
        P('AddN', inputs=['*'] * 9)
    with pytest.raises(ValueError, match='variadic'):
        P('ConcatV2', variadic=True)
    with pytest.raises(ValueError, match='variadic'):
        P('ConcatV2', inputs=['*', '*'], variadic=True, ordered_inputs=False)
