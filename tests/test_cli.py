"""The command line: rewrite, report, export; bad files exit 2 cleanly."""

import os
import sys

import numpy as np
import pytest
import tensorflow as tf

import builders
from tf1_quantize import cli

v1 = tf.compat.v1


def _write_meta(path, training):
    spec = builders.LayerSpec(bn_training=training, activation='relu6')
    built = builders.build_contrib_layer(spec)
    with built.graph.as_default():
        v1.train.export_meta_graph(str(path))
    return str(path)


@pytest.fixture(name='files')
def _files(tmp_path):
    return {'train': _write_meta(tmp_path / 'train.meta', True),
            'eval': _write_meta(tmp_path / 'eval.meta', False),
            'dir': tmp_path}


def _run(capsys, *argv):
    status = cli.main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_report_prints_what_would_be_done(files, capsys):
    status, out, _ = _run(capsys, 'report', '--meta', files['train'],
                          '--training')
    assert status == 0
    assert 'folded: test/Conv2D' in out
    assert 'test/weights_quant/FakeQuantWithMinMaxVars' in out


def test_train_then_eval_then_export_to_integer_tflite(files, capsys):
    out_dir = files['dir']
    status, _, _ = _run(capsys, 'train', '--meta', files['train'], '--out',
                        str(out_dir / 'qat.meta'), '--quant_delay', '10',
                        '--symmetric')
    assert status == 0
    graph = tf.Graph()
    with graph.as_default():
        v1.train.import_meta_graph(str(out_dir / 'qat.meta'))
        names = {op.name for op in graph.get_operations()}
        assert 'test/weights_quant/delayed_quant' in names
    status, _, _ = _run(capsys, 'eval', '--meta', files['eval'], '--out',
                        str(out_dir / 'eval_q.meta'), '--symmetric')
    assert status == 0
    checkpoint = _save_initialized(str(out_dir / 'eval_q.meta'),
                                   str(out_dir / 'ckpt' / 'model'))
    status, out, err = _run(
        capsys, 'export', '--meta', str(out_dir / 'eval_q.meta'),
        '--checkpoint', checkpoint, '--input', 'input', '--output',
        'test/Relu6', '--input_range=-3,3', '--out',
        str(out_dir / 'model.tflite'))
    assert status == 0, err
    with open(out_dir / 'model.tflite', 'rb') as f:
        assert f.read(8)[4:8] == b'TFL3'


def _save_initialized(meta, prefix):
    graph = tf.Graph()
    with graph.as_default():
        saver = v1.train.import_meta_graph(meta)
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            return saver.save(sess, prefix)


@pytest.mark.parametrize('content', [None, b'\x08\x96\x01garbage', b''])
def test_bad_input_files_exit_2_with_one_line(files, capsys, content):
    path = files['dir'] / 'bad.meta'
    if content is not None:
        path.write_bytes(content)
    out = files['dir'] / 'out.meta'
    status, _, err = _run(capsys, 'train', '--meta', str(path), '--out',
                          str(out))
    assert status == 2
    assert len(err.strip().splitlines()) == 1 and 'bad.meta' in err
    assert not out.exists()


