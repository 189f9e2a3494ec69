"""Tests of tf1_quantize.export on small hand-built FakeQuant graphs.

The graphs are built with `tf.quantization.fake_quant_with_min_max_vars`
directly, so these tests do not depend on the rewrite.
"""

import logging
import os

import numpy as np
import pytest
import tensorflow as tf

from tf1_quantize import export

v1 = tf.compat.v1

INPUT = 'input'
OUTPUT = 'output'
OUTPUT_RANGE = (-4.0, 4.0)
OUTPUT_STEP = 8.0 / 255
WEIGHT_QUANTS = {'conv/weights_quant/FakeQuant', 'fc/weights_quant/FakeQuant'}


def _weights(name, shape, seed):
    return v1.get_variable(
        name, shape, initializer=v1.random_normal_initializer(seed=seed))


def _fake_quant(x, range_min, range_max, name, narrow_range=False):
    return tf.quantization.fake_quant_with_min_max_vars(
        x, range_min, range_max, narrow_range=narrow_range, name=name)


def _weight_quant(w, scope, symmetric):
    """A weights FakeQuant; symmetric [-m, m] or the raw [min, max]."""
    if symmetric:
        bound = tf.reduce_max(tf.abs(w))
        low, high = -bound, bound
    else:
        low = tf.minimum(tf.reduce_min(w), 0.0)
        high = tf.maximum(tf.reduce_max(w), 0.0)
    return _fake_quant(w, low, high, scope + '/weights_quant/FakeQuant',
                       narrow_range=True)


def _build_model(input_quant=True, symmetric=True, float_head=False):
    """conv 3x3 -> Relu6 -> FQ -> mean -> FQ -> FC -> FQ [-> float FC].

    Args:
        input_quant: put a FakeQuant with range [0, 1] on the input.
        symmetric: symmetric weight ranges (int8-compatible).
        float_head: add an FC layer `head/MatMul` with unquantized weights
            and no output FakeQuant (it stays float in TFLite).

    Returns:
        A session with initialized variables; its graph has 'input' and
        'output'.
    """
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [None, 6, 6, 1], name=INPUT)
        if input_quant:
            x = _fake_quant(x, 0.0, 1.0, 'input_quant/FakeQuant')
        w = _weight_quant(_weights('conv/weights', [3, 3, 1, 4], 1), 'conv',
                          symmetric)
        y = tf.nn.conv2d(x, w, [1, 1, 1, 1], 'SAME', name='conv/Conv2D')
        y = tf.nn.relu6(y, name='conv/Relu6')
        y = _fake_quant(y, 0.0, 6.0, 'conv/act_quant/FakeQuant')
        y = tf.reduce_mean(y, [1, 2], name='pool')
        y = _fake_quant(y, 0.0, 6.0, 'pool/act_quant/FakeQuant')
        w = _weight_quant(_weights('fc/weights', [4, 5], 2), 'fc', symmetric)
        y = tf.matmul(y, w, name='fc/MatMul')
        y = _fake_quant(y, *OUTPUT_RANGE, 'fc/act_quant/FakeQuant')
        if float_head:
            y = tf.matmul(y, _weights('head/weights', [5, 5], 3),
                          name='head/MatMul')
        tf.identity(y, name=OUTPUT)
        session = v1.Session(graph=graph)
        session.run(v1.global_variables_initializer())
    return session


def _frozen(**kwargs):
    with _build_model(**kwargs) as session:
        return export.freeze_session(session, OUTPUT)


def _frozen_pool_model(output_shift=0.0):
    """FakeQuant [0, 1] -> 2x2 max pool -> FakeQuant [0, 1], frozen.

    Integer max pooling is exact, so TFLite follows this graph exactly.
    """
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [None, 6, 6, 1], name=INPUT)
        x = _fake_quant(x, 0.0, 1.0, 'input_quant/FakeQuant')
        y = tf.nn.max_pool2d(x, 2, 2, 'VALID', name='pool')
        y = _fake_quant(y, 0.0, 1.0, 'pool/act_quant/FakeQuant')
        y = tf.reshape(y, [-1, 9], name='flatten')
        tf.identity(y + output_shift, name=OUTPUT)
        with v1.Session(graph=graph) as session:
            return export.freeze_session(session, OUTPUT)


