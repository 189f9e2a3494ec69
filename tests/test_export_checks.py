"""Graphs the export refuses before any conversion work, with the fix, and
the bare final layer that stays float; through tf1_quantize's rewrite."""

import pytest
import tensorflow as tf

from export_models import INPUT, rewritten_model
from tf1_quantize import export

INPUT_RANGES = {INPUT: (0.0, 1.0)}


@pytest.fixture(name='no_conversion')
def _no_conversion(monkeypatch):
    """Fails the test if the export freezes or converts anything."""
    def fail(*args, **kwargs):
        raise AssertionError('conversion work started')

    monkeypatch.setattr(export.freeze, 'freeze_session', fail)
    monkeypatch.setattr(export.convert, 'convert', fail)


def test_training_graph_is_refused_first(no_conversion):
    session, output = rewritten_model(training=True)
    with session, pytest.raises(export.TrainingGraphError) as caught:
        export.export_session(session, INPUT, output, tf.int8,
                              input_ranges=INPUT_RANGES)
    message = str(caught.value)
    assert 'training rewrite' in message
    assert 'create_eval_graph' in message
    assert any(scope in message for scope in ('AssignMinEma', 'AssignMaxEma',
                                              'AssignMinLast',
                                              'AssignMaxLast'))


def test_eval_rewrite_with_a_delay_is_refused_first(no_conversion):
    session, output = rewritten_model(quant_delay=100)
    with session, pytest.raises(export.TrainingGraphError) as caught:
        export.export_session(session, INPUT, output, tf.int8,
                              input_ranges=INPUT_RANGES)
    message = str(caught.value)
    assert 'fake_quantization_step' in message
    assert 'without quant_delay' in message


def test_graph_never_rewritten_is_refused_first(no_conversion):
    session, output = rewritten_model(rewrite=False)
    with session, pytest.raises(export.UnquantizedGraphError) as caught:
        export.export_session(session, INPUT, output, tf.int8,
                              input_ranges=INPUT_RANGES)
    message = str(caught.value)
    assert 'never rewritten' in message and 'create_eval_graph' in message
    assert output.split(':')[0] in message


def test_check_eval_graph_accepts_an_eval_rewrite():
    session, output = rewritten_model()
    with session:
        export.check_eval_graph(session.graph.as_graph_def(), output)


def test_convert_checks_the_frozen_graph_too():
    session, output = rewritten_model(rewrite=False)
    with session:
        frozen = export.freeze_session(session, output)
    with pytest.raises(export.UnquantizedGraphError):
        export.convert_to_tflite(frozen, INPUT, output, tf.int8,
                                 input_ranges=INPUT_RANGES)


def test_bare_final_layer_error_names_it_and_the_option():
    session, output = rewritten_model(bias=False)
    with session, pytest.raises(export.FloatOpsError) as caught:
        export.export_session(session, INPUT, output, tf.int8,
                              input_ranges=INPUT_RANGES)
    assert caught.value.bare_layers == ['logits/MatMul']
    message = str(caught.value)
    for text in ('logits/MatMul', 'quantize_bare_layers=True',
                 'experimental_create_training_graph',
                 'experimental_create_eval_graph'):
        assert text in message


@pytest.mark.parametrize('head', ['dense', 'segmentation'])
def test_quantize_bare_layers_exports_integer_only(head):
    session, output = rewritten_model(bias=False, head=head,
                                      quantize_bare_layers=True)
    with session:
        _, report = export.export_session(session, INPUT, output, tf.int8,
                                          input_ranges=INPUT_RANGES)
    assert report.float_ops == ()


def test_eval_rewrite_with_bias_exports_integer_only():
    session, output = rewritten_model()
    with session:
        _, report = export.export_session(session, INPUT, output, tf.int8,
                                          input_ranges=INPUT_RANGES)
    assert report.float_ops == ()