def test_truncated_meta_graph_is_rejected_and_left_alone(files, capsys):
    with open(files['train'], 'rb') as f:
        data = f.read()
    path = files['dir'] / 'truncated.meta'
    path.write_bytes(data[:len(data) // 2])
    status, _, err = _run(capsys, 'train', '--meta', str(path), '--out',
                          str(files['dir'] / 'out.meta'))
    assert status == 2 and 'truncated.meta' in err
    assert path.read_bytes() == data[:len(data) // 2]


def test_output_never_overwrites_the_input(files, capsys):
    with open(files['train'], 'rb') as f:
        before = f.read()
    status, _, err = _run(capsys, 'train', '--meta', files['train'], '--out',
                          files['train'])
    assert status == 2 and 'overwrite' in err
    with open(files['train'], 'rb') as f:
        assert f.read() == before


def test_wrong_tensor_name_exits_2(files, capsys):
    status, _, _ = _run(capsys, 'eval', '--meta', files['eval'], '--out',
                        str(files['dir'] / 'eval_q.meta'))
    assert status == 0
    checkpoint = _save_initialized(str(files['dir'] / 'eval_q.meta'),
                                   str(files['dir'] / 'ckpt' / 'model'))
    status, _, err = _run(
        capsys, 'export', '--meta', str(files['dir'] / 'eval_q.meta'),
        '--checkpoint', checkpoint, '--input', 'input', '--output',
        'no_such_op', '--out', str(files['dir'] / 'm.tflite'))
    assert status == 2 and "no op named 'no_such_op'" in err
    assert not (files['dir'] / 'm.tflite').exists()


def test_unwritable_output_location_exits_2(files, capsys):
    # Root ignores directory permissions, so an output path below a regular
    # file stands for a location that cannot be written.
    blocker = files['dir'] / 'not_a_directory'
    blocker.write_bytes(b'')
    status, _, err = _run(capsys, 'train', '--meta', files['train'], '--out',
                          str(blocker / 'out.meta'))
    assert status == 2 and 'not_a_directory' in err
    assert blocker.read_bytes() == b''
    assert [p.name for p in files['dir'].iterdir()
            if p.name.startswith('.')] == []


@pytest.mark.parametrize('bazel_dir, caller_dir, expected', [
    ('bazel', None, 'bazel'),  # plain `bazel run`
    ('bazel', 'caller', 'caller'),  # tools/bazel run from outside
    (None, 'caller', 'start'),  # not under `bazel run`: nothing changes
])
def test_enter_caller_directory(tmp_path, monkeypatch, bazel_dir, caller_dir,
                                expected):
    for name in ('start', 'bazel', 'caller'):
        (tmp_path / name).mkdir()
    monkeypatch.chdir(tmp_path / 'start')
    for variable, value in (('BUILD_WORKING_DIRECTORY', bazel_dir),
                            ('TF1Q_CALLER_DIRECTORY', caller_dir)):
        if value is None:
            monkeypatch.delenv(variable, raising=False)
        else:
            monkeypatch.setenv(variable, str(tmp_path / value))
    cli.enter_caller_directory()
    assert os.getcwd() == os.path.realpath(tmp_path / expected)


# ------------------------------------------------------------------ export


@pytest.fixture(name='quantized')
def _quantized(files, capsys):
    """An eval rewrite on disk, its checkpoint directory and parity inputs."""
    out_dir = files['dir']
    status, _, _ = _run(capsys, 'eval', '--meta', files['eval'], '--out',
                        str(out_dir / 'eval_q.meta'), '--symmetric')
    assert status == 0
    _save_initialized(str(out_dir / 'eval_q.meta'),
                      str(out_dir / 'ckpt' / 'model'))
    inputs = out_dir / 'inputs.npy'
    np.save(inputs, np.random.RandomState(0).uniform(
        -3, 3, [4, 5, 5, 3]).astype(np.float32))  # the input's batch is 2
    return {'dir': out_dir, 'inputs': str(inputs),
            'args': ['export', '--meta', str(out_dir / 'eval_q.meta'),
                     '--input', 'input', '--output', 'test/Relu6',
                     '--input_range=-3,3']}


def test_export_from_a_checkpoint_directory_with_per_layer_parity(
        quantized, capsys):
    out = quantized['dir'] / 'model.tflite'
    stale = quantized['dir'] / '.model.tflite.999999999.abc.tmp'
    stale.write_bytes(b'left by a killed export')
    status, stdout, err = _run(
        capsys, *quantized['args'], '--checkpoint',
        str(quantized['dir'] / 'ckpt'), '--out', str(out),
        '--parity_inputs', quantized['inputs'], '--per_layer')
    assert status == 0, err
    assert out.read_bytes()[4:8] == b'TFL3'
    assert not stale.exists()
    lines = stdout.splitlines()
    assert lines[1].startswith('parity: argmax agreement ')
    assert '(4 samples)' in lines[1]
    assert lines[2].split()[:2] == ['depth', 'layer']
    assert 'test/act_quant/FakeQuantWithMinMaxVars' in lines[3]


def test_export_plot_without_matplotlib_is_a_note(quantized, capsys,
                                                   monkeypatch):
    monkeypatch.setitem(sys.modules, 'matplotlib', None)
    plot = quantized['dir'] / 'layers.png'
    status, _, err = _run(
        capsys, *quantized['args'], '--checkpoint',
        str(quantized['dir'] / 'ckpt'), '--out',
        str(quantized['dir'] / 'm.tflite'), '--parity_inputs',
        quantized['inputs'], '--per_layer', '--per_layer_plot', str(plot))
    assert status == 0
    assert len(err.strip().splitlines()) == 1 and 'matplotlib' in err
    assert not plot.exists()


@pytest.mark.parametrize('case, message', [
    ('per_layer', '--per_layer needs --parity_inputs'),
    ('empty_dir', 'no checkpoint in directory'),
    ('long_path', 'too long'),
    ('directory', 'is a directory'),
])
def test_export_problems_exit_2_with_one_line(quantized, capsys, case,
                                              message):
    directory = quantized['dir']
    empty = directory / 'empty'
    empty.mkdir()
    checkpoint = empty if case == 'empty_dir' else directory / 'ckpt'
    out = {'long_path': directory / ('m' * 300),
           'directory': empty}.get(case, directory / 'm.tflite')
    extra = ['--per_layer'] if case == 'per_layer' else []
    status, _, err = _run(capsys, *quantized['args'], '--checkpoint',
                          str(checkpoint), '--out', str(out), *extra)
    assert status == 2
    assert len(err.strip().splitlines()) == 1 and message in err
    assert not (directory / 'm.tflite').exists()
    assert not [p for p in directory.iterdir() if p.suffix == '.tmp']


def test_export_of_a_training_rewrite_says_so(files, capsys):
    out_dir = files['dir']
    status, _, _ = _run(capsys, 'train', '--meta', files['train'], '--out',
                        str(out_dir / 'qat.meta'), '--symmetric')
    assert status == 0
    checkpoint = _save_initialized(str(out_dir / 'qat.meta'),
                                   str(out_dir / 'qat_ckpt' / 'model'))
    status, _, err = _run(
        capsys, 'export', '--meta', str(out_dir / 'qat.meta'),
        '--checkpoint', checkpoint, '--input', 'input', '--output',
        'test/Relu6', '--input_range=-3,3', '--out',
        str(out_dir / 'm.tflite'))
    assert status == 2
    assert 'training rewrite' in err and 'create_eval_graph' in err
    assert not (out_dir / 'm.tflite').exists()