def _inputs(n=64, seed=0):
    return np.random.RandomState(seed).uniform(
        0.0, 1.0, [n, 6, 6, 1]).astype(np.float32)


def _op_names(model):
    interpreter = export.tflite_interpreter(model)
    return [op['op_name'] for op in interpreter._get_ops_details()]


# ----------------------------------------------------------------- freeze


def test_freeze_makes_constants_and_keeps_outputs():
    x = _inputs(8)
    with _build_model() as session:
        expected = session.run(OUTPUT + ':0', {INPUT + ':0': x})
        frozen = export.freeze_session(session, OUTPUT + ':0')
    op_types = {node.op for node in frozen.node}
    assert not op_types & {'VarHandleOp', 'VariableV2', 'ReadVariableOp'}
    assert 'FakeQuantWithMinMaxVars' in op_types
    actual = export.run_reference(frozen, INPUT, OUTPUT, x)
    np.testing.assert_allclose(actual, expected, rtol=1e-6)


def test_freeze_unknown_output_raises():
    with _build_model() as session:
        with pytest.raises(ValueError, match='no_such_op'):
            export.freeze_session(session, ['no_such_op'])


# ----------------------------------------------------------------- ranges


@pytest.mark.parametrize('low, high, narrow, zero_point, symmetric', [
    (-1.0, 1.0, True, 128, True),
    # step 1.5/254: zero point 1 + 84.67 rounds to 86.
    (-0.5, 1.0, True, 86, False),
    (0.0, 6.0, False, 0, False),
    # step 4/255: zero point 63.75 rounds to 64.
    (-1.0, 3.0, False, 64, False),
])
def test_fake_quant_range_nudging(low, high, narrow, zero_point, symmetric):
    fq = export.FakeQuantRange('q', 'x', low, high, narrow_range=narrow)
    assert fq.zero_point == zero_point
    assert fq.is_symmetric == symmetric


def test_fake_quant_ranges_found_and_weights_flagged():
    ranges = {r.name: r for r in export.fake_quant_ranges(_frozen())}
    assert set(ranges) == WEIGHT_QUANTS | {
        'input_quant/FakeQuant', 'conv/act_quant/FakeQuant',
        'pool/act_quant/FakeQuant', 'fc/act_quant/FakeQuant'}
    assert {n for n, r in ranges.items() if r.is_weight} == WEIGHT_QUANTS
    assert ranges['input_quant/FakeQuant'].input_name == INPUT
    output_quant = ranges['fc/act_quant/FakeQuant']
    assert (output_quant.min, output_quant.max) == OUTPUT_RANGE


# ------------------------------------------------------------ input stats


@pytest.mark.parametrize('dtype, mean', [(tf.uint8, 0.0), (tf.int8, -128.0)])
def test_input_stats_derived_from_input_fake_quant(dtype, mean):
    stats = export.input_stats_from_graph(_frozen(), INPUT + ':0', dtype)
    assert stats == pytest.approx((mean, 255.0))


@pytest.mark.parametrize('dtype, mean', [(tf.uint8, 64.0), (tf.int8, -64.0)])
def test_input_stats_from_range_are_nudged(dtype, mean):
    stats = export.input_stats_from_range(-1.0, 3.0, dtype)
    assert stats == pytest.approx((mean, 255.0 / 4.0))


def test_input_stats_none_without_input_fake_quant():
    assert export.input_stats_from_graph(
        _frozen(input_quant=False), INPUT) is None


def test_missing_input_range_raises_with_input_name():
    with pytest.raises(export.MissingInputRangeError,
                       match='"input".*input_ranges'):
        export.convert_to_tflite(_frozen(input_quant=False), INPUT, OUTPUT)


def test_given_input_range_wins_over_graph():
    stats = export.resolve_input_stats(
        _frozen(), [INPUT], tf.uint8, {INPUT + ':0': (0.0, 2.0)})
    assert stats == {INPUT: pytest.approx((0.0, 127.5))}


