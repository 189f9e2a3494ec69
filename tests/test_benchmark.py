"""Smoke test of the benchmark (tools/benchmark/): its --quick mode, run
in-process.

Checks that the JSON document has every expected key with sane values (the
rewrites added ops and FakeQuants, times and ratios are positive, the step
medians exist). No timing is asserted: the numbers of a quick run on a
shared machine mean nothing.
"""

import json
import math

import pytest

from tools.benchmark import reports, runner


@pytest.fixture(scope='module')
def quick_results(tmp_path_factory):
    """`main(['--quick', '--json', PATH])`, and the JSON it wrote."""
    path = tmp_path_factory.mktemp('benchmark') / 'quick.json'
    returned = runner.main(['--quick', '--json', str(path)])
    with open(path) as f:
        written = json.load(f)
    return returned, written


def _positive(value):
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and value > 0)


REWRITE_KEYS = ('layers', 'float_ops', 'ops_added', 'ops_added_per_layer',
                'fake_quant_ops', 'build_s', 'build_cpu_s', 'rewrite_s',
                'rewrite_cpu_s', 'build_us_per_op', 'rewrite_us_per_op',
                'per_op_cost_ratio', 'per_op_cost_ratio_cpu',
                'tracemalloc_peak_mib')
STEP_KEYS = ('float_step_ms', 'qat_step_ms', 'qat_step_ratio',
             'qat_one_conv_step_ms', 'qat_one_conv_step_ratio',
             'float_inference_ms', 'eval_inference_ms',
             'eval_inference_ratio', 'layers')


def test_json_is_what_main_returned(quick_results):
    returned, written = quick_results
    assert json.loads(json.dumps(returned, sort_keys=True)) == written


def test_top_level_keys(quick_results):
    _, results = quick_results
    assert {'meta', 'rewrite', 'step', 'targets'} <= set(results)
    assert results['meta']['quick'] is True
    assert results['meta']['tensorflow']


def test_rewrite_measurements(quick_results):
    _, results = quick_results
    graphs = results['rewrite']['graphs']
    names = [spec.name for spec in runner.quick_config().rewrite_models]
    assert sorted(graphs) == sorted(names)
    for name, modes in graphs.items():
        assert sorted(modes) == ['eval', 'training'], name
        for mode, entry in modes.items():
            for key in REWRITE_KEYS:
                assert _positive(entry[key]), (name, mode, key, entry[key])
            assert entry['ops_added'] == pytest.approx(
                entry['ops_added_per_layer'] * entry['layers'])
            # One weight FakeQuant per layer at least.
            assert entry['fake_quant_ops'] >= entry['layers'], (name, mode)
        # The training rewrite builds range updates and BN corrections.
        assert (modes['training']['ops_added'] >
                modes['eval']['ops_added']), name


def test_scaling(quick_results):
    _, results = quick_results
    scaling = results['rewrite']['scaling']
    assert scaling['layers'] > 1  # the deep graph has more layers
    for key, value in scaling.items():
        if key not in ('shallow', 'deep'):
            assert _positive(value), (key, value)
    assert scaling['training_ops_added'] > 1


def test_step_measurements(quick_results):
    _, results = quick_results
    step = results['step']
    assert sorted(step) == ['mobilenet_v2', 'model_a']
    for name, entry in step.items():
        for key in STEP_KEYS:
            assert _positive(entry[key]), (name, key, entry[key])
        assert entry['qat_step_ratio'] == pytest.approx(
            entry['qat_step_ms'] / entry['float_step_ms'])
    assert step['model_a']['layers'] == 4  # conv, depthwise, conv, dense


def test_targets_are_reported(quick_results):
    _, results = quick_results
    names = [t['name'] for t in results['targets']]
    assert len(names) == 8, names
    for target in results['targets']:
        assert _positive(target['value']) and target['met'] in (True, False)


def test_report_has_every_table(quick_results):
    returned, _ = quick_results
    report = reports.format_report(returned)
    for title in ('Graph rewrites', 'Scaling', 'Step cost', 'Targets'):
        assert title in report
