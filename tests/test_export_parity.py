"""Parity of TFLite against the fake-quant graph: per sample (fixed batch),
per position (argmax over the last axis), per layer; the interpreter."""

import sys
import types

import numpy as np
import pytest
import tensorflow as tf

from export_models import ACTIVATION_QUANTS, INPUT, OUTPUT
from export_models import build_model, fake_quant, frozen, frozen_pool_model
from export_models import inputs, weight_quant, weights
from tf1_quantize import export

v1 = tf.compat.v1


# ------------------------------------------------------- the summary alone


def test_parity_report_numbers():
    expected = np.array([[0.0, 1.0, 0.0], [2.0, 0.0, 0.0]])
    actual = expected + np.array([[0.0, 0.0, 2.0], [0.0, 0.0, -0.5]])
    report = export.parity_report(actual, expected, step=0.5)
    assert (report.num_samples, report.argmax_positions) == (2, 2)
    # Sample 0: argmax moves from 1 to 2, two steps below the top in the
    # reference; sample 1 keeps 0.
    assert report.argmax_agreement == 0.5
    assert report.exact_argmax_agreement == 0.5
    # Differences in steps: 0, 0, 4 and 0, 0, 1.
    assert report.max_diff_lsb == pytest.approx(4.0)
    assert report.mean_diff_lsb == pytest.approx(5 / 6)
    assert report.within_one_lsb == pytest.approx(5 / 6)
    assert report.max_abs_diff == pytest.approx(2.0)
    assert report.output_scale == 0.5


def test_argmax_is_per_position_over_the_last_axis():
    # Two samples of 2x2 positions, 3 classes each; every position keeps its
    # class, but the largest value of each whole sample moves to another
    # position (a flattened argmax would disagree everywhere).
    rng = np.random.RandomState(0)
    expected = rng.randint(0, 5, [2, 2, 2, 3]).astype(np.float64)
    expected[..., 1] = 9.0
    actual = expected.copy()
    actual[:, 0, 0, 1] = 8.0
    actual[:, 1, 1, 1] = 10.0
    assert np.all(np.argmax(actual.reshape(2, -1), -1) !=
                  np.argmax(expected.reshape(2, -1), -1))
    report = export.parity_report(actual, expected, step=1.0)
    assert report.argmax_positions == 8
    assert report.argmax_agreement == report.exact_argmax_agreement == 1.0
    assert '8 positions' in str(report)


@pytest.mark.parametrize('reference_top, agrees', [(3.0, True), (2.0, False)])
def test_argmax_tie_rule(reference_top, agrees):
    # TFLite ties classes 0 and 1 and picks 0; the reference has class 1 on
    # top, class 0 one step (agrees) or two steps (disagrees) below.
    actual = np.array([[4.0, 4.0, 0.0]])
    expected = np.array([[reference_top, 4.0, 0.0]])
    report = export.parity_report(actual, expected, step=1.0)
    assert report.exact_argmax_agreement == 0.0
    assert report.argmax_agreement == float(agrees)


def test_parity_report_without_step_has_no_lsb_figures():
    report = export.parity_report(np.eye(3), np.eye(3) * 0.9, step=None)
    assert report.argmax_agreement == 1.0
    assert report.max_abs_diff == pytest.approx(0.1)
    assert (report.max_diff_lsb, report.within_one_lsb,
            report.output_scale) == (None, None, None)
    assert 'float output' in str(report)


@pytest.mark.parametrize('actual, expected, step, message', [
    (np.zeros([2, 3]), np.zeros([2, 4]), 1.0, 'shapes differ'),
    (np.zeros([2, 3]), np.zeros([2, 3]), 0.0, 'positive'),
    (np.zeros([0, 3]), np.zeros([0, 3]), 1.0, 'one sample'),
], ids=['shape', 'step', 'empty'])
def test_parity_report_bad_arguments(actual, expected, step, message):
    with pytest.raises(ValueError, match=message):
        export.parity_report(actual, expected, step)