def test_empty_input_range_raises():
    with pytest.raises(ValueError, match='max > min'):
        export.input_stats_from_range(1.0, 1.0)


# ------------------------------------------------------------- conversion


@pytest.mark.parametrize('dtype, np_dtype, in_zero', [
    (tf.uint8, np.uint8, 0), (tf.int8, np.int8, -128)])
def test_integer_model_follows_graph(dtype, np_dtype, in_zero):
    frozen = _frozen()
    model = export.convert_to_tflite(frozen, INPUT, OUTPUT, dtype)
    assert export.find_float_ops(model) == []
    interpreter = export.tflite_interpreter(model)
    in_detail = interpreter.get_input_details()[0]
    assert in_detail['dtype'] == np_dtype
    assert in_detail['quantization'] == pytest.approx((1 / 255, in_zero))
    assert interpreter.get_output_details()[0]['dtype'] == np_dtype
    assert export.output_step(model) == pytest.approx(OUTPUT_STEP)
    report = export.compare_with_reference(model, frozen, INPUT, OUTPUT,
                                           _inputs())
    assert report.num_samples == 64
    assert report.argmax_agreement >= 0.95
    assert report.within_one_lsb >= 0.99
    assert report.max_diff_lsb <= 2.0


def test_input_range_for_unquantized_input():
    model = export.convert_to_tflite(_frozen(input_quant=False), INPUT,
                                     OUTPUT, tf.uint8,
                                     input_ranges={INPUT: (0.0, 1.0)})
    assert export.find_float_ops(model) == []


def test_float_io_boundary_ops_are_allowed():
    frozen = _frozen()
    model = export.convert_to_tflite(frozen, INPUT, OUTPUT, tf.uint8,
                                     float_io=True)
    ops = _op_names(model)
    assert (ops[0], ops[-1]) == ('QUANTIZE', 'DEQUANTIZE')
    assert export.find_float_ops(model) == []
    assert export.output_step(model) == pytest.approx(OUTPUT_STEP)
    report = export.compare_with_reference(model, frozen, INPUT, OUTPUT,
                                           _inputs(16))
    assert report.within_one_lsb >= 0.99


def test_unsupported_inference_type_raises():
    with pytest.raises(ValueError, match='uint8 or tf.int8'):
        export.convert_to_tflite(_frozen(), INPUT, OUTPUT, tf.int16)


# -------------------------------------------------------------- float ops


def test_unquantized_layer_is_reported_by_name():
    with pytest.raises(export.FloatOpsError) as caught:
        export.convert_to_tflite(_frozen(float_head=True), INPUT, OUTPUT,
                                 tf.uint8)
    by_type = {op.op_name: op for op in caught.value.float_ops}
    assert set(by_type) == {'DEQUANTIZE', 'FULLY_CONNECTED'}
    head = by_type['FULLY_CONNECTED']
    assert head.input_types == ('float32', 'float32')
    # TFLite names the float FC's output after the graph op it became.
    assert OUTPUT in head.output_names
    # This DEQUANTIZE is inside the model, not its final one: reported, with
    # the name of the quantized tensor it reads back to float.
    assert any('fc/act_quant/FakeQuant' in name
               for name in by_type['DEQUANTIZE'].output_names)
    message = str(caught.value)
    assert 'FULLY_CONNECTED' in message and 'allow_float_ops=True' in message


def test_allow_float_ops_warns(caplog):
    with caplog.at_level(logging.WARNING):
        model = export.convert_to_tflite(_frozen(float_head=True), INPUT,
                                         OUTPUT, tf.uint8,
                                         allow_float_ops=True)
    assert any('FULLY_CONNECTED' in r.getMessage() for r in caplog.records)
    assert len(export.check_integer_only(model, allow_float_ops=True)) == 2


def test_int8_rejects_asymmetric_weights():
    with pytest.raises(export.AsymmetricWeightsError) as caught:
        export.convert_to_tflite(_frozen(symmetric=False), INPUT, OUTPUT,
                                 tf.int8)
    message = str(caught.value)
    assert all(name in message for name in WEIGHT_QUANTS)
    assert 'symmetric=True' in message
    assert 'experimental_create_training_graph' in message


