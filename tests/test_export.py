"""Tests of tf1_quantize.export: freeze, ranges, conversion, float ops, and
`export_session` in one call, on small hand-built FakeQuant graphs.

The graphs are built with `tf.quantization.fake_quant_with_min_max_vars`
directly (tests/export_models.py), so these tests do not depend on the
rewrite. Parity, checks of the graph and files have their own test files.
"""

import logging
import os

import numpy as np
import pytest
import tensorflow as tf

from export_models import build_model, fake_quant, frozen, inputs
from export_models import weight_quant, weights
from export_models import INPUT, OUTPUT, OUTPUT_RANGE, OUTPUT_STEP
from export_models import ACTIVATION_QUANTS, WEIGHT_QUANTS
from tf1_quantize import export

v1 = tf.compat.v1


def _op_names(model):
    interpreter = export.tflite_interpreter(model)
    return [op['op_name']
            for op in export.interpreter.ops_details(interpreter)]


# ----------------------------------------------------------------- freeze


def test_freeze_makes_constants_and_keeps_outputs():
    x = inputs(8)
    with build_model() as session:
        expected = session.run(OUTPUT + ':0', {INPUT + ':0': x})
        graph_def = export.freeze_session(session, OUTPUT + ':0')
    op_types = {node.op for node in graph_def.node}
    assert not op_types & {'VarHandleOp', 'VariableV2', 'ReadVariableOp'}
    assert 'FakeQuantWithMinMaxVars' in op_types
    actual = export.run_reference(graph_def, INPUT, OUTPUT, x)
    np.testing.assert_allclose(actual, expected, rtol=1e-6)


def test_freeze_unknown_output_raises():
    with build_model() as session:
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
    ranges = {r.name: r for r in export.fake_quant_ranges(frozen())}
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
    stats = export.input_stats_from_graph(frozen(), INPUT + ':0', dtype)
    assert stats == pytest.approx((mean, 255.0))


@pytest.mark.parametrize('dtype, mean', [(tf.uint8, 64.0), (tf.int8, -64.0)])
def test_input_stats_from_range_are_nudged(dtype, mean):
    stats = export.input_stats_from_range(-1.0, 3.0, dtype)
    assert stats == pytest.approx((mean, 255.0 / 4.0))


def test_input_stats_none_without_input_fake_quant():
    assert export.input_stats_from_graph(
        frozen(input_quant=False), INPUT) is None


def test_missing_input_range_raises_with_input_name():
    with pytest.raises(export.MissingInputRangeError,
                       match='"input".*input_ranges'):
        export.convert_to_tflite(frozen(input_quant=False), INPUT, OUTPUT)


def test_given_input_range_wins_over_graph():
    stats = export.resolve_input_stats(
        frozen(), [INPUT], tf.uint8, {INPUT + ':0': (0.0, 2.0)})
    assert stats == {INPUT: pytest.approx((0.0, 127.5))}


def test_empty_input_range_raises():
    with pytest.raises(ValueError, match='max > min'):
        export.input_stats_from_range(1.0, 1.0)


# ------------------------------------------------------------- conversion


@pytest.mark.parametrize('dtype, np_dtype, in_zero', [
    (tf.uint8, np.uint8, 0), (tf.int8, np.int8, -128)])
def test_integer_model_follows_graph(dtype, np_dtype, in_zero):
    graph_def = frozen()
    model = export.convert_to_tflite(graph_def, INPUT, OUTPUT, dtype)
    assert export.find_float_ops(model) == []
    interpreter = export.tflite_interpreter(model)
    in_detail = interpreter.get_input_details()[0]
    assert in_detail['dtype'] == np_dtype
    assert in_detail['quantization'] == pytest.approx((1 / 255, in_zero))
    assert interpreter.get_output_details()[0]['dtype'] == np_dtype
    assert export.output_step(model) == pytest.approx(OUTPUT_STEP)
    report = export.compare_with_reference(model, graph_def, INPUT, OUTPUT,
                                           inputs())
    assert report.num_samples == 64
    assert report.argmax_agreement >= 0.95
    assert report.within_one_lsb >= 0.99
    assert report.max_diff_lsb <= 2.0


def test_input_range_for_unquantized_input():
    model = export.convert_to_tflite(frozen(input_quant=False), INPUT,
                                     OUTPUT, tf.uint8,
                                     input_ranges={INPUT: (0.0, 1.0)})
    assert export.find_float_ops(model) == []


def test_float_io_boundary_ops_are_allowed():
    graph_def = frozen()
    model = export.convert_to_tflite(graph_def, INPUT, OUTPUT, tf.uint8,
                                     float_io=True)
    ops = _op_names(model)
    assert (ops[0], ops[-1]) == ('QUANTIZE', 'DEQUANTIZE')
    assert export.find_float_ops(model) == []
    assert export.output_step(model) == pytest.approx(OUTPUT_STEP)
    report = export.compare_with_reference(model, graph_def, INPUT, OUTPUT,
                                           inputs(16))
    assert report.within_one_lsb >= 0.99


