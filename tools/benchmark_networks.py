"""Benchmark on real networks: TF-slim ResNet-v1-50 and Inception-v3, and
deep stacks of Conv-BN-ReLU layers.

    python -m tools.benchmark_networks [--quick] [--json FILE]   # from the
    tools/bazel run //tools:benchmark_networks -- --quick          # repo root

Networks (built as their training scripts build them: the train op under
`control_dependencies(UPDATE_OPS)`), float against contrib's fold and the
one-convolution fold, interleaved: ops and control edges of the training
graph, rewrite time, first step (variable initialization and the first
`session.run` of the train op) and median steady step. Each variant is also
timed with the settings the library recommends (the update ops grouped into
one barrier, `sessions.recommended_config()`).

Deep stacks: rewrite time and peak memory of `create_training_graph` on 250,
500 and 1000 stacked layers, each in a process of its own. Graph shapes of
training scripts: the rewrite time of a 24-level `s = s + s * 0.5` DAG (on a
placeholder, and on a quantized activation) and of a 1500-Add weight-decay
sum.

`--quick` (for CI): ResNet only at 64x64, 2 steady steps, stacks of 50 and
100 layers. Needs tf-slim (the pinned venvs have it).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np
import tensorflow as tf

import tf1_quantize
from tf1_quantize import cli
from tf1_quantize import sessions
from tf1_quantize import tf_slim_compat
from tf1_quantize.export import files

v1 = tf.compat.v1
VARIANTS = ('float', 'contrib_fold', 'one_conv_fold')
QUANT_DELAY = 100


def _network(name: str, size: int):
    tf_slim_compat.patch_tf_slim()
    import tf_slim as slim  # pylint: disable=import-outside-toplevel
    from tf_slim.nets import inception_v3  # pylint: disable=import-outside-toplevel
    from tf_slim.nets import resnet_v1  # pylint: disable=import-outside-toplevel
    images = v1.placeholder(tf.float32, [8, size, size, 3], name='images')
    if name == 'resnet_v1_50':
        with slim.arg_scope(resnet_v1.resnet_arg_scope()):
            logits, _ = resnet_v1.resnet_v1_50(images, num_classes=10,
                                               is_training=True)
        logits = tf.squeeze(logits, [1, 2])
    else:
        with slim.arg_scope(inception_v3.inception_v3_arg_scope()):
            logits, _ = inception_v3.inception_v3(
                images, num_classes=10, is_training=True,
                create_aux_logits=False)
    return images, logits


def _build(name: str, size: int, variant: str, barrier: bool):
    graph = tf.Graph()
    with graph.as_default():
        v1.set_random_seed(0)
        images, logits = _network(name, size)
        loss = v1.losses.sparse_softmax_cross_entropy(
            tf.zeros([8], tf.int64), logits)
        start = time.perf_counter()
        if variant != 'float':
            tf1_quantize.experimental_create_training_graph(
                quant_delay=QUANT_DELAY,
                one_conv_fold=variant == 'one_conv_fold')
        rewrite = time.perf_counter() - start
        updates = v1.get_collection(v1.GraphKeys.UPDATE_OPS)
        with tf.control_dependencies([tf.group(*updates)] if barrier
                                     else updates):
            train = v1.train.MomentumOptimizer(0.01, 0.9).minimize(loss)
        init = v1.global_variables_initializer()
    edges = sum(len(op.control_inputs) for op in graph.get_operations())
    return graph, images, train, init, rewrite, edges


def _time_network(name: str, size: int, variant: str, recommended: bool,
                  steps: int) -> dict:
    graph, images, train, init, rewrite, edges = _build(
        name, size, variant, barrier=recommended)
    feed = {images: np.random.RandomState(0).rand(
        *images.shape.as_list()).astype(np.float32)}
    config = sessions.recommended_config() if recommended else None
    with v1.Session(graph=graph, config=config) as session:
        start = time.perf_counter()
        session.run(init)
        session.run(train, feed)
        first = time.perf_counter() - start
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            session.run(train, feed)
            times.append(time.perf_counter() - start)
    return {'network': name, 'variant': variant, 'recommended': recommended,
            'ops': len(graph.get_operations()), 'control_edges': edges,
            'rewrite_s': rewrite, 'first_step_s': first,
            'steady_step_s': statistics.median(times)}


def _networks(quick: bool):
    if quick:
        return [('resnet_v1_50', 64)], 2, 1
    return [('resnet_v1_50', 112), ('inception_v3', 96)], 10, 2


def _deep_stack(layers: int) -> dict:
    """Run in a child process: builds and rewrites the stack."""
    graph = tf.Graph()
    with graph.as_default():
        y = v1.placeholder(tf.float32, [1, 8, 8, 8])
        for i in range(layers):
            with v1.variable_scope('layer%d' % i):
                w = v1.get_variable('weights', [1, 1, 8, 8])
                gamma = v1.get_variable('gamma', [8])
                beta = v1.get_variable('beta', [8])
                stats = [v1.get_variable(n, [8], trainable=False)
                         for n in ('moving_mean', 'moving_variance')]
                y, mean, variance = v1.nn.fused_batch_norm(
                    tf.nn.conv2d(y, w, 1, 'SAME'), gamma, beta,
                    is_training=True)[:3]
                for var, value in zip(stats, (mean, variance)):
                    v1.add_to_collection(v1.GraphKeys.UPDATE_OPS,
                                         v1.assign_sub(var, (var - value) * 0.1))
                y = tf.nn.relu(y)
    before = _peak_rss_mb()
    start = time.perf_counter()
    tf1_quantize.create_training_graph(graph, quant_delay=QUANT_DELAY)
    return {'layers': layers, 'rewrite_s': time.perf_counter() - start,
            'peak_rss_mb': _peak_rss_mb(), 'rss_before_rewrite_mb': before,
            'ops': len(graph.get_operations())}


def _graph_shapes() -> dict:
    """Rewrite times of Add/Mul DAGs and of a long Add chain: the issue's
    72-op DAG on a placeholder (nothing to quantize), the same DAG on a
    quantized activation (48 quantizers to build) and a weight-decay sum."""
    times = {}
    for name, on_activation, build in (
            ('add_mul_dag_24_levels', False, _add_mul_dag),
            ('add_mul_dag_24_levels_quantized', True, _add_mul_dag),
            ('add_chain_1500', True, _add_chain)):
        graph = tf.Graph()
        with graph.as_default():
            x = v1.placeholder(tf.float32, [1, 4, 4, 2])
            if on_activation:
                w = v1.get_variable('weights', [1, 1, 2, 2])
                x = tf.nn.relu(tf.nn.conv2d(x, w, 1, 'SAME') + 1.0)
            build(x)
        start = time.perf_counter()
        tf1_quantize.create_training_graph(graph)
        times[name + '_s'] = time.perf_counter() - start
    return times


def _add_mul_dag(s):
    for _ in range(24):
        s = s + s * 0.5


def _add_chain(y):
    total = tf.reduce_sum(y)
    for i in range(1500):
        total = total + tf.reduce_sum(v1.get_variable('decay%d' % i, [2]))


def _peak_rss_mb() -> float:
    """This process's peak resident memory. Linux keeps `ru_maxrss` across
    the exec that started a child, so the child's own `VmHWM` is read."""
    try:
        with open('/proc/self/status') as status:
            for line in status:
                if line.startswith('VmHWM:'):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _deep_stack_in_child(layers: int) -> dict:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [root] + [p for p in [os.environ.get('PYTHONPATH')] if p]))
    result = subprocess.run(
        [sys.executable, os.path.abspath(__file__), '--stack', str(layers)],
        capture_output=True, text=True, check=True, timeout=1800, env=env)
    return json.loads(result.stdout.strip().splitlines()[-1])


