"""`tf1_quantize.compare` and `python -m tf1_quantize compare`: an old
TFLite model against a new one.

The models are small fake-quant graphs (a 1x1 convolution with a dense
output and a pooled "logits" output) converted with the TF1 converter:
uint8 with a fixed batch of 1 (as old exports were), int8 with any batch,
float, and variants with other weights or the outputs in another order.
"""

import numpy as np
import pytest
import tensorflow as tf

from tf1_quantize import cli
from tf1_quantize import compare

v1 = tf.compat.v1

DENSE_SHAPE = (4, 4, 3)
SAMPLES = 12


def _convert(inference_type=None, batch=None, weight_sign=1.0,
             logits_first=False, input_max=1.0):
    """A TFLite model of the test graph; float if `inference_type` is None.
    Its float input range is [0, input_max]."""
    graph = tf.Graph()
    fake_quant = tf.quantization.fake_quant_with_min_max_args
    with graph.as_default():
        x = v1.placeholder(tf.float32, [batch, 4, 4, 2], name='images')
        weights = np.random.RandomState(0).uniform(-1, 1, [1, 1, 2, 3])
        weights = fake_quant(tf.constant(weights * weight_sign, tf.float32),
                             -1.0, 1.0, narrow_range=True)
        conv = tf.nn.conv2d(fake_quant(x, 0.0, input_max), weights,
                            [1, 1, 1, 1], 'SAME')
        dense = fake_quant(conv, -2.0, 2.0, name='dense')
        logits = fake_quant(tf.reduce_mean(dense, [1, 2]), -2.0, 2.0,
                            name='logits')
        outputs = [logits, dense] if logits_first else [dense, logits]
        with v1.Session() as sess:
            converter = v1.lite.TFLiteConverter.from_session(sess, [x],
                                                             outputs)
            if inference_type is not None:
                converter.inference_type = inference_type
                mean = 0.0 if inference_type == tf.uint8 else -128.0
                converter.quantized_input_stats = {
                    'images': (mean, 255.0 / input_max)}
            return converter.convert()


@pytest.fixture(scope='module')
def models():
    return {
        'old': _convert(tf.uint8, batch=1),
        'int8': _convert(tf.int8),
        'pairs': _convert(tf.uint8, batch=2),
        'float': _convert(),
        'negated': _convert(tf.int8, weight_sign=-1.0, logits_first=True),
        'coarse_input': _convert(tf.int8, input_max=2.0),
    }


@pytest.fixture(scope='module')
def images():
    return np.random.RandomState(1).uniform(
        0, 1, [SAMPLES, 4, 4, 2]).astype(np.float32)


def test_the_same_model_is_identical(models, images):
    result = compare.compare_models(models['old'], models['old'], images)
    assert result.num_samples == SAMPLES
    assert [o.shape for o in result.outputs] == [DENSE_SHAPE, (3,)]
    for output in result.outputs:
        assert output.argmax_agreement == 1.0
        assert output.max_diff_lsb == output.mean_diff_lsb == 0.0
        assert output.within_one_lsb == 1.0
        assert output.step == pytest.approx(4.0 / 255)
    # Argmax per position of the dense output, per sample of the logits.
    assert [o.positions for o in result.outputs] == [SAMPLES * 16, SAMPLES]
    assert '1 sample(s) at a time' in result.old


def test_each_model_gets_its_own_input_quantization(models, images):
    # uint8 (zero point 0), fixed batch 1 against int8 (zero point -128),
    # any batch: the same grid, so the same numbers.
    result = compare.compare_models(models['old'], models['int8'], images)
    assert result.max_diff_lsb == 0.0
    assert 'whole batch at once' in result.new
    assert 'int8 images (scale 0.00392157, zero point -128)' in result.new
    # Integer inputs of the model's own dtype are fed as they are.
    quantized = np.round(images * 255).astype(np.uint8)
    same = compare.compare_models(models['old'], models['old'], quantized)
    assert same.max_diff_lsb == 0.0
    with pytest.raises(ValueError, match='hold uint8 values, the new model '
                       'takes int8: give float values'):
        compare.compare_models(models['old'], models['int8'], quantized)


def test_same_dtype_other_input_scale(models, images):
    # Both int8; the new model's input step is twice the old one's. Fed the
    # old model's int8 values, it would see every input doubled; quantized
    # with its own scale, it sees them on a coarser grid: a little apart.
    result = compare.compare_models(models['int8'], models['coarse_input'],
                                    images)
    assert 0.0 < result.outputs[0].mean_diff_lsb < 0.5
    assert result.max_diff_lsb <= 2.0