def test_unsupported_inference_type_raises():
    with pytest.raises(ValueError, match='uint8 or tf.int8'):
        export.convert_to_tflite(frozen(), INPUT, OUTPUT, tf.int16)


# -------------------------------------------------------------- float ops


def test_unquantized_layer_is_reported_by_name():
    with pytest.raises(export.FloatOpsError) as caught:
        export.convert_to_tflite(frozen(float_head=True), INPUT, OUTPUT,
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
    # A MatMul with no FakeQuant after it: the fix is named.
    assert caught.value.bare_layers == ['head/MatMul']
    assert 'head/MatMul' in message and 'quantize_bare_layers=True' in message
    assert 'experimental_create_eval_graph' in message


def test_float_op_that_is_no_layer_gets_no_bare_layer_hint():
    with pytest.raises(export.FloatOpsError) as caught:
        export.convert_to_tflite(frozen(float_add=True), INPUT, OUTPUT,
                                 tf.uint8)
    assert 'ADD' in {op.op_name for op in caught.value.float_ops}
    assert caught.value.bare_layers == []
    assert 'quantize_bare_layers' not in str(caught.value)


def test_allow_float_ops_warns(caplog):
    with caplog.at_level(logging.WARNING):
        model = export.convert_to_tflite(frozen(float_head=True), INPUT,
                                         OUTPUT, tf.uint8,
                                         allow_float_ops=True)
    assert any('FULLY_CONNECTED' in r.getMessage() for r in caplog.records)
    assert len(export.check_integer_only(model, allow_float_ops=True)) == 2


def test_int8_rejects_asymmetric_weights():
    with pytest.raises(export.AsymmetricWeightsError) as caught:
        export.convert_to_tflite(frozen(symmetric=False), INPUT, OUTPUT,
                                 tf.int8)
    message = str(caught.value)
    assert all(name in message for name in WEIGHT_QUANTS)
    assert 'symmetric=True' in message
    assert 'experimental_create_training_graph' in message


def test_uint8_accepts_asymmetric_weights():
    model = export.convert_to_tflite(frozen(symmetric=False), INPUT, OUTPUT,
                                     tf.uint8)
    assert export.find_float_ops(model) == []


# --------------------------------------------------------------- one call


def test_export_session_one_call(tmp_path):
    path = tmp_path / 'out' / 'model.tflite'
    with build_model() as session:
        model, report = export.export_session(
            session, INPUT + ':0', OUTPUT + ':0', tf.int8,
            parity_inputs=inputs(), output_path=str(path))
    assert report.inference_type == 'int8'
    assert report.size_bytes == len(model)
    assert report.path == os.path.realpath(path)
    assert report.float_ops == ()
    assert report.input_stats == {INPUT: (-128.0, 255.0)}
    assert report.parity.within_one_lsb >= 0.99
    assert path.read_bytes() == model


def test_export_session_per_layer_parity():
    with build_model() as session:
        _, report = export.export_session(
            session, INPUT, OUTPUT, tf.uint8, parity_inputs=inputs(16),
            per_layer=True)
    assert [layer.name for layer in report.parity.layers] == (
        ACTIVATION_QUANTS)
    assert all(layer.max_lsb <= 1.0 + 1e-3 for layer in report.parity.layers)


def test_export_session_checks_the_output_path_first(tmp_path, monkeypatch):
    def no_conversion(*args, **kwargs):
        raise AssertionError('converted before checking the output path')

    monkeypatch.setattr(export.convert, 'convert', no_conversion)
    with build_model() as session:
        with pytest.raises(OSError, match='too long'):
            export.export_session(session, INPUT, OUTPUT,
                                  output_path=str(tmp_path / ('m' * 300)))
        with pytest.raises(ValueError, match='overwrite input'):
            export.export_session(session, INPUT, OUTPUT,
                                  output_path=str(tmp_path / 'in.pb'),
                                  protected_paths=[str(tmp_path / 'in.pb')])


def _dangling_fake_quant_graph():
    """What the rewrite leaves when the logits are a graph output: a final
    FakeQuant that nothing reads."""
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [None, 4], name=INPUT)
        w = weight_quant(weights('fc/weights', [4, 3], 1), 'fc', True)
        logits = tf.matmul(x, w, name='fc/MatMul')
        fake_quant(logits, -4.0, 4.0, 'fc/act_quant/FakeQuant')
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


def test_resolve_output_name_follows_a_rerouted_output():
    """The rewrite rerouted the logits' readers (a softmax) to their
    FakeQuant: the logits feed only the FakeQuant, which is exported."""
    graph = _dangling_fake_quant_graph()
    with graph.as_default():
        quantized = graph.get_tensor_by_name('fc/act_quant/FakeQuant:0')
        tf.nn.softmax(quantized, name='predictions')
    assert (export.resolve_output_name(graph, 'fc/MatMul:0')
            == 'fc/act_quant/FakeQuant:0')


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
