"""Runs the demo (tools/demo.py) in its --small mode and checks its outputs."""

import contextlib
import io
import os
import re

import numpy as np
import pytest

from tf1_quantize import export
from tools import demo

MODEL_A_FILES = ('model_a_asymmetric_uint8.tflite',
                 'model_a_symmetric_int8.tflite',
                 'model_a_symmetric_uint8.tflite',
                 'model_a_per-channel_int8.tflite',
                 'model_a_one-conv_int8.tflite')
MODEL_B_FILES = ('model_b_asymmetric_uint8.tflite',
                 'model_b_symmetric_int8.tflite',
                 'model_b_symmetric_uint8.tflite',
                 'model_b_per-channel_int8.tflite',
                 'model_b_one-conv_int8.tflite')


@pytest.fixture(scope='module')
def demo_run(tmp_path_factory):
    """Runs `demo.py --small` once; returns (stdout, output directory)."""
    out_dir = tmp_path_factory.mktemp('demo_out')
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert demo.main(['--small', '--out', str(out_dir)]) == 0
    return stdout.getvalue(), out_dir


def test_prints_progress_and_table(demo_run):
    stdout, _ = demo_run
    assert '[A float] epoch 1/' in stdout
    assert '[A QAT symmetric] epoch 1/' in stdout
    table = stdout[stdout.index('== Results'):]
    # Columns are separated by at least two spaces.
    lines = [re.split(r'\s{2,}', line.strip())
             for line in table.splitlines()[1:14]]
    header, rows = lines[0], lines[1:]
    assert header[:5] == ['model', 'variant', 'float%', 'fakeq%', 'tflite%']
    assert [tuple(r[:2]) for r in rows] == [
        ('A', 'uint8 (asymmetric QAT)'), ('A', 'int8 (asymmetric QAT)'),
        ('A', 'int8 (symmetric QAT)'), ('A', 'uint8 (symmetric QAT)'),
        ('A', 'int8 (per-channel QAT)'), ('A', 'int8 (one-conv QAT)'),
        ('B', 'uint8 (asymmetric QAT)'), ('B', 'int8 (asymmetric QAT)'),
        ('B', 'int8 (symmetric QAT)'), ('B', 'uint8 (symmetric QAT)'),
        ('B', 'int8 (per-channel QAT)'), ('B', 'int8 (one-conv QAT)')]
    for row in rows:
        assert 0.0 <= float(row[2]) <= 100.0  # float accuracy
        assert 0.0 <= float(row[3]) <= 100.0  # fake-quant accuracy
    # int8 from the asymmetric checkpoint is refused, with the reason.
    assert rows[1][4] == '-'
    assert 'AsymmetricWeightsError' in rows[1][-1]
    # Model A converts to integer-only models: no float ops.
    assert [rows[i][9] for i in (0, 2, 3, 4, 5)] == ['0'] * 5
    assert 'time per phase' in table


def test_writes_tflite_files_atomically(demo_run):
    _, out_dir = demo_run
    names = set(os.listdir(out_dir))
    assert set(MODEL_A_FILES) <= names
    assert not [n for n in names if n.endswith('.tmp')]
    assert 'model_a_asymmetric_int8.tflite' not in names
    for name in MODEL_B_FILES:
        # Model B is exported, integer-only or as a mixed model.
        assert (name in names or
                name.replace('.tflite', '_mixed.tflite') in names)


@pytest.mark.parametrize('name', MODEL_A_FILES)
def test_model_a_is_integer_only(demo_run, name):
    _, out_dir = demo_run
    model = (out_dir / name).read_bytes()
    assert export.find_float_ops(model) == []
    interpreter = export.tflite_interpreter(model)
    ops = {op['op_name'] for op in interpreter._get_ops_details()}
    assert {'CONV_2D', 'DEPTHWISE_CONV_2D', 'FULLY_CONNECTED'} <= ops
    dtype = np.int8 if '_int8' in name else np.uint8
    assert interpreter.get_input_details()[0]['dtype'] == dtype
    assert interpreter.get_output_details()[0]['dtype'] == dtype
    outputs = export.run_tflite(model, np.zeros([2, 8, 8, 1], np.float32))
    assert outputs.shape == (2, 10)


def _parity(agreement):
    return export.ParityReport(
        num_samples=360, argmax_agreement=agreement, max_abs_diff=0.1,
        max_diff_lsb=1.0, mean_diff_lsb=0.1, within_one_lsb=1.0,
        output_scale=0.1, argmax_positions=360,
        exact_argmax_agreement=agreement)


@pytest.mark.parametrize('agreement, small, status', [
    (1.0, False, 0), (359 / 360, False, 1), (359 / 360, True, 0)],
    ids=['met', 'missed', 'missed_small'])
def test_exit_status_follows_the_targets(tmp_path, monkeypatch, capsys,
                                         agreement, small, status):
    row = demo.Row('A', 'int8 (symmetric QAT)', 0.98, 0.98, 0.98,
                   _parity(agreement), 5000, 0)
    monkeypatch.setattr(demo, 'run_model', lambda *args: [row])
    argv = ['--out', str(tmp_path), '--models', 'A']
    assert demo.main(argv + (['--small'] if small else [])) == status
    stdout = capsys.readouterr().out
    verdict = 'PASS' if agreement == 1.0 else 'FAIL'
    assert f'{verdict}  A int8 (symmetric QAT): argmax agreement' in stdout
