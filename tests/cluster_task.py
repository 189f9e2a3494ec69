"""One task of a localhost cluster, run as a subprocess by test_distributed.

    PYTHONPATH=<repository root>:<tests/> python cluster_task.py '<json spec>'

(test_distributed passes its own sys.path as PYTHONPATH.)

The spec says the scenario ('between_graph', with or without 'sync', or
'strategies'), the job ('ps' or 'worker'), the task index, the cluster's
addresses, the number of steps and the file to write the task's findings to
(JSON). A parameter server serves until the test kills it; every other task
writes its findings and ends with `os._exit`: an in-process gRPC server
cannot be stopped otherwise.
"""

import json
import os
import sys
import time
import traceback

os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # pylint: disable=wrong-import-position
import tensorflow as tf  # pylint: disable=wrong-import-position

import builders as gb  # pylint: disable=wrong-import-position
import tf1_quantize  # pylint: disable=wrong-import-position
from tf1_quantize import step_counter  # pylint: disable=wrong-import-position

v1 = tf.compat.v1
QUANT_DELAY = 4
FREEZE_BN_DELAY = 6
RUN_TIMEOUT_S = 30
# See `_train_sync`.
SYNC_RUN_TIMEOUT_MS = 3000
# Raised instead of waiting for the chief for ever (the placement bug).
MAX_WAIT_SECS = 30


def build_model(training: bool, resource: bool = True) -> tf.Tensor:
    """Conv-BN-Relu6, Conv-bias-Relu; returns the loss. Same weights names in
    training and eval (see `builders.conv_layer`)."""
    values = gb.Values(0)
    images = gb.input_placeholder()
    first = gb.conv_layer(images, 'conv1', 4, values, batch_norm=True,
                          bn_training=training, resource=resource)
    second = gb.conv_layer(first.output, 'conv2', 4, values,
                           activation='Relu', resource=resource)
    return tf.reduce_mean(tf.square(second.output - 1.0), name='loss')


def range_variables(graph: tf.Graph):
    """The rewrite's `<P>/min` and `<P>/max` variables, by name."""
    return {v.op.name: v for v in graph.get_collection('variables')
            if v.op.name.endswith(('_quant/min', '_quant/max'))}


def feed(task: int, step: int):
    """A batch for `build_model`, different for each task and step."""
    rng = np.random.RandomState(1000 * task + step)
    return {'input:0': rng.normal(size=gb.STACK_IMAGE_SHAPE).astype(np.float32)}


def _devices(graph: tf.Graph, before: set):
    """Device of each variable not in `before` (the rewrite's), by name."""
    return {v.op.name: v.device for v in graph.get_collection('variables')
            if v.op.name not in before}


def tensor_named(graph: tf.Graph, suffix: str) -> tf.Tensor:
    """Output 0 of the first op whose name ends with `suffix`."""
    return next(op.outputs[0] for op in graph.get_operations()
                if op.name.endswith(suffix))


def between_graph(spec, server) -> dict:
    """Between-graph replication: the model built inside the
    replica_device_setter block, the rewrite and the optimizer after it.
    With spec['sync'], SyncReplicasOptimizer and delays in global steps,
    and ref variables (the rewrite's too) instead of resource ones."""
    cluster = tf.train.ClusterSpec(spec['cluster'])
    task, sync = spec['task'], spec['sync']
    workers = len(spec['cluster']['worker'])
    graph = tf.Graph()
    with graph.as_default():
        with v1.device(v1.train.replica_device_setter(
                cluster=cluster, worker_device='/job:worker/task:%d' % task)):
            global_step = v1.train.get_or_create_global_step()
            loss = build_model(training=True, resource=not sync)
        before = {v.op.name for v in graph.get_collection('variables')}
        with v1.variable_scope(v1.get_variable_scope(),
                               use_resource=not sync):
            tf1_quantize.experimental_create_training_graph(
                quant_delay=QUANT_DELAY, freeze_bn_delay=FREEZE_BN_DELAY,
                delay_counter=('global_step' if sync else
                               'fake_quantization_step'))
        optimizer = v1.train.GradientDescentOptimizer(0.01)
        hooks = []
        if sync:
            optimizer = v1.train.SyncReplicasOptimizer(
                optimizer, replicas_to_aggregate=workers,
                total_num_replicas=workers)
            hooks.append(optimizer.make_session_run_hook(task == 0))
        # Not minimize() under control_dependencies(UPDATE_OPS): the sync
        # optimizer's readiness check built there would need the inputs.
        train_op = tf.group(
            [optimizer.minimize(loss, global_step=global_step)] +
            v1.get_collection(v1.GraphKeys.UPDATE_OPS))
        step = graph.get_tensor_by_name(
            step_counter.GLOBAL_STEP_READ_NAME + ':0' if sync else
            step_counter.STEP_TENSOR_NAME)
        fetches = {
            'step': step,
            'quantized': tensor_named(graph, 'activate_quant'),
            'frozen': tensor_named(graph, 'use_moving_average'),
            'train': train_op,
        }
        ranges = {name: tf.identity(v)
                  for name, v in range_variables(graph).items()}
        counter = (None if sync else tf.identity(
            graph.get_collection('variables', 'fake_quantization_step')[0]))
        weights = {name: graph.get_operation_by_name(name).device
                   for name in ('conv1/weights', 'conv2/weights')}
        if task != 0:
            _wait_for_chief(spec['checkpoint_dir'])
        session = v1.train.MonitoredTrainingSession(
            master=server.target, is_chief=task == 0,
            checkpoint_dir=spec['checkpoint_dir'] if task == 0 else None,
            hooks=hooks, max_wait_secs=MAX_WAIT_SECS,
            save_summaries_steps=None, save_summaries_secs=None,
            log_step_count_steps=None)
        if sync:
            runs = _train_sync(session, fetches, global_step, task,
                               spec['steps'])
        else:
            runs = [_train_step(session, fetches, task, index)
                    for index in range(spec['steps'])]
        _wait_for_workers(os.path.dirname(spec['out']), task, workers)
        counter = None if sync else session.run(counter)
        values = session.run(ranges)
        if not sync:
            # The chief writes its final checkpoint. (A sync chief's queue
            # runner waits for gradients no worker sends any more: that
            # session is left to os._exit.)
            session.close()
    return {
        'variable_types': sorted({v.op.type for v in range_variables(
            graph).values()}),
        'runs': runs,
        'devices': _devices(graph, before),
        'weights': weights,
        'global_step_device': global_step.device,
        'counter': None if counter is None else int(counter),
        'ranges': {k: float(v) for k, v in values.items()},
    }


