"""Batch-norm folding: numbers, structure, idempotence and errors.

Every numeric test builds a graph twice from the same seed: the first copy
runs unmodified (outputs, gradients, moving-average updates), the second is
folded in place by ``tf1_quantize.fold_batch_norms`` and runs the same feeds
in a new session. Graph sources: contrib-named raw ops, Keras 2 layers and
``tf.compat.v1.layers`` (TF <= 2.15).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from typing import Callable, Optional

import numpy as np
import pytest
import tensorflow as tf

import builders as gb

import tf1_quantize

v1 = tf.compat.v1

FORWARD_TOL = 1e-4    # x max|expected output|
GRADIENT_TOL = 2e-3   # x max|expected gradient|
UPDATE_STEPS = 3
FUTURE_DELAY = 100    # a freeze_bn_delay never reached in these tests
FREEZE_DELAY = 2
FOLD_GRADIENT = b'FoldFusedBatchNormGrad'

needs_v1_layers = pytest.mark.skipif(not gb.V1_LAYERS_AVAILABLE,
                                     reason=gb.V1_LAYERS_SKIP_REASON)


# ---------------------------------------------------------------------------
# Cases: one graph source + arguments, built on demand.


@dataclasses.dataclass(frozen=True)
class Case:
    """A graph to build. `build` is called once per copy needed."""
    id: str
    build: Callable[[], gb.BuiltLayer]
    marks: tuple = dataclasses.field(default=(), compare=False)

    def param(self):
        return pytest.param(self, id=self.id, marks=self.marks)


def contrib_case(**kwargs) -> Case:
    spec = gb.LayerSpec(**kwargs)
    return Case(spec.id, functools.partial(gb.build_contrib_layer, spec))


def keras_case(layer, training=True, use_bias=False) -> Case:
    name = f'keras-{layer}-{"train" if training else "infer"}'
    name += '-bias' if use_bias else ''
    return Case(name, functools.partial(gb.build_keras_layer, layer, training,
                                        use_bias=use_bias))


def v1_layers_case(fused, training=True) -> Case:
    name = (f'v1layers-{"fused" if fused else "unfused"}-'
            f'{"train" if training else "infer"}')
    return Case(name, functools.partial(gb.build_v1_layers, fused, training),
                marks=(needs_v1_layers,))


def _contrib_training_cases():
    """layer x bn x variable kind x activation x residual (96 cases).

    ``scale=False`` rides along on the resource/relu cases, an Identity
    between layer and BN on the fused relu6 cases without bypass.
    """
    for layer, bn, resource, act, residual in itertools.product(
            gb.LAYER_TYPES, ('fused', 'unfused'), (False, True),
            ('relu', 'relu6', None), (False, True)):
        yield contrib_case(
            layer=layer, bn=bn, resource=resource, activation=act,
            residual=residual, scale=not (resource and act == 'relu'),
            identity=(bn == 'fused' and act == 'relu6' and not residual))


CONTRIB_TRAINING = list(_contrib_training_cases())
OTHER_TRAINING = [
    keras_case('conv'), keras_case('depthwise'), keras_case('fc'),
    keras_case('conv', use_bias=True),
    v1_layers_case(True), v1_layers_case(False),
]
# Inference-mode BN graphs for the eval rewrite: layer x bn x variable kind
# x residual, activations rotating.
CONTRIB_INFERENCE = [
    contrib_case(layer=layer, bn=bn, resource=resource, residual=residual,
                 activation=('relu', 'relu6', None)[i % 3], bn_training=False,
                 scale=(i % 4 != 1))
    for i, (layer, bn, resource, residual) in enumerate(itertools.product(
        gb.LAYER_TYPES, ('fused', 'unfused'), (False, True), (False, True)))
]
OTHER_INFERENCE = [
    keras_case('conv', False), keras_case('depthwise', False),
    keras_case('fc', False), keras_case('conv', False, use_bias=True),
    v1_layers_case(True, False), v1_layers_case(False, False),
]
# layer x bn x variable kind (16), for the tests that need fewer cases.
CONTRIB_BASIC = [contrib_case(layer=layer, bn=bn, resource=resource,
                              activation='relu6', residual=resource)
                 for layer, bn, resource in itertools.product(
                     gb.LAYER_TYPES, ('fused', 'unfused'), (False, True))]


def _params(cases):
    return [case.param() for case in cases]


# ---------------------------------------------------------------------------
# Running graphs.


def _session(graph: tf.Graph) -> v1.Session:
    config = v1.ConfigProto(intra_op_parallelism_threads=1,
                            inter_op_parallelism_threads=1)
    sess = v1.Session(graph=graph, config=config)
    with graph.as_default():
        sess.run(v1.global_variables_initializer())
    return sess


def _build(case: Case) -> gb.BuiltLayer:
    """Builds the case with a consumer ``head`` (= output * R) on top."""
    built = case.build()
    gb.add_head(built)
    return built


def _gradients(built: gb.BuiltLayer) -> dict:
    """d(sum(head))/d{weights, gamma, beta, input}."""
    targets = {'weights': built.weights, 'gamma': built.gamma,
               'beta': built.beta, 'input': built.inputs}
    targets = {k: t for k, t in targets.items() if t is not None}
    with built.graph.as_default():
        grads = v1.gradients(tf.reduce_sum(built.head),
                             list(targets.values()))
    return dict(zip(targets, grads))


def _run_training(built: gb.BuiltLayer) -> dict:
    """Output and gradients on batch 0, moving stats after N update steps."""
    grads = _gradients(built)
    feeds = built.feeds(1 + UPDATE_STEPS)
    with _session(built.graph) as sess:
        head, grad_values = sess.run([built.head, grads], feeds[0])
        for feed in feeds[1:]:
            sess.run(built.update_ops, feed)
        moving = sess.run([built.moving_mean, built.moving_variance])
    return {'head': head, 'grads': grad_values, 'moving': moving}


def _run_forward(built: gb.BuiltLayer) -> np.ndarray:
    with _session(built.graph) as sess:
        return sess.run(built.head, built.feeds(1)[0])


def _fold(built, **kwargs):
    return tf1_quantize.fold_batch_norms(graph=built.graph, **kwargs)


@functools.lru_cache(maxsize=None)
def _training_pair(case: Case, freeze_bn_delay: Optional[int] = None):
    """(original numbers, folded numbers, folded BuiltLayer)."""
    original = _run_training(_build(case))
    built = _build(case)
    _fold(built, is_training=True, freeze_bn_delay=freeze_bn_delay)
    return original, _run_training(built), built


@functools.lru_cache(maxsize=None)
def _eval_pair(case: Case):
    """(original output, folded output, folded BuiltLayer)."""
    original = _run_forward(_build(case))
    built = _build(case)
    _fold(built, is_training=False)
    return original, _run_forward(built), built


def assert_scaled_close(actual, expected, tol, what=''):
    """|actual - expected| <= tol * max|expected|, elementwise."""
    scale = max(float(np.max(np.abs(expected))), 1e-6)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=tol * scale,
                               err_msg=what)


def _assert_grads_close(actual: dict, expected: dict):
    assert actual.keys() == expected.keys()
    for name in expected:
        assert actual[name] is not None, f'no gradient for {name}'
        assert_scaled_close(actual[name], expected[name], GRADIENT_TOL,
                            f'gradient w.r.t. {name}')


# ---------------------------------------------------------------------------
# Graph inspection.


def _op(graph: tf.Graph, name: str) -> tf.Operation:
    try:
        return graph.get_operation_by_name(name)
    except KeyError:
        names = sorted(op.name for op in graph.get_operations()
                       if op.name.startswith(name.rpartition('/')[0]))
        pytest.fail(f'no op {name!r}; ops in its scope: {names}')


def _input_ops(op: tf.Operation) -> set:
    return {t.op.name for t in op.inputs}


def _is_upstream(tensor: tf.Tensor, of: tf.Tensor) -> bool:
    """Whether `of` depends on `tensor` through data inputs."""
    seen, stack = set(), [of.op]
    while stack:
        op = stack.pop()
        if any(t is tensor or t.name == tensor.name for t in op.inputs):
            return True
        if op.name not in seen:
            seen.add(op.name)
            stack.extend(t.op for t in op.inputs)
    return False


def _reads_variable(tensor: tf.Tensor, variable) -> bool:
    """`tensor` is a read (``/read`` or ReadVariableOp) of `variable`."""
    op = tensor.op
    return (op.type in ('Identity', 'ReadVariableOp')
            and op.inputs[0].op.name == variable.op.name)


def _fold_names(built: gb.BuiltLayer) -> dict:
    """The op names spec sections 2.2 / 2.8 / 7.2 give a contrib layer."""
    spec, s = built.spec, built.scope
    fused = spec.bn == 'fused'
    names = {
        'mul_fold': f'{s}/mul_fold',
        'layer_fold': f'{built.layer_op.name}_Fold',
        'add_fold': f'{s}/add_fold',
        'correction_mult': f'{s}/correction_mult',
        'post_conv_mul': f'{s}/post_conv_mul',
        'correction_add': f'{s}/correction_add',
    }
    if fused:
        names['multiplier'] = f'{s}/BatchNorm_Fold/mul'
        names['bias'] = f'{s}/BatchNorm_Fold/bias'
        names['correction_scale'] = (
            f'{s}/BatchNorm_Fold/batch_norm_correction/correction_scale')
    else:
        last = 'mul' if spec.scale else 'Rsqrt'
        names['multiplier'] = f'{s}/BatchNorm/batchnorm_1/{last}'
        names['bias'] = f'{s}/BatchNorm/batchnorm_1/sub'
        names['correction_scale'] = (
            f'{s}/batch_norm_correction/correction_scale')
    if spec.layer in ('depthwise', 'atrous'):
        names['multiplier'] = (f'{s}/BatchNorm_Fold/scale_reshape' if fused
                               else f'{s}/scale_reshape')
    if spec.layer == 'atrous':
        names['batch_to_space_fold'] = (
            f'{s}/BatchToSpaceND_Fold' if fused
            else f'{s}/depthwise/BatchToSpaceND_Fold')
    return names


def _assert_folded_layer(built: gb.BuiltLayer, names: dict):
    """The cloned layer reads the layer input and mul_fold; returns the op
    whose output is the folded layer result (after BatchToSpaceND)."""
    graph = built.graph
    clone = _op(graph, names['layer_fold'])
    assert clone.type == built.layer_op.type
    assert clone.inputs[0].name == built.layer_op.inputs[0].name
    assert clone.inputs[1].op.name == names['mul_fold']
    if 'batch_to_space_fold' not in names:
        return clone
    assert clone.inputs[0].op.name == f'{built.scope}/depthwise/SpaceToBatchND'
    batch_to_space = _op(graph, names['batch_to_space_fold'])
    assert batch_to_space.type == 'BatchToSpaceND'
    assert batch_to_space.inputs[0].op is clone
    return batch_to_space


def _assert_add_fold_feeds_next_op(built: gb.BuiltLayer, add_fold):
    assert add_fold.type in ('Add', 'AddV2')
    if built.bypass_op is not None:
        consumer = built.bypass_op
    elif built.activation is not None:
        consumer = built.output.op
    else:
        consumer = built.head.op
    assert add_fold.outputs[0].name in {t.name for t in consumer.inputs}
    assert _is_upstream(add_fold.outputs[0], built.head)


# ---------------------------------------------------------------------------
# Training rewrite: numbers.


@pytest.mark.parametrize('case', _params(CONTRIB_TRAINING + OTHER_TRAINING))
def test_training_fold_forward_matches_batch_statistics(case):
    original, folded, _ = _training_pair(case)
    assert_scaled_close(folded['head'], original['head'], FORWARD_TOL)


@pytest.mark.parametrize('case', _params(CONTRIB_TRAINING + OTHER_TRAINING))
def test_training_fold_gradients_match(case):
    original, folded, _ = _training_pair(case)
    _assert_grads_close(folded['grads'], original['grads'])


@pytest.mark.parametrize('case', _params(CONTRIB_TRAINING + OTHER_TRAINING))
def test_training_fold_moving_averages_match(case):
    original, folded, _ = _training_pair(case)
    for name, a, b in zip(('mean', 'variance'), folded['moving'],
                          original['moving']):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6,
                                   err_msg=f'moving {name}')


@pytest.mark.parametrize('case', _params(CONTRIB_BASIC + OTHER_TRAINING[:3]))
def test_future_freeze_delay_keeps_batch_statistics(case):
    original, folded, _ = _training_pair(case, FUTURE_DELAY)
    assert_scaled_close(folded['head'], original['head'], FORWARD_TOL)
    _assert_grads_close(folded['grads'], original['grads'])
    np.testing.assert_allclose(folded['moving'], original['moving'],
                               rtol=1e-5, atol=1e-6)


def _numpy_head(built, values, feed, mean, variance):
    """The expected ``head`` for the BN statistics `mean`, `variance`."""
    residual = feed[built.inputs] if built.residual is not None else None
    output = gb.numpy_bn_block(values['pre_bn'], mean, variance,
                               values.get('gamma'), values['beta'],
                               built.epsilon, residual, built.activation)
    return output * built.head_weights


def _run_block(sess, built, ops, feed=None):
    fetch = {'head': built.head, 'pre_bn': built.pre_bn,
             'beta': built.beta, 'mm': built.moving_mean,
             'mv': built.moving_variance}
    if built.gamma is not None:
        fetch['gamma'] = built.gamma
    return sess.run([fetch, ops], feed)[0]


@pytest.mark.parametrize('case', _params(CONTRIB_BASIC + OTHER_TRAINING[:3]))
def test_freeze_switches_to_moving_statistics(case):
    """Step 1 (< delay): batch stats, moving stats move. Step 2 (>= delay):
    moving stats frozen. Step 3: output uses the moving statistics."""
    built = _build(case)
    _fold(built, is_training=True, freeze_bn_delay=FREEZE_DELAY)
    feeds = built.feeds(3, seed=5)
    axes = tuple(range(len(built.pre_bn.shape) - 1))
    with _session(built.graph) as sess:
        before = sess.run([built.moving_mean, built.moving_variance])
        step1 = _run_block(sess, built, built.update_ops, feeds[0])
        pre = step1['pre_bn']
        assert_scaled_close(step1['head'], _numpy_head(
            built, step1, feeds[0], pre.mean(axis=axes), pre.var(axis=axes)),
            FORWARD_TOL, 'step 1 output (batch statistics)')
        after1 = sess.run([built.moving_mean, built.moving_variance])
        assert not np.allclose(after1[0], before[0]), 'step 1 froze already'
        sess.run(built.update_ops, feeds[1])
        after2 = sess.run([built.moving_mean, built.moving_variance])
        np.testing.assert_array_equal(after2, after1, 'updates not frozen')
        step3 = _run_block(sess, built, [], feeds[2])
    expected = _numpy_head(built, step3, feeds[2], step3['mm'], step3['mv'])
    assert_scaled_close(step3['head'], expected, FORWARD_TOL,
                        'frozen output (moving statistics)')


# ---------------------------------------------------------------------------
# Eval rewrite: numbers.


@pytest.mark.parametrize('case', _params(
    CONTRIB_INFERENCE + OTHER_INFERENCE + CONTRIB_BASIC[::2]))
def test_eval_fold_forward_matches(case):
    """Inference BNs fold with moving stats; training BNs (CONTRIB_BASIC)
    keep using batch statistics in an eval rewrite."""
    original, folded, _ = _eval_pair(case)
    assert_scaled_close(folded, original, FORWARD_TOL)


# ---------------------------------------------------------------------------
# Structure.


@pytest.mark.parametrize('case', _params(
    OTHER_TRAINING + OTHER_INFERENCE))
def test_other_sources_are_folded(case):
    """Keras / v1.layers graphs: the BN is off the forward path, the cloned
    layer on it."""
    built = _build(case)
    training = bool(built.update_ops)
    _fold(built, is_training=training)
    clone = _op(built.graph, f'{built.layer_op.name}_Fold')
    assert clone.type == built.layer_op.type
    assert _is_upstream(clone.outputs[0], built.head)
    assert not _is_upstream(built.bn_output, built.head)


@pytest.mark.parametrize('case', _params(CONTRIB_TRAINING))
def test_training_fold_structure(case):
    _, _, built = _training_pair(case)
    graph, names = built.graph, _fold_names(built)
    mul_fold = _op(graph, names['mul_fold'])
    assert mul_fold.type == 'Mul'
    assert _input_ops(mul_fold) == {names['correction_mult'],
                                    names['multiplier']}
    folded_out = _assert_folded_layer(built, names)
    post_conv_mul = _op(graph, names['post_conv_mul'])
    assert folded_out.name in _input_ops(post_conv_mul)
    assert names['post_conv_mul'] in _input_ops(
        _op(graph, names['correction_add']))
    add_fold = _op(graph, names['add_fold'])
    assert _input_ops(add_fold) == {names['correction_add'], names['bias']}
    _assert_add_fold_feeds_next_op(built, add_fold)
    _op(graph, names['correction_scale'])
    assert not _is_upstream(built.bn_output, built.head)
    assert not [op.name for op in graph.get_operations() if '//' in op.name]


@pytest.mark.parametrize('case', _params(
    c for c in CONTRIB_TRAINING if 'fused' in c.id.split('-')))
def test_training_fold_sets_fused_gradient_override(case):
    _, _, built = _training_pair(case)
    assert built.bn_op.get_attr('_gradient_op_type') == FOLD_GRADIENT


@pytest.mark.parametrize('case', _params(CONTRIB_BASIC))
def test_freeze_delay_structure(case):
    built = _build(case)
    _fold(built, is_training=True, freeze_bn_delay=FREEZE_DELAY)
    bn_scope = f'{built.scope}/BatchNorm'
    for update, cond in (('AssignMovingAvg', 'freeze_moving_mean'),
                         ('AssignMovingAvg_1', 'freeze_moving_var')):
        decay = _op(built.graph, f'{bn_scope}/{update}/mul').inputs[1]
        assert decay.op.type == 'Select', decay.name
        assert decay.op.name.endswith(cond), decay.name
    assert not [op.name for op in built.graph.get_operations()
                if '//' in op.name]


@pytest.mark.parametrize('case', _params(CONTRIB_INFERENCE))
def test_eval_fold_structure(case):
    _, _, built = _eval_pair(case)
    graph, names = built.graph, _fold_names(built)
    mul_fold = _op(graph, names['mul_fold'])
    assert mul_fold.type == 'Mul'
    assert _reads_variable(mul_fold.inputs[0], built.weights)
    assert mul_fold.inputs[1].op.name == names['multiplier']
    folded_out = _assert_folded_layer(built, names)
    add_fold = _op(graph, names['add_fold'])
    assert _input_ops(add_fold) == {folded_out.name, names['bias']}
    _assert_add_fold_feeds_next_op(built, add_fold)
    leftovers = [op.name for op in graph.get_operations()
                 if 'correction' in op.name or 'fake_quantization_step'
                 in op.name or '//' in op.name]
    assert not leftovers


# ---------------------------------------------------------------------------
# Idempotence and no-op cases.


@pytest.mark.parametrize('case', _params(CONTRIB_BASIC))
@pytest.mark.parametrize('mode', ['train', 'freeze', 'eval'])
def test_second_fold_is_a_no_op(case, mode):
    built = _build(case)
    kwargs = {'is_training': mode != 'eval',
              'freeze_bn_delay': FREEZE_DELAY if mode == 'freeze' else None}
    before = built.graph.as_graph_def()
    _fold(built, **kwargs)
    first = built.graph.as_graph_def()
    assert first != before, 'the first fold changed nothing'
    _fold(built, **kwargs)
    assert built.graph.as_graph_def() == first


@pytest.mark.parametrize('layer', gb.LAYER_TYPES)
@pytest.mark.parametrize('is_training', [True, False])
def test_layer_without_batch_norm_is_left_alone(layer, is_training):
    built = gb.build_contrib_layer(gb.LayerSpec(layer=layer, bn=None))
    before = built.graph.as_graph_def()
    _fold(built, is_training=is_training)
    assert built.graph.as_graph_def() == before


# ---------------------------------------------------------------------------
# Errors and graphs that must never be folded wrongly.


@pytest.mark.parametrize('rewrite', [
    functools.partial(tf1_quantize.fold_batch_norms, is_training=True),
    tf1_quantize.create_training_graph,
], ids=['fold_batch_norms', 'create_training_graph'])
def test_bn_with_tensor_training_flag_is_refused(rewrite):
    cond_graph = gb.build_cond_bn_graph(v1_cond=True)
    assert len(cond_graph.bn_op_names) == 2
    before = cond_graph.graph.as_graph_def()
    with pytest.raises(ValueError) as error:
        rewrite(cond_graph.graph)
    assert any(name in str(error.value) for name in cond_graph.bn_op_names), (
        str(error.value))
    assert cond_graph.graph.as_graph_def() == before


def _refused_or_exact(build, run, names):
    """Training-folds a graph from `build`: either a ValueError naming one
    of `names` leaves it untouched, or `run` gives the original's numbers."""
    expected = run(build())
    candidate = build()
    before = candidate.graph.as_graph_def()
    try:
        tf1_quantize.fold_batch_norms(graph=candidate.graph, is_training=True)
    except ValueError as error:
        assert any(name in str(error) for name in names), str(error)
        assert candidate.graph.as_graph_def() == before
        return
    actual = run(candidate)
    assert_scaled_close(actual['head'], expected['head'], FORWARD_TOL)
    if 'grads' in expected:
        _assert_grads_close(actual['grads'], expected['grads'])


def _run_cond_graph(cond_graph: gb.CondGraph) -> dict:
    with _session(cond_graph.graph) as sess:
        feed = {cond_graph.inputs: np.random.RandomState(1).randn(
            *cond_graph.inputs.shape.as_list()).astype(np.float32)}
        return {'head': sess.run(cond_graph.output, feed)}


def test_bn_in_functional_cond_is_never_folded_wrongly():
    _refused_or_exact(
        functools.partial(gb.build_cond_bn_graph, v1_cond=False),
        _run_cond_graph, ['second/BatchNorm/cond'])


@pytest.mark.parametrize('bn', ['fused', 'unfused'])
def test_training_fold_of_inference_bn_is_never_wrong(bn):
    """A frozen (inference-mode) BN without moving-average updates."""
    _refused_or_exact(functools.partial(_build, contrib_case(
        bn=bn, bn_training=False)), _run_training, ['test/BatchNorm/'])