# ------------------------------------------------------------ both models


def test_parity_of_a_mixed_model_with_float_output():
    graph_def = frozen(float_head=True)
    model = export.convert_to_tflite(graph_def, INPUT, OUTPUT, tf.uint8,
                                     allow_float_ops=True)
    assert export.output_step(model) is None
    report = export.compare_with_reference(model, graph_def, INPUT, OUTPUT,
                                           inputs())
    assert report.output_scale is None
    assert report.argmax_agreement >= 0.9
    # The float head amplifies the quantized layer's 1-step differences
    # (8/255) by at most the sum of its absolute weights (about 2 to 5).
    assert 0.0 < report.max_abs_diff < 0.5


def test_parity_exact_model_and_known_shift():
    graph_def = frozen_pool_model()
    model = export.convert_to_tflite(graph_def, INPUT, OUTPUT, tf.uint8)
    assert export.output_step(model) == pytest.approx(1 / 255)
    exact = export.compare_with_reference(model, graph_def, INPUT, OUTPUT,
                                          inputs())
    assert (exact.argmax_agreement, exact.max_diff_lsb,
            exact.within_one_lsb) == (1.0, 0.0, 1.0)
    # A reference shifted by two output steps is two LSB away everywhere.
    shifted = frozen_pool_model(output_shift=2 / 255)
    report = export.compare_with_reference(model, shifted, INPUT, OUTPUT,
                                           inputs())
    assert report.argmax_agreement == 1.0
    assert report.max_diff_lsb == pytest.approx(2.0, abs=1e-3)
    assert report.mean_diff_lsb == pytest.approx(2.0, abs=1e-3)
    assert report.within_one_lsb == 0.0


def test_parity_session_reference_equals_graph_def_reference():
    graph_def = frozen()
    model = export.convert_to_tflite(graph_def, INPUT, OUTPUT, tf.uint8)
    with build_model() as session:
        from_session = export.compare_with_reference(
            model, session, INPUT, OUTPUT, inputs())
    from_graph = export.compare_with_reference(model, graph_def, INPUT,
                                               OUTPUT, inputs())
    assert from_session == from_graph


def test_reference_runs_once_for_output_and_layers(monkeypatch):
    graph_def = frozen()
    model = export.convert_to_tflite(graph_def, INPUT, OUTPUT, tf.uint8)
    runs = []
    real_run = v1.Session.run

    def counting_run(session, fetches, *args, **kwargs):
        runs.append(fetches)
        return real_run(session, fetches, *args, **kwargs)

    monkeypatch.setattr(v1.Session, 'run', counting_run)
    report = export.compare_with_reference(model, graph_def, INPUT, OUTPUT,
                                           inputs(16), per_layer=True)
    assert len(runs) == 1 and len(runs[0]) == 1 + len(report.layers)


# ------------------------------------------------------------- fixed batch


@pytest.mark.parametrize('num_samples', [1, 5])
def test_fixed_batch_runs_sample_by_sample(num_samples):
    graph_def = frozen_pool_model(batch=1)
    model = export.convert_to_tflite(graph_def, INPUT, OUTPUT, tf.uint8)
    x = inputs(num_samples)
    report = export.compare_with_reference(model, graph_def, INPUT, OUTPUT,
                                           x, per_layer=True)
    assert report.num_samples == num_samples
    assert (report.max_diff_lsb, report.argmax_agreement) == (0.0, 1.0)
    assert len(report.layers) == 2
    expected = export.run_reference(graph_def, INPUT, OUTPUT, x)
    np.testing.assert_allclose(export.run_tflite(model, x), expected,
                               atol=1e-6)


def test_fixed_batch_that_does_not_divide_the_inputs_is_named():
    graph_def = frozen_pool_model(batch=2)
    model = export.convert_to_tflite(graph_def, INPUT, OUTPUT, tf.uint8)
    with pytest.raises(ValueError, match='fixed batch size of 2'):
        export.compare_with_reference(model, graph_def, INPUT, OUTPUT,
                                      inputs(5))