def _train_step(session, fetches, task: int, index: int,
                timeout_ms: int = RUN_TIMEOUT_S * 1000):
    """One training run: [step compared with the delays, quantized, BN
    frozen]."""
    result = session.run(fetches, feed_dict=feed(task, index),
                         options=v1.RunOptions(timeout_in_ms=timeout_ms))
    return [int(result['step']), bool(result['quantized']),
            bool(result['frozen'])]


def _train_sync(session, fetches, global_step, task: int, total: int):
    """Runs until the global step reaches `total`. A run waits for the other
    worker's gradient (it may still be starting) and, once the last step is
    done, may wait for a token nobody sends: runs time out and are retried
    while the global step is below `total`."""
    runs = []
    deadline = time.time() + RUN_TIMEOUT_S
    while session.run(global_step) < total:
        if time.time() > deadline:
            raise TimeoutError('synchronous training stalled')
        try:
            runs.append(_train_step(session, fetches, task, len(runs),
                                    SYNC_RUN_TIMEOUT_MS))
        except tf.errors.DeadlineExceededError:
            pass
    return runs


def _wait_for_workers(directory: str, task: int, workers: int) -> None:
    """Says this worker's runs are over and waits until every worker's are
    (a sync worker may still run after the last global step): nothing
    changes the ranges after that."""
    open(os.path.join(directory, 'done%d' % task), 'w').close()
    deadline = time.time() + RUN_TIMEOUT_S
    while not all(os.path.exists(os.path.join(directory, 'done%d' % i))
                  for i in range(workers)):
        if time.time() > deadline:
            raise TimeoutError('the other worker never finished')
        time.sleep(0.05)


def _wait_for_chief(checkpoint_dir: str) -> None:
    """Waits for the chief's first checkpoint (written once it initialized
    the variables): a non-chief that asks earlier waits 30 s (TF's
    `recovery_wait_secs`) before asking again."""
    deadline = time.time() + MAX_WAIT_SECS
    while tf.train.latest_checkpoint(checkpoint_dir) is None:
        if time.time() > deadline:
            raise TimeoutError('the chief wrote no checkpoint')
        time.sleep(0.1)


def strategies(spec) -> dict:
    """The rewrite under MirroredStrategy (inside the replica function, and
    after it on the graph it built) and MultiWorkerMirroredStrategy."""
    cpu = tf.config.list_physical_devices('CPU')[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    results = {}
    mirrored = v1.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])
    results['mirrored_replica_fn'] = _rewrite_in_replicas(mirrored, True)
    results['mirrored_after'] = _rewrite_in_replicas(mirrored, False)
    multi_worker = (
        v1.distribute.experimental.MultiWorkerMirroredStrategy())
    results['multi_worker_replica_fn'] = _rewrite_in_replicas(multi_worker,
                                                              True)
    return results


def _rewrite_in_replicas(strategy, inside: bool) -> dict:
    """Builds the model in `call_for_each_replica`, rewriting it inside the
    replica function or after it; returns the error and whether the
    GraphDef changed."""
    graph = tf.Graph()
    errors = []

    def replica_fn():
        build_model(training=True)
        if inside:
            errors.append(_try_rewrite(graph))

    with graph.as_default():
        with strategy.scope():
            strategy.extended.call_for_each_replica(replica_fn)
        if not inside:
            errors.append(_try_rewrite(graph))
    return errors[0]


def _try_rewrite(graph: tf.Graph) -> dict:
    before = graph.as_graph_def().SerializeToString(deterministic=True)
    try:
        tf1_quantize.create_training_graph(graph, quant_delay=2)
        error = None
    except Exception as e:  # pylint: disable=broad-except
        error = '%s: %s' % (type(e).__name__, e)
    after = graph.as_graph_def().SerializeToString(deterministic=True)
    return {'error': error, 'unchanged': before == after}


def main(spec) -> None:
    if spec['scenario'] == 'strategies':
        result = strategies(spec)
    else:
        server = tf.distribute.Server(
            tf.train.ClusterSpec(spec['cluster']), job_name=spec['job'],
            task_index=spec['task'], start=True)
        if spec['job'] == 'ps':
            server.join()  # Until the test kills this process.
        result = between_graph(spec, server)
    with open(spec['out'], 'w') as f:
        json.dump(result, f)


if __name__ == '__main__':
    v1.disable_eager_execution()
    try:
        main(json.loads(sys.argv[1]))
    except BaseException:  # pylint: disable=broad-except
        traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)  # pylint: disable=protected-access
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # pylint: disable=protected-access