def _ratios(rows):
    """Each quantized variant against float, per network and setting."""
    lines = []
    for row in rows:
        if row['variant'] == 'float':
            continue
        base = next(r for r in rows if r['variant'] == 'float' and
                    r['network'] == row['network'] and
                    r['recommended'] == row['recommended'])
        lines.append(
            '%-13s %-14s %-11s ops %5.2fx  control edges %5.2fx  first step '
            '%5.2fx  steady step %5.2fx' % (
                row['network'], row['variant'],
                'recommended' if row['recommended'] else 'script',
                row['ops'] / base['ops'],
                row['control_edges'] / max(base['control_edges'], 1),
                row['first_step_s'] / base['first_step_s'],
                row['steady_step_s'] / base['steady_step_s']))
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--quick', action='store_true')
    parser.add_argument('--json', help='also write the results here')
    parser.add_argument('--stack', type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    v1.disable_eager_execution()
    if args.stack:
        print(json.dumps(_deep_stack(args.stack)))
        return 0
    cli.enter_caller_directory()
    networks, steps, repeats = _networks(args.quick)
    rows = []
    for name, size in networks:
        for recommended in (False, True):
            runs = {variant: [] for variant in VARIANTS}
            for _ in range(repeats):  # Interleaved.
                for variant in VARIANTS:
                    runs[variant].append(_time_network(
                        name, size, variant, recommended, steps))
            for variant in VARIANTS:
                row = dict(runs[variant][0])
                for key in ('rewrite_s', 'first_step_s', 'steady_step_s'):
                    row[key] = statistics.median(r[key] for r in runs[variant])
                rows.append(row)
                print(json.dumps(row), flush=True)
    print('\n'.join(_ratios(rows)))
    stacks = [_deep_stack_in_child(n) for n in
              ((50, 100) if args.quick else (250, 500, 1000))]
    for stack in stacks:
        print('stack of %(layers)4d layers: rewrite %(rewrite_s)6.1f s, '
              'peak RSS %(peak_rss_mb)6.0f MB (%(rss_before_rewrite_mb).0f MB '
              'before the rewrite), %(ops)d ops' % stack)
    shapes = _graph_shapes()
    print('graph shapes: ' + ', '.join('%s %.2f' % item
                                       for item in shapes.items()))
    if args.json:
        files.write_atomic(args.json, json.dumps(
            {'networks': rows, 'stacks': stacks, 'graph_shapes': shapes},
            indent=1).encode())
    return 0


if __name__ == '__main__':
    sys.exit(main())