def test_a_float_model_is_fed_floats(models, images):
    result = compare.compare_models(models['old'], models['float'], images)
    for output in result.outputs:
        # The old model's LSB; the float model rounds only at its FakeQuants.
        assert output.step == pytest.approx(4.0 / 255)
        assert output.max_diff_lsb <= 1.0 + 1e-3
        assert output.argmax_agreement >= 0.9
    both_float = compare.compare_models(models['float'], models['float'],
                                        images)
    assert both_float.max_diff_lsb is None
    assert 'float outputs' in str(both_float.outputs[0])
    with pytest.raises(ValueError, match='both models have float outputs'):
        both_float.within(1)


def test_a_fixed_batch_runs_in_steps_of_its_size(models, images):
    result = compare.compare_models(models['old'], models['pairs'], images)
    assert '2 sample(s) at a time' in result.new
    assert result.max_diff_lsb == 0.0 and result.within(0)
    with pytest.raises(ValueError, match='The new model takes batches of 2; '
                       '5 samples do not divide into them'):
        compare.compare_models(models['old'], models['pairs'], images[:5])


def test_outputs_are_matched_by_shape_and_differences_found(models,
                                                            images):
    result = compare.compare_models(models['old'], models['negated'], images)
    dense, logits = result.outputs
    assert (dense.old_name, dense.new_name) == ('dense', 'dense')
    assert (logits.old_name, logits.new_name) == ('logits', 'logits')
    # Negated weights: the argmax of a sum of 3 channels cannot agree
    # unless it sits at a tie (the output is clamped to [-2, 2]).
    assert logits.argmax_agreement < 0.5
    assert logits.mean_diff_lsb > 1.0 and logits.within_one_lsb < 0.5
    assert dense.max_diff_lsb > 1.0


@pytest.mark.parametrize('inputs,error', [
    (np.zeros([2, 4, 4, 3], np.float32), r'per-sample shapes \[\[4, 4, 3\]\]'),
    ([], 'one non-empty batch per model input'),
    (np.zeros([0, 4, 4, 2], np.float32), 'one non-empty batch'),
])
def test_bad_inputs_are_refused(models, inputs, error):
    with pytest.raises(ValueError, match=error):
        compare.compare_models(models['old'], models['int8'], inputs)


# ------------------------------------------------------------------- CLI


def _files(tmp_path, models, images, *names):
    paths = []
    for name in names:
        path = tmp_path / (name + '.tflite')
        path.write_bytes(models[name])
        paths.append(str(path))
    inputs = tmp_path / 'images.npy'
    np.save(inputs, images)
    return paths + ['--inputs', str(inputs)]


def test_cli_prints_the_comparison_and_checks_the_bound(tmp_path, models,
                                                        images, capsys):
    args = ['compare'] + _files(tmp_path, models, images, 'old', 'float')
    assert cli.main(args + ['--max_lsb', '1']) == 0
    out = capsys.readouterr().out
    assert '%d samples' % SAMPLES in out
    assert 'output 1: logits [3]: argmax agreement' in out
    assert 'within --max_lsb 1' in out
    args = ['compare'] + _files(tmp_path, models, images, 'old', 'negated')
    assert cli.main(args) == 0
    assert cli.main(args + ['--max_lsb', '1']) == 2
    captured = capsys.readouterr()
    assert 'output 0: dense [4, 4, 3]: argmax agreement' in captured.out
    assert captured.err.startswith('tf1_quantize compare: error: outputs '
                                   'differ by up to')
    assert '--max_lsb 1' in captured.err


def test_cli_refuses_bad_files_in_one_line(tmp_path, models, images,
                                           capsys):
    args = _files(tmp_path, models, images, 'old', 'int8')
    not_a_model = tmp_path / 'junk.tflite'
    not_a_model.write_bytes(b'not a flatbuffer')
    for bad in ([args[0], str(tmp_path / 'missing.tflite')] + args[2:],
                [args[0], str(not_a_model)] + args[2:],
                args[:3] + [str(tmp_path / 'missing.npy')]):
        assert cli.main(['compare'] + bad) == 2
        err = capsys.readouterr().err
        assert err.startswith('tf1_quantize compare: error: ')
        assert err.count('\n') == 1