# ----------------------------------------------------------- dense output


def _frozen_segmentation_model(labels=False):
    """FakeQuant input -> 1x1 conv to 3 classes -> FakeQuant: per-pixel
    logits [N, 6, 6, 3], or with `labels` their ArgMax [N, 6, 6]."""
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [None, 6, 6, 1], name=INPUT)
        x = fake_quant(x, 0.0, 1.0, 'input_quant/FakeQuant')
        w = weight_quant(weights('seg/weights', [1, 1, 1, 3], 4), 'seg',
                         True)
        y = tf.nn.conv2d(x, w, 1, 'SAME', name='seg/Conv2D')
        y = fake_quant(y, -3.0, 3.0, 'seg/act_quant/FakeQuant')
        if labels:
            tf.argmax(y, -1, name=OUTPUT)
        else:
            tf.identity(y, name=OUTPUT)
        with v1.Session(graph=graph) as session:
            session.run(v1.global_variables_initializer())
            return export.freeze_session(session, OUTPUT)


def test_segmentation_output_is_compared_per_pixel():
    graph_def = _frozen_segmentation_model()
    model = export.convert_to_tflite(graph_def, INPUT, OUTPUT, tf.int8)
    report = export.compare_with_reference(model, graph_def, INPUT, OUTPUT,
                                           inputs(4))
    assert report.argmax_positions == 4 * 6 * 6
    assert report.argmax_agreement >= 0.99
    assert report.within_one_lsb >= 0.99


def test_label_output_is_compared_label_by_label():
    graph_def = _frozen_segmentation_model(labels=True)
    model = export.convert_to_tflite(graph_def, INPUT, OUTPUT, tf.int8)
    assert export.output_step(model) is None
    report = export.compare_with_reference(model, graph_def, INPUT, OUTPUT,
                                           inputs(4))
    assert report.labels and report.output_scale is None
    assert report.argmax_positions == 4 * 6 * 6
    assert report.argmax_agreement >= 0.99
    assert '(labels)' in str(report)


def test_parity_report_of_labels():
    report = export.parity_report(np.array([[0, 1], [2, 2]]),
                                  np.array([[0, 1], [2, 1]]), None,
                                  labels=True)
    assert (report.argmax_positions, report.argmax_agreement) == (4, 0.75)
    assert report.max_abs_diff == 1.0
    with pytest.raises(ValueError, match='no quantization step'):
        export.parity_report(np.zeros([1, 2]), np.zeros([1, 2]), 1.0,
                             labels=True)


# -------------------------------------------------------------- per layer


def test_per_layer_in_graph_order_and_within_one_lsb():
    graph_def = frozen()
    model = export.convert_to_tflite(graph_def, INPUT, OUTPUT, tf.int8)
    report = export.compare_with_reference(model, graph_def, INPUT, OUTPUT,
                                           inputs(), per_layer=True)
    assert [layer.name for layer in report.layers] == ACTIVATION_QUANTS
    by_name = {layer.name: layer for layer in report.layers}
    # The input round trip is exact; the last layer is the output.
    assert by_name['input_quant/FakeQuant'].max_lsb == 0.0
    assert (by_name['fc/act_quant/FakeQuant'].max_lsb ==
            pytest.approx(report.max_diff_lsb))
    for layer in report.layers:
        assert layer.max_lsb <= 1.0 + 1e-3 and layer.within_one_lsb == 1.0
    # Without the option, no layers.
    assert export.compare_with_reference(model, graph_def, INPUT, OUTPUT,
                                         inputs()).layers == ()