def test_uint8_accepts_asymmetric_weights():
    model = export.convert_to_tflite(_frozen(symmetric=False), INPUT, OUTPUT,
                                     tf.uint8)
    assert export.find_float_ops(model) == []


# ----------------------------------------------------------------- parity


def test_parity_report_numbers():
    expected = np.array([[0.0, 1.0, 0.0], [2.0, 0.0, 0.0]])
    actual = expected + np.array([[0.0, 0.0, 2.0], [0.0, 0.0, -0.5]])
    report = export.parity_report(actual, expected, step=0.5)
    assert report.num_samples == 2
    # Sample 0: argmax moves from 1 to 2; sample 1 keeps 0.
    assert report.argmax_agreement == 0.5
    # Differences in steps: 0, 0, 4 and 0, 0, 1.
    assert report.max_diff_lsb == pytest.approx(4.0)
    assert report.mean_diff_lsb == pytest.approx(5 / 6)
    assert report.within_one_lsb == pytest.approx(5 / 6)
    assert report.max_abs_diff == pytest.approx(2.0)
    assert report.output_scale == 0.5


def test_parity_report_without_step_has_no_lsb_figures():
    report = export.parity_report(np.eye(3), np.eye(3) * 0.9, step=None)
    assert report.argmax_agreement == 1.0
    assert report.max_abs_diff == pytest.approx(0.1)
    assert (report.max_diff_lsb, report.within_one_lsb,
            report.output_scale) == (None, None, None)
    assert 'float output' in str(report)


def test_parity_of_a_mixed_model_with_float_output():
    frozen = _frozen(float_head=True)
    model = export.convert_to_tflite(frozen, INPUT, OUTPUT, tf.uint8,
                                     allow_float_ops=True)
    assert export.output_step(model) is None
    report = export.compare_with_reference(model, frozen, INPUT, OUTPUT,
                                           _inputs())
    assert report.output_scale is None
    assert report.argmax_agreement >= 0.9
    # The float head amplifies the quantized layer's 1-step differences
    # (8/255) by at most the sum of its absolute weights (about 2 to 5).
    assert 0.0 < report.max_abs_diff < 0.5


def test_parity_exact_model_and_known_shift():
    frozen = _frozen_pool_model()
    model = export.convert_to_tflite(frozen, INPUT, OUTPUT, tf.uint8)
    assert export.output_step(model) == pytest.approx(1 / 255)
    exact = export.compare_with_reference(model, frozen, INPUT, OUTPUT,
                                          _inputs())
    assert (exact.argmax_agreement, exact.max_diff_lsb,
            exact.within_one_lsb) == (1.0, 0.0, 1.0)
    # A reference shifted by two output steps is two LSB away everywhere.
    shifted = _frozen_pool_model(output_shift=2 / 255)
    report = export.compare_with_reference(model, shifted, INPUT, OUTPUT,
                                           _inputs())
    assert report.argmax_agreement == 1.0
    assert report.max_diff_lsb == pytest.approx(2.0, abs=1e-3)
    assert report.mean_diff_lsb == pytest.approx(2.0, abs=1e-3)
    assert report.within_one_lsb == 0.0


def test_parity_session_reference_equals_graph_def_reference():
    frozen = _frozen()
    model = export.convert_to_tflite(frozen, INPUT, OUTPUT, tf.uint8)
    with _build_model() as session:
        from_session = export.compare_with_reference(
            model, session, INPUT, OUTPUT, _inputs())
    from_graph = export.compare_with_reference(model, frozen, INPUT, OUTPUT,
                                               _inputs())
    assert from_session == from_graph


@pytest.mark.parametrize('actual, expected, step, message', [
    (np.zeros([2, 3]), np.zeros([2, 4]), 1.0, 'shapes differ'),
    (np.zeros([2, 3]), np.zeros([2, 3]), 0.0, 'positive'),
    (np.zeros([0, 3]), np.zeros([0, 3]), 1.0, 'one sample'),
], ids=['shape', 'step', 'empty'])
def test_parity_report_bad_arguments(actual, expected, step, message):
    with pytest.raises(ValueError, match=message):
        export.parity_report(actual, expected, step)


