"""The timed measurements: graph build and rewrite (time, ops added, memory),
and float against quantization-aware training steps and inference.

Ops a rewrite adds are counted by diffing the graph: its number of operations
before and after the rewrite.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import statistics
import time
import tracemalloc
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

import tf1_quantize
from tools.benchmark.models import ModelSpec, build_model, count_layer_ops

v1 = tf.compat.v1

_MIB = 1024.0 * 1024.0


def _rss_bytes() -> Optional[int]:
    """Resident set size of this process (Linux), else None."""
    try:
        with open('/proc/self/statm') as f:
            return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')
    except (OSError, ValueError, IndexError):
        return None


@dataclasses.dataclass
class _Timed:
    wall_s: float
    cpu_s: float


def _timed(fn: Callable[[], object]) -> Tuple[object, _Timed]:
    gc.collect()
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, _Timed(time.perf_counter() - wall,
                          time.process_time() - cpu)


# Rewrite mode -> (the float graph is in training mode, the rewrite).
REWRITES = {
    'training': (True, tf1_quantize.create_training_graph),
    'eval': (False, tf1_quantize.create_eval_graph),
}


@dataclasses.dataclass
class _RewriteRun:
    """One build + rewrite."""
    build: _Timed
    rewrite: _Timed
    layers: int
    ops_before: int
    ops_after: int
    fake_quants: int
    rss_delta_mib: Optional[float]
    tracemalloc_peak_mib: Optional[float]


def _rewrite_once(spec: ModelSpec, mode: str, seed: int,
                  trace_memory: bool) -> _RewriteRun:
    training, rewrite = REWRITES[mode]
    model, build = _timed(lambda: build_model(spec, training, seed))
    graph = model.graph
    ops_before = len(graph.get_operations())
    layers = count_layer_ops(graph)
    rss = _rss_bytes()
    if trace_memory:
        tracemalloc.start()
    try:
        _, rewritten = _timed(lambda: rewrite(input_graph=graph))
        peak = (tracemalloc.get_traced_memory()[1] / _MIB if trace_memory
                else None)
    finally:
        if trace_memory:
            tracemalloc.stop()
    rss_after = _rss_bytes()
    ops = graph.get_operations()
    return _RewriteRun(
        build=build, rewrite=rewritten, layers=layers, ops_before=ops_before,
        ops_after=len(ops),
        fake_quants=sum(op.type.startswith('FakeQuant') for op in ops),
        rss_delta_mib=(None if rss is None or rss_after is None else
                       (rss_after - rss) / _MIB),
        tracemalloc_peak_mib=peak)


def measure_rewrite(spec: ModelSpec, mode: str, seed: int, repeats: int,
                    trace_memory: bool, separate_memory_pass: bool = True
                    ) -> dict:
    """Builds the float graph and rewrites it, `repeats` times.

    Times are the best of the repeats (each on a freshly built graph): the
    work is deterministic and single-threaded, so other load on the machine
    only ever adds to it.
    With `separate_memory_pass` the tracemalloc peak comes from one more
    build + rewrite, so that tracing does not slow down the timed runs;
    otherwise (`--quick`) the first timed run is also traced.

    Args:
        spec: the model.
        mode: 'training' (create_training_graph on a training-mode graph
            with its loss) or 'eval' (create_eval_graph on an inference-mode
            graph).
        seed: seed of the initial values.
        repeats: timed repetitions.
        trace_memory: also measure the tracemalloc peak.
        separate_memory_pass: trace in an extra, untimed run.

    Returns:
        The measurements (keys listed in `tools.benchmark.runner.run`).
    """
    inline = trace_memory and not separate_memory_pass
    runs = [_rewrite_once(spec, mode, seed, inline and i == 0)
            for i in range(repeats)]
    peak = runs[0].tracemalloc_peak_mib
    if trace_memory and separate_memory_pass:
        peak = _rewrite_once(spec, mode, seed, True).tracemalloc_peak_mib
    last = runs[-1]
    added = last.ops_after - last.ops_before
    result = {
        'layers': last.layers,
        'float_ops': last.ops_before,
        'ops_added': added,
        'ops_added_per_layer': added / max(last.layers, 1),
        'fake_quant_ops': last.fake_quants,
        'repeats': repeats,
        'build_s': min(r.build.wall_s for r in runs),
        'build_cpu_s': min(r.build.cpu_s for r in runs),
        'rewrite_s': min(r.rewrite.wall_s for r in runs),
        'rewrite_cpu_s': min(r.rewrite.cpu_s for r in runs),
        'tracemalloc_peak_mib': peak,
        'rss_delta_mib': _median_or_none(r.rss_delta_mib for r in runs),
    }
    for clock in ('', '_cpu'):
        build_per_op = result['build%s_s' % clock] / max(last.ops_before, 1)
        rewrite_per_op = result['rewrite%s_s' % clock] / max(added, 1)
        result['build_us_per_op' + clock] = 1e6 * build_per_op
        result['rewrite_us_per_op' + clock] = 1e6 * rewrite_per_op
        result['per_op_cost_ratio' + clock] = (
            rewrite_per_op / build_per_op if build_per_op > 0 else None)
    return result


def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    """a / b, or None if either is missing or b is 0."""
    return a / b if a is not None and b else None


def _median_or_none(values) -> Optional[float]:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _warm_up(seed: int) -> None:
    """Builds and rewrites a tiny model once: TensorFlow imports modules
    and fills caches on first use, which must not count for the first
    measured graph."""
    spec = ModelSpec('warm_up', 'mobilenet_v2', 16, blocks=(1, 1),
                     width=0.35, classes=4)
    for training, rewrite in REWRITES.values():
        rewrite(input_graph=build_model(spec, training, seed).graph)


def run_rewrite_benchmark(specs: Sequence[ModelSpec], shallow: str, deep: str,
                          seed: int, repeats: Dict[str, int],
                          trace_memory: bool = True,
                          separate_memory_pass: bool = True,
                          warm_up: bool = True,
                          log: Callable[[str], None] = print) -> dict:
    """Measures both rewrites on every model, then the depth scaling."""
    if warm_up:
        _warm_up(seed)
    graphs = {}
    for spec in specs:
        graphs[spec.name] = {}
        for mode in REWRITES:
            log('  %s: %s rewrite...' % (spec.name, mode))
            graphs[spec.name][mode] = measure_rewrite(
                spec, mode, seed, repeats.get(spec.name, 1), trace_memory,
                separate_memory_pass)
    low, high = graphs[shallow], graphs[deep]
    scaling = {
        'shallow': shallow,
        'deep': deep,
        'layers': ratio(high['training']['layers'],
                        low['training']['layers']),
    }
    for mode in REWRITES:
        for key in ('build_s', 'build_cpu_s', 'rewrite_s', 'rewrite_cpu_s',
                    'ops_added'):
            scaling['%s_%s' % (mode, key)] = ratio(high[mode][key],
                                                   low[mode][key])
    return {'graphs': graphs, 'scaling': scaling}


def _session(graph: tf.Graph) -> v1.Session:
    with graph.as_default():
        init = v1.global_variables_initializer()
    session = v1.Session(graph=graph)
    session.run(init)
    return session


# Training variants timed side by side: name -> rewrite (None: float).
_TRAINING_VARIANTS = {
    'float': None,
    'qat': tf1_quantize.create_training_graph,
    'qat_one_conv': lambda graph: (
        tf1_quantize.experimental_create_training_graph(
            graph, one_conv_fold=True)),
}


def _training_session(spec: ModelSpec, seed: int, rewrite,
                      learning_rate: float):
    """A session training `spec`, float or rewritten for QAT by `rewrite`."""
    model = build_model(spec, training=True, seed=seed)
    graph = model.graph
    layers = count_layer_ops(graph)
    if rewrite is not None:
        rewrite(graph)
    with graph.as_default():  # The optimizer comes after the rewrite.
        optimizer = v1.train.GradientDescentOptimizer(learning_rate)
        with tf.control_dependencies(v1.get_collection(
                v1.GraphKeys.UPDATE_OPS)):
            train_op = optimizer.minimize(model.loss)
    return model, _session(graph), train_op, layers


def _inference_session(spec: ModelSpec, seed: int, quantized: bool):
    model = build_model(spec, training=False, seed=seed)
    if quantized:
        tf1_quantize.create_eval_graph(input_graph=model.graph)
    return model, _session(model.graph)


def _interleaved_medians(runs: Dict[str, Callable[[], object]], steps: int,
                         warmup: int) -> Dict[str, float]:
    """Runs each callable warmup + steps times, interleaved; median seconds.

    The order of the callables alternates every iteration so that neither
    always runs right after the other.
    """
    names = list(runs)
    times: Dict[str, List[float]] = {name: [] for name in names}
    for i in range(warmup + steps):
        for name in (names if i % 2 == 0 else names[::-1]):
            start = time.perf_counter()
            runs[name]()
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def measure_steps(spec: ModelSpec, seed: int, steps: int, warmup: int,
                  learning_rate: float = 0.01) -> dict:
    """Float vs QAT training step and float vs fake-quant inference.

    Returns:
        Median milliseconds of each and the two ratios.
    """
    rng = np.random.RandomState(seed)
    images = rng.uniform(0.0, 1.0, [spec.batch, spec.image_size,
                                    spec.image_size,
                                    spec.channels]).astype(np.float32)
    labels = rng.randint(0, spec.classes, [spec.batch]).astype(np.int32)
    result = {'batch': spec.batch, 'image_size': spec.image_size,
              'steps': steps, 'warmup': warmup,
              'optimizer': 'GradientDescent'}
    sessions = []
    try:
        train = {}
        for name, rewrite in _TRAINING_VARIANTS.items():
            model, session, train_op, layers = _training_session(
                spec, seed, rewrite, learning_rate)
            sessions.append(session)
            feed = {model.inputs: images, model.labels: labels}
            fetches = [train_op, model.loss]
            train[name] = (lambda s=session, f=fetches, d=feed: s.run(f, d))
            result['layers'] = layers
        medians = _interleaved_medians(train, steps, warmup)
        result['float_step_ms'] = 1e3 * medians['float']
        result['qat_step_ms'] = 1e3 * medians['qat']
        result['qat_step_ratio'] = medians['qat'] / medians['float']
        result['qat_one_conv_step_ms'] = 1e3 * medians['qat_one_conv']
        result['qat_one_conv_step_ratio'] = (medians['qat_one_conv'] /
                                             medians['float'])
        infer = {}
        for name, quantized in (('float', False), ('fake_quant', True)):
            model, session = _inference_session(spec, seed, quantized)
            sessions.append(session)
            infer[name] = (lambda s=session, t=model.logits,
                           d={model.inputs: images}: s.run(t, d))
        medians = _interleaved_medians(infer, steps, warmup)
        result['float_inference_ms'] = 1e3 * medians['float']
        result['eval_inference_ms'] = 1e3 * medians['fake_quant']
        result['eval_inference_ratio'] = (medians['fake_quant'] /
                                          medians['float'])
    finally:
        for session in sessions:
            session.close()
    return result


def run_step_benchmark(specs: Sequence[ModelSpec], seed: int,
                       steps: Dict[str, Tuple[int, int]],
                       log: Callable[[str], None] = print) -> dict:
    """`measure_steps` on each model; `steps` maps name -> (steps, warmup)."""
    results = {}
    for spec in specs:
        count, warmup = steps[spec.name]
        log('  %s: %d steps after %d warm-up...' % (spec.name, count, warmup))
        results[spec.name] = measure_steps(spec, seed, count, warmup)
        results[spec.name]['model'] = dataclasses.asdict(spec)
    return results