def test_per_layer_finds_the_layer_that_departs():
    model = export.convert_to_tflite(frozen_pool_model(), INPUT, OUTPUT,
                                     tf.uint8)
    # The reference adds two steps before the pool's FakeQuant.
    shifted = frozen_pool_model(inner_shift=2 / 255)
    report = export.compare_with_reference(model, shifted, INPUT, OUTPUT,
                                           inputs(), per_layer=True)
    by_name = {layer.name: layer for layer in report.layers}
    assert by_name['input_quant/FakeQuant'].max_lsb == 0.0
    pool = by_name['pool/act_quant/FakeQuant']
    assert pool.tflite_name == 'pool'
    assert pool.max_lsb == pytest.approx(2.0, abs=1e-3)
    assert pool.within_one_lsb < 0.5


def test_per_layer_leaves_out_tensors_reused_in_place(monkeypatch, caplog):
    # TF 2.15's ADD writes its output over its input even when all tensors
    # are to be preserved; such tensors are recognised by shared memory.
    model = export.convert_to_tflite(frozen(), INPUT, OUTPUT, tf.uint8)
    runner = export.interpreter.TfliteRunner(model)
    runner.allocate(1)
    # Without preserving, the arena reuses memory.
    assert runner.shared_tensors()
    runner = export.interpreter.TfliteRunner(model, preserve_all_tensors=True)
    runner.allocate(1)
    assert runner.shared_tensors() == set()
    pool = [d['index'] for d in runner.interpreter.get_tensor_details()
            if d['name'] == 'pool']
    monkeypatch.setattr(export.interpreter.TfliteRunner, 'shared_tensors',
                        lambda self: set(pool))
    report = export.compare_with_reference(model, frozen(), INPUT, OUTPUT,
                                           inputs(8), per_layer=True)
    assert [layer.name for layer in report.layers] == [
        name for name in ACTIVATION_QUANTS if not name.startswith('pool/')]
    assert 'pool/act_quant/FakeQuant' in caplog.text


def test_format_layers_table():
    layers = (export.LayerParity('a/act_quant', 'a/Relu', 0.0, 1.0),
              export.LayerParity('b/act_quant', 'b/Relu', 3.0, 0.875))
    lines = export.format_layers(layers).splitlines()
    assert lines[0].split() == ['depth', 'layer', 'max', 'LSB', '<=1', 'LSB']
    assert lines[1].split() == ['0', 'a/act_quant', '0.00', '100.00%']
    assert lines[2].split() == ['1', 'b/act_quant', '3.00', '87.50%']


def test_plot_without_matplotlib_says_so(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, 'matplotlib', None)
    with pytest.raises(ImportError, match='pip install matplotlib'):
        export.plot_layers(
            [export.LayerParity('a', 'a', 1.0, 1.0)], str(tmp_path / 'p.png'))
    assert not list(tmp_path.iterdir())


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip('matplotlib', reason='matplotlib is optional')
    path = tmp_path / 'layers.png'
    export.plot_layers([export.LayerParity('a', 'a', 1.0, 1.0),
                        export.LayerParity('b', 'b', 2.0, 0.5)], str(path))
    assert path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


# ------------------------------------------------------------- interpreter


def test_litert_interpreter_is_preferred_where_installed(monkeypatch):
    created = []

    class Interpreter(tf.lite.Interpreter):
        def __init__(self, **kwargs):
            created.append(kwargs)
            super().__init__(**kwargs)

    litert = types.ModuleType('ai_edge_litert.interpreter')
    litert.Interpreter = Interpreter
    litert.OpResolverType = tf.lite.experimental.OpResolverType
    package = types.ModuleType('ai_edge_litert')
    package.interpreter = litert
    monkeypatch.setitem(sys.modules, 'ai_edge_litert', package)
    monkeypatch.setitem(sys.modules, 'ai_edge_litert.interpreter', litert)
    model = export.convert_to_tflite(frozen_pool_model(), INPUT, OUTPUT,
                                     tf.uint8)
    interpreter = export.tflite_interpreter(model, preserve_all_tensors=True)
    assert isinstance(interpreter, Interpreter)
    assert created[-1]['experimental_preserve_all_tensors'] is True
    assert created[-1]['experimental_op_resolver_type'] == (
        tf.lite.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