# ----------------------------------------------------------- atomic write


def test_write_atomic_replaces_without_leftovers(tmp_path):
    path = tmp_path / 'sub' / 'model.tflite'
    assert export.write_atomic(str(path), b'first') == os.path.realpath(path)
    export.write_atomic(str(path), b'second')
    assert path.read_bytes() == b'second'
    assert os.listdir(path.parent) == ['model.tflite']


def test_write_atomic_file_modes(tmp_path):
    umask = os.umask(0o022)
    try:
        new = tmp_path / 'new.tflite'
        export.write_atomic(str(new), b'x')
        assert new.stat().st_mode & 0o777 == 0o644
        kept = tmp_path / 'kept.tflite'
        kept.write_bytes(b'old')
        kept.chmod(0o600)
        export.write_atomic(str(kept), b'new')
        assert kept.stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(umask)


def test_write_atomic_refuses_to_overwrite_an_input(tmp_path):
    source = tmp_path / 'frozen.pb'
    source.write_bytes(b'graph')
    alias = os.path.join(str(tmp_path), '.', 'frozen.pb')
    with pytest.raises(ValueError, match='overwrite input'):
        export.write_atomic(alias, b'model', protected_paths=[str(source)])
    assert source.read_bytes() == b'graph'


def test_write_atomic_failure_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / 'model.tflite'
    export.write_atomic(str(path), b'old')

    def failing_replace(src, dst):
        raise OSError(f'disk full: {src} -> {dst}')

    monkeypatch.setattr(os, 'replace', failing_replace)
    with pytest.raises(OSError, match='disk full'):
        export.write_atomic(str(path), b'new')
    assert path.read_bytes() == b'old'
    assert os.listdir(tmp_path) == ['model.tflite']


# --------------------------------------------------------------- one call


def test_export_session_one_call(tmp_path):
    path = tmp_path / 'out' / 'model.tflite'
    with _build_model() as session:
        model, report = export.export_session(
            session, INPUT + ':0', OUTPUT + ':0', tf.int8,
            parity_inputs=_inputs(), output_path=str(path))
    assert report.inference_type == 'int8'
    assert report.size_bytes == len(model)
    assert report.path == os.path.realpath(path)
    assert report.float_ops == ()
    assert report.input_stats == {INPUT: (-128.0, 255.0)}
    assert report.parity.within_one_lsb >= 0.99
    assert path.read_bytes() == model


def _dangling_fake_quant_graph():
    """What the rewrite leaves when the logits are a graph output: a final
    FakeQuant that nothing reads."""
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [None, 4], name=INPUT)
        w = _weight_quant(_weights('fc/weights', [4, 3], 1), 'fc', True)
        logits = tf.matmul(x, w, name='fc/MatMul')
        _fake_quant(logits, -4.0, 4.0, 'fc/act_quant/FakeQuant')
    return graph


def test_resolve_output_name_prefers_a_dangling_fake_quant():
    graph = _dangling_fake_quant_graph()
    assert (export.resolve_output_name(graph, 'fc/MatMul')
            == 'fc/act_quant/FakeQuant:0')
    # A FakeQuant that feeds something is not an output: keep the name.
    assert (export.resolve_output_name(graph, 'fc/weights_quant/FakeQuant')
            == 'fc/weights_quant/FakeQuant:0')
    with pytest.raises(ValueError, match='not found'):
        export.resolve_output_name(graph, 'missing')


def test_export_session_exports_the_dangling_fake_quant():
    graph = _dangling_fake_quant_graph()
    with graph.as_default(), v1.Session(graph=graph) as session:
        session.run(v1.global_variables_initializer())
        model, report = export.export_session(
            session, INPUT, 'fc/MatMul', tf.uint8,
            input_ranges={INPUT: (-1.0, 1.0)},
            parity_inputs=np.random.RandomState(0).uniform(
                -1, 1, [32, 4]).astype(np.float32))
    assert report.float_ops == ()
    assert export.output_step(model) == pytest.approx(OUTPUT_STEP)
    assert report.parity.within_one_lsb >= 0.99
