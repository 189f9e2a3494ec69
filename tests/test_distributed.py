"""Distributed training: real localhost clusters, placement, delay counters.

The cluster tests run each task as a subprocess (`cluster_task.py`: one
parameter server and two workers on free 127.0.0.1 ports) under a hard
timeout, so a hang fails the test instead of blocking the suite.
"""

import json
import os
import socket
import subprocess
import sys
import time

import pytest
import tensorflow as tf

import cluster_task
import tf1_quantize

v1 = tf.compat.v1
_TASK = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                     'cluster_task.py')
# The task imports tf1_quantize and the tests' helpers as this process does.
_ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
_TIMEOUT_S = 90
_STEPS = 8


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(('127.0.0.1', 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _start(spec, directory, name):
    spec = dict(spec, out=os.path.join(directory, name + '.json'))
    log = os.path.join(directory, name + '.log')
    with open(log, 'w') as output:
        process = subprocess.Popen([sys.executable, _TASK, json.dumps(spec)],
                                   stdout=output, stderr=subprocess.STDOUT,
                                   env=_ENV)
    return process, spec['out'], log


def _run_cluster(directory, sync: bool):
    """Runs a parameter server and two workers (`cluster_task.
    between_graph`) and returns each worker's findings and the chief's
    checkpoint directory."""
    directory = str(directory)
    ps_port, *worker_ports = _free_ports(3)
    spec = dict(scenario='between_graph', sync=sync, steps=_STEPS,
                checkpoint_dir=os.path.join(directory, 'checkpoints'),
                cluster={'ps': ['127.0.0.1:%d' % ps_port],
                         'worker': ['127.0.0.1:%d' % p for p in worker_ports]})
    ps, _, _ = _start(dict(spec, job='ps', task=0), directory, 'ps')
    workers = [_start(dict(spec, job='worker', task=i), directory,
                      'worker%d' % i) for i in range(2)]
    deadline = time.time() + _TIMEOUT_S
    try:
        for process, _, log in workers:
            try:
                code = process.wait(timeout=max(0, deadline - time.time()))
            except subprocess.TimeoutExpired:
                code = 'timeout'
            with open(log) as output:
                assert code == 0, (code, output.read()[-3000:])
    finally:
        for process in [ps] + [w[0] for w in workers]:
            if process.poll() is None:
                process.kill()
                process.wait()
    results = []
    for _, out, _ in workers:
        with open(out) as f:
            results.append(json.load(f))
    return results, spec['checkpoint_dir']


@pytest.fixture(scope='module')
def async_cluster(tmp_path_factory):
    """Between-graph replication, contrib's counter (shared by the workers)."""
    return _run_cluster(tmp_path_factory.mktemp('async'), sync=False)


@pytest.fixture(scope='module')
def sync_cluster(tmp_path_factory):
    """SyncReplicasOptimizer, delays in global steps, ref variables."""
    return _run_cluster(tmp_path_factory.mktemp('sync'), sync=True)


@pytest.mark.parametrize('cluster,variable_type',
                         [('async_cluster', 'VarHandleOp'),
                          ('sync_cluster', 'VariableV2')])
def test_variables_live_with_their_layer_weights(cluster, variable_type,
                                                 request):
    results, _ = request.getfixturevalue(cluster)
    for result in results:
        assert result['variable_types'] == [variable_type]
        devices, weights = result['devices'], result['weights']
        for layer, device in weights.items():
            assert device.startswith('/job:ps')
            layer_scope = layer.rpartition('/')[0]
            ranges = [n for n in devices if n.startswith(layer_scope + '/')]
            assert len(ranges) >= 4, ranges
            assert all(devices[n] == device for n in ranges), (layer, devices)
        assert all(d.startswith('/job:ps') for d in devices.values()), devices
        if 'fake_quantization_step' in devices:
            assert (devices['fake_quantization_step']
                    == result['global_step_device'])


@pytest.mark.parametrize('cluster', ['async_cluster', 'sync_cluster'])
def test_workers_share_one_set_of_ranges(cluster, request):
    results, _ = request.getfixturevalue(cluster)
    first, second = results
    assert first['ranges'] and first['ranges'] == second['ranges']
    # Both workers trained on different data.
    assert first['runs'] and second['runs']


def test_contrib_counter_counts_every_workers_runs(async_cluster):
    results, _ = async_cluster
    total = sum(len(r['runs']) for r in results)
    assert total == 2 * _STEPS
    assert [r['counter'] for r in results] == [total, total]
    for result in results:
        for step, quantized, frozen in result['runs']:
            assert quantized == (step >= cluster_task.QUANT_DELAY)
            assert frozen == (step >= cluster_task.FREEZE_BN_DELAY)


def test_sync_replicas_delays_count_global_steps(sync_cluster):
    results, _ = sync_cluster
    for result in results:
        steps = [step for step, _, _ in result['runs']]
        assert steps == sorted(steps)
    runs = results[0]['runs'] + results[1]['runs']
    # Every global step was trained (a worker may run twice in one step, or
    # start its last run as the other one ends the last step).
    assert set(range(_STEPS)) <= {step for step, _, _ in runs}
    assert max(step for step, _, _ in runs) <= _STEPS
    for step, quantized, frozen in runs:
        assert quantized == (step >= cluster_task.QUANT_DELAY)
        assert frozen == (step >= cluster_task.FREEZE_BN_DELAY)


def test_chief_checkpoint_restores_into_eval_graph(async_cluster):
    results, checkpoint_dir = async_cluster
    graph = tf.Graph()
    with graph.as_default():
        cluster_task.build_model(training=False)
        tf1_quantize.create_eval_graph()
        ranges = cluster_task.range_variables(graph)
        with v1.Session() as session:
            v1.train.Saver().restore(
                session, tf.train.latest_checkpoint(checkpoint_dir))
            restored = session.run(ranges)
    assert set(restored) == set(results[0]['ranges'])
    for name, value in restored.items():
        assert value == pytest.approx(results[0]['ranges'][name])


def test_tf_distribute_strategies_are_refused_untouched(tmp_path):
    process = subprocess.run(
        [sys.executable, _TASK, json.dumps({
            'scenario': 'strategies', 'out': str(tmp_path / 'out.json')})],
        capture_output=True, text=True, timeout=_TIMEOUT_S, env=_ENV)
    assert process.returncode == 0, process.stdout + process.stderr
    with open(tmp_path / 'out.json') as f:
        results = json.load(f)
    for case, strategy in (('mirrored_replica_fn', 'MirroredStrategy'),
                           ('mirrored_after', 'MirroredVariable'),
                           ('multi_worker_replica_fn',
                            'MultiWorkerMirroredStrategy')):
        error = results[case]['error']
        assert error.startswith('UnsupportedGraphError'), (case, error)
        assert strategy in error and 'replica_device_setter' in error
        assert results[case]['unchanged'], case


_CLUSTER = {'ps': ['ps0:1', 'ps1:1'], 'worker': ['w0:1']}


def _rewrite_with_setter(inside: bool, global_step: bool = True, **kwargs):
    """The model built under a replica_device_setter (2 parameter servers,
    no servers started); the rewrite inside the block or after it."""
    graph = tf.Graph()
    setter = v1.train.replica_device_setter(
        cluster=tf.train.ClusterSpec(_CLUSTER))
    with graph.as_default():
        with v1.device(setter):
            if global_step:
                v1.train.get_or_create_global_step()
            cluster_task.build_model(training=True)
            if inside:
                tf1_quantize.experimental_create_training_graph(**kwargs)
        if not inside:
            tf1_quantize.experimental_create_training_graph(**kwargs)
    return graph


def _device(graph, name):
    return graph.get_operation_by_name(name).device


@pytest.mark.parametrize('inside', [True, False])
def test_placement_with_weights_whatever_the_device_scope(inside):
    graph = _rewrite_with_setter(inside, quant_delay=3, freeze_bn_delay=5)
    for layer in ('conv1', 'conv2'):
        weights = _device(graph, layer + '/weights')
        assert weights.startswith('/job:ps/task:')
        for name in ('weights_quant/min', 'act_quant/max',
                     'act_quant/%s/act_quant/min/biased' % layer):
            assert _device(graph, '%s/%s' % (layer, name)) == weights
    assert (_device(graph, 'fake_quantization_step')
            == _device(graph, 'global_step'))
    # The computation stays where the caller's scope puts it.
    expected = '/job:worker' if inside else ''
    assert _device(graph, 'conv1/act_quant/BatchMax') == expected


def test_step_counter_without_global_step_goes_with_first_layer():
    graph = _rewrite_with_setter(False, global_step=False, quant_delay=3)
    assert (_device(graph, 'fake_quantization_step')
            == _device(graph, 'conv1/weights'))


def test_graph_without_devices_gets_none():
    graph = tf.Graph()
    with graph.as_default():
        v1.train.get_or_create_global_step()
        cluster_task.build_model(training=True)
        tf1_quantize.experimental_create_training_graph(quant_delay=3)
    assert not [op.device for op in graph.get_operations() if op.device]


def test_delays_in_global_steps():
    graph = tf.Graph()
    with graph.as_default():
        global_step = v1.train.get_or_create_global_step()
        cluster_task.build_model(training=True)
        tf1_quantize.experimental_create_training_graph(
            quant_delay=3, freeze_bn_delay=5, delay_counter='global_step')
        assert not graph.get_collection('variables', 'fake_quantization_step')
        quantized = graph.get_tensor_by_name(
            'conv1/weights_quant/activate_quant:0')
        frozen = cluster_task.tensor_named(graph, 'use_moving_average')
        with v1.Session() as session:
            session.run(v1.global_variables_initializer())
            seen = []
            for step in range(7):
                session.run(global_step.assign(step))
                # Evaluating the model leaves the global step alone.
                seen.append(session.run([quantized, frozen, global_step]))
    assert seen == [[s >= 3, s >= 5, s] for s in range(7)]


def test_eval_graph_delay_in_global_steps():
    graph = tf.Graph()
    with graph.as_default():
        global_step = v1.train.get_or_create_global_step()
        cluster_task.build_model(training=False)
        tf1_quantize.experimental_create_eval_graph(
            quant_delay=2, delay_counter='global_step')
        quantized = graph.get_tensor_by_name(
            'conv1/weights_quant/activate_quant:0')
        with v1.Session() as session:
            session.run(v1.global_variables_initializer())
            assert not session.run(quantized)
            session.run(global_step.assign(2))
            assert session.run(quantized)


def test_global_step_delays_need_a_global_step():
    graph = tf.Graph()
    with graph.as_default():
        cluster_task.build_model(training=True)
    before = graph.as_graph_def()
    with pytest.raises(tf1_quantize.QuantizeError, match='global step'):
        tf1_quantize.experimental_create_training_graph(
            graph, quant_delay=3, delay_counter='global_step')
    assert graph.as_graph_def() == before


def test_unknown_delay_counter_is_refused():
    graph = tf.Graph()
    with graph.as_default():
        cluster_task.build_model(training=True)
    with pytest.raises(ValueError, match='delay_counter'):
        tf1_quantize.experimental_create_training_graph(
            graph, quant_delay=3, delay_counter='steps')


def test_partitioned_weights_place_ranges_with_their_first_part():
    graph = tf.Graph()
    setter = v1.train.replica_device_setter(
        cluster=tf.train.ClusterSpec(_CLUSTER))
    with graph.as_default():
        with v1.device(setter):
            images = v1.placeholder(tf.float32, [2, 6])
            weights = v1.get_variable(
                'fc/weights', [6, 4],
                partitioner=v1.fixed_size_partitioner(2))
            tf.nn.relu(tf.matmul(images, weights))
        tf1_quantize.create_training_graph()
    parts = [_device(graph, 'fc/weights/part_%d' % i) for i in range(2)]
    assert parts[0] != parts[1]
    assert _device(graph, 'weights_quant/min') == parts[0]
    assert _device(graph, 'act_quant/max') == parts[0]
