"""Performance benchmark of the tf1_quantize graph rewrites.

Two parts, each printed as a table and written to JSON with ``--json``:

* ``rewrite``: on ResNet-50/101/152-like and MobileNetV2-like graphs (random
  weights, contrib naming, fused training-mode batch norms with their
  moving-average updates in ``UPDATE_OPS``), the time to build the float
  graph, the time of ``create_training_graph`` and of ``create_eval_graph``
  (on a separately built inference-mode graph), the ops each adds (in total
  and per layer), the rewrite's memory (tracemalloc peak of Python
  allocations, and the process RSS delta, which includes TensorFlow's C++
  graph), how the times scale with depth, and the rewrite cost per op it
  creates relative to the cost per op of building the float graph.
* ``step``: the float training step against the quantization-aware (QAT)
  training step, and float inference against fake-quant eval inference, on
  "model A" (a three-layer conv / depthwise / conv demo model) and the
  MobileNetV2-like model at 96x96. Both variants of a model start from the same
  weights and see the same batch; their runs are interleaved (alternating
  which goes first) and the medians compared.

Wall times are noisy on a shared machine; every rewrite time also has its
process CPU time (the rewrite is single-threaded Python) and the derived
ratios are given for both.

Usage::

    python tools/benchmark.py                 # full run (a few minutes)
    python tools/benchmark.py --quick         # small graphs, few steps
    python tools/benchmark.py --only rewrite --json out/bench.json
    python tools/benchmark.py --only rewrite --profile   # + cProfile report
    python tools/benchmark.py --only profile  # the cProfile report alone

``--profile`` adds a cProfile of ``create_training_graph`` on the ResNet-50
graph (the smaller ResNet in ``--quick``): the library functions with the
largest cumulative time, and how each grows on the deeper ResNet compared
with the layer count (a growth well above it points at a super-linear scan).
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import gc
import glob
import hashlib
import json
import os
import platform
import pstats
import statistics
import sys
import time
import tracemalloc
from typing import Callable, Dict, List, Optional, Sequence, Tuple

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

# Benchmark the checkout this file is in (also Bazel's runfiles tree), not an
# installed copy.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.isdir(os.path.join(_ROOT, 'tf1_quantize')) and (
        _ROOT not in sys.path):
    sys.path.insert(0, _ROOT)

import tf1_quantize  # noqa: E402
from tf1_quantize import cli  # noqa: E402
from tf1_quantize import export  # noqa: E402

v1 = tf.compat.v1

# Issue targets (reported, not enforced).
TARGET_PER_OP_COST_RATIO = 1.2   # rewrite cost per op / build cost per op
TARGET_QAT_STEP_RATIO = 2.0      # QAT training step / float step, model A
TARGET_ONE_CONV_STEP_RATIO = 1.3  # the same with one_conv_fold=True
TARGET_EVAL_INFERENCE_RATIO = 1.2  # fake-quant inference / float inference
# Deep / shallow rewrite time, per unit of their layer ratio: the issue's
# 3.2 for ResNet-152 / ResNet-50, whose conv-layer ratio is 2.9.
TARGET_REWRITE_SCALING_PER_LAYER = 3.2 / 2.9

LAYER_OP_TYPES = ('Conv2D', 'DepthwiseConv2dNative', 'MatMul')
BN_EPSILON = 1e-3
BN_MOMENTUM = 0.997
_MIB = 1024.0 * 1024.0


# ---------------------------------------------------------------------------
# Model building: contrib-named layers with random weights.


class _LayerBuilder:
    """Builds contrib-style layers (``weights``, ``BatchNorm/...``).

    Every variable gets an initializer with its own op-level seed, drawn in
    creation order from `seed`, so two builds of the same model (e.g. the
    float and the QAT copy) start from identical weights whatever else is in
    their graphs.

    Args:
        training: fused batch norms in training mode (batch statistics plus
            moving-average updates in UPDATE_OPS) or inference mode.
        seed: base of the per-variable seeds.
    """

    def __init__(self, training: bool, seed: int):
        self.training = training
        self._seed = seed * 100003

    def _next_seed(self) -> int:
        self._seed += 1
        return self._seed

    def weights(self, name: str, shape: Sequence[int],
                fan_in: int) -> tf.Variable:
        """A He-initialized (truncated normal) weight variable."""
        return v1.get_variable(
            name, shape=shape, dtype=tf.float32,
            initializer=v1.truncated_normal_initializer(
                stddev=float(np.sqrt(2.0 / max(fan_in, 1))),
                seed=self._next_seed()))

    def _uniform(self, name, shape, low, high, trainable=True):
        return v1.get_variable(
            name, shape=shape, dtype=tf.float32, trainable=trainable,
            initializer=v1.random_uniform_initializer(
                low, high, seed=self._next_seed()))

    def conv(self, x: tf.Tensor, channels: int, kernel: int, stride: int,
             scope: str, activation: Optional[str] = 'relu') -> tf.Tensor:
        """``scope/weights`` -> Conv2D -> BatchNorm -> activation."""
        with v1.variable_scope(scope):
            in_channels = int(x.shape[-1])
            w = self.weights('weights', [kernel, kernel, in_channels,
                                         channels],
                             kernel * kernel * in_channels)
            y = tf.nn.conv2d(x, w, [1, stride, stride, 1], 'SAME',
                             name='Conv2D')
            return self._finish(y, activation)

    def depthwise(self, x: tf.Tensor, stride: int, scope: str,
                  activation: Optional[str] = 'relu6') -> tf.Tensor:
        """``scope/depthwise_weights`` -> depthwise 3x3 -> BN -> act."""
        with v1.variable_scope(scope):
            in_channels = int(x.shape[-1])
            w = self.weights('depthwise_weights', [3, 3, in_channels, 1], 9)
            y = tf.nn.depthwise_conv2d(x, w, [1, stride, stride, 1], 'SAME',
                                       name='depthwise')
            return self._finish(y, activation)

    def fully_connected(self, x: tf.Tensor, units: int,
                        scope: str) -> tf.Tensor:
        """``scope/weights`` -> MatMul -> ``scope/biases`` BiasAdd."""
        with v1.variable_scope(scope):
            in_units = int(x.shape[-1])
            w = self.weights('weights', [in_units, units], in_units)
            b = self._uniform('biases', [units], -0.1, 0.1)
            return tf.nn.bias_add(tf.matmul(x, w, name='MatMul'), b,
                                  name='BiasAdd')

    def _finish(self, y, activation):
        """BatchNorm, then the activation (None: linear)."""
        y = self.batch_norm(y)
        if activation == 'relu':
            return tf.nn.relu(y, name='Relu')
        if activation == 'relu6':
            return tf.nn.relu6(y, name='Relu6')
        if activation is not None:
            raise ValueError('unknown activation %r' % activation)
        return y

    def batch_norm(self, y: tf.Tensor) -> tf.Tensor:
        """contrib's fused ``BatchNorm`` scope, with its moving averages."""
        channels = int(y.shape[-1])
        with v1.variable_scope('BatchNorm'):
            gamma = self._uniform('gamma', [channels], 0.5, 1.5)
            beta = self._uniform('beta', [channels], -0.2, 0.2)
            moving_mean = self._uniform('moving_mean', [channels], -0.2, 0.2,
                                        trainable=False)
            moving_variance = self._uniform('moving_variance', [channels],
                                            0.5, 1.5, trainable=False)
            if not self.training:
                out, _, _ = v1.nn.fused_batch_norm(
                    y, gamma, beta, mean=moving_mean,
                    variance=moving_variance, epsilon=BN_EPSILON,
                    is_training=False)
                return out
            out, mean, variance = v1.nn.fused_batch_norm(
                y, gamma, beta, epsilon=BN_EPSILON, is_training=True)
            for moving, value, name in ((moving_mean, mean, 'AssignMovingAvg'),
                                        (moving_variance, variance,
                                         'AssignMovingAvg_1')):
                update = tf.__internal__.train.assign_moving_average(
                    moving, value, 1.0 - BN_MOMENTUM, zero_debias=False,
                    name=name)
                v1.add_to_collection(v1.GraphKeys.UPDATE_OPS, update.op)
            return out


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A model of the benchmark.

    Attributes:
        name: key in the results.
        kind: 'resnet', 'mobilenet_v2' or 'model_a'.
        image_size: input height and width.
        batch: batch size of the input placeholder.
        blocks: ResNet bottleneck units per stage, or MobileNetV2 repeats per
            stage (None: the standard 1, 2, 3, 4, 3, 3, 1).
        width: channel multiplier.
        channels: input channels.
        classes: logits.
    """
    name: str
    kind: str
    image_size: int
    batch: int = 1
    blocks: Optional[Tuple[int, ...]] = None
    width: float = 1.0
    channels: int = 3
    classes: int = 1000


@dataclasses.dataclass
class BuiltModel:
    """Handles into a built model graph."""
    graph: tf.Graph
    inputs: tf.Tensor
    labels: Optional[tf.Tensor]
    logits: tf.Tensor
    loss: Optional[tf.Tensor]


def _resnet(b: _LayerBuilder, x: tf.Tensor, spec: ModelSpec) -> tf.Tensor:
    """ResNet v1 with bottleneck units (1x1 - 3x3 - 1x1, projections)."""
    with v1.variable_scope('resnet_v1'):
        y = b.conv(x, _scaled(64, spec.width), 7, 2, 'conv1')
        y = tf.nn.max_pool2d(y, 3, 2, 'SAME', name='pool1')
        for stage, units in enumerate(spec.blocks):
            depth = _scaled(64 * 2 ** stage, spec.width)
            with v1.variable_scope('block%d' % (stage + 1)):
                for unit in range(units):
                    stride = 2 if unit == 0 and stage > 0 else 1
                    with v1.variable_scope('unit_%d/bottleneck_v1' %
                                           (unit + 1)):
                        y = _bottleneck(b, y, depth, stride)
        y = tf.reduce_mean(y, [1, 2], name='pool5')
        return b.fully_connected(y, spec.classes, 'logits')


def _bottleneck(b, x, depth, stride):
    """conv1 (1x1) -> conv2 (3x3, stride) -> conv3 (1x1, 4 * depth), plus
    the shortcut (projected when the shape changes), then ReLU."""
    if stride != 1 or int(x.shape[-1]) != 4 * depth:
        shortcut = b.conv(x, 4 * depth, 1, stride, 'shortcut', activation=None)
    else:
        shortcut = x
    y = b.conv(x, depth, 1, 1, 'conv1')
    y = b.conv(y, depth, 3, stride, 'conv2')
    y = b.conv(y, 4 * depth, 1, 1, 'conv3', activation=None)
    return tf.nn.relu(tf.add(shortcut, y, name='add'), name='Relu')


# (expansion, output channels, repeats, first stride) of MobileNetV2.
_MOBILENET_V2_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2),
                        (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                        (6, 320, 1, 1))


def _mobilenet_v2(b: _LayerBuilder, x: tf.Tensor,
                  spec: ModelSpec) -> tf.Tensor:
    """MobileNetV2: expand 1x1, depthwise 3x3, linear project 1x1."""
    def width(channels):
        return max(8, int(round(channels * spec.width / 8.0)) * 8)

    repeats = spec.blocks or tuple(s[2] for s in _MOBILENET_V2_STAGES)
    with v1.variable_scope('MobilenetV2'):
        y = b.conv(x, width(32), 3, 2, 'Conv', activation='relu6')
        index = 0
        for (expansion, channels, _, stride), count in zip(
                _MOBILENET_V2_STAGES, repeats):
            for i in range(count):
                scope = ('expanded_conv_%d' % index if index
                         else 'expanded_conv')
                y = _inverted_residual(b, y, expansion, width(channels),
                                       stride if i == 0 else 1, scope)
                index += 1
        # The last conv keeps 1280 channels for widths below 1 (the paper).
        y = b.conv(y, max(1280, width(1280)), 1, 1, 'Conv_1',
                   activation='relu6')
        y = tf.reduce_mean(y, [1, 2], name='AvgPool')
        return b.fully_connected(y, spec.classes, 'Logits')


def _inverted_residual(b, x, expansion, channels, stride, scope):
    with v1.variable_scope(scope):
        in_channels = int(x.shape[-1])
        y = x
        if expansion != 1:
            y = b.conv(y, in_channels * expansion, 1, 1, 'expand',
                       activation='relu6')
        y = b.depthwise(y, stride, 'depthwise')
        y = b.conv(y, channels, 1, 1, 'project', activation=None)
        if stride == 1 and in_channels == channels:
            y = tf.add(x, y, name='add')
        return y


def _model_a(b: _LayerBuilder, x: tf.Tensor, spec: ModelSpec) -> tf.Tensor:
    """Conv2D(16, 3) -> BN -> ReLU -> depthwise(3) -> BN -> ReLU ->
    Conv2D(32, 1) -> BN -> ReLU6 -> global average pool -> Dense."""
    with v1.variable_scope('model_a'):
        y = b.conv(x, 16, 3, 1, 'conv1', activation='relu')
        y = b.depthwise(y, 1, 'depthwise', activation='relu')
        y = b.conv(y, 32, 1, 1, 'conv2', activation='relu6')
        y = tf.reduce_mean(y, [1, 2], name='pool')
        return b.fully_connected(y, spec.classes, 'logits')


def _scaled(channels: int, width: float) -> int:
    return max(8, int(channels * width))


_BODIES: Dict[str, Callable] = {
    'resnet': _resnet,
    'mobilenet_v2': _mobilenet_v2,
    'model_a': _model_a,
}


def build_model(spec: ModelSpec, training: bool, seed: int,
                graph: Optional[tf.Graph] = None) -> BuiltModel:
    """Builds `spec` in a new graph: inputs, logits and (training) loss.

    Args:
        spec: the model.
        training: batch norms in training mode, plus labels and a softmax
            cross-entropy loss; otherwise inference mode, logits only.
        seed: seed of the initial values.
        graph: the graph to build in; a new one if None.

    Returns:
        The BuiltModel.
    """
    graph = graph or tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [spec.batch, spec.image_size,
                                        spec.image_size, spec.channels],
                           name='input')
        logits = _BODIES[spec.kind](_LayerBuilder(training, seed), x, spec)
        labels = loss = None
        if training:
            labels = v1.placeholder(tf.int32, [spec.batch], name='labels')
            loss = v1.losses.sparse_softmax_cross_entropy(labels, logits)
    return BuiltModel(graph, x, labels, logits, loss)


def count_layer_ops(graph: tf.Graph) -> int:
    """Conv2D / DepthwiseConv2dNative / MatMul ops of `graph`."""
    return sum(op.type in LAYER_OP_TYPES for op in graph.get_operations())


# ---------------------------------------------------------------------------
# Rewrite benchmark.


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


_REWRITES = {
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
    training, rewrite = _REWRITES[mode]
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
        The measurements (keys listed in `run`).
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


def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
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
    for training, rewrite in _REWRITES.values():
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
        for mode in _REWRITES:
            log('  %s: %s rewrite...' % (spec.name, mode))
            graphs[spec.name][mode] = measure_rewrite(
                spec, mode, seed, repeats.get(spec.name, 1), trace_memory,
                separate_memory_pass)
    low, high = graphs[shallow], graphs[deep]
    scaling = {
        'shallow': shallow,
        'deep': deep,
        'layers': _ratio(high['training']['layers'],
                         low['training']['layers']),
    }
    for mode in _REWRITES:
        for key in ('build_s', 'build_cpu_s', 'rewrite_s', 'rewrite_cpu_s',
                    'ops_added'):
            scaling['%s_%s' % (mode, key)] = _ratio(high[mode][key],
                                                    low[mode][key])
    return {'graphs': graphs, 'scaling': scaling}


# ---------------------------------------------------------------------------
# Step benchmark.


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


# ---------------------------------------------------------------------------
# Profile.


def _library_function(key) -> bool:
    filename = key[0].replace(os.sep, '/')
    return '/tf1_quantize/' in filename


def _function_label(key) -> str:
    filename, line, name = key
    return '%s:%d(%s)' % (os.path.basename(filename), line, name)


def _profile_once(spec: ModelSpec, seed: int) -> Tuple[dict, int]:
    """Profiles one create_training_graph, in process CPU time.

    Returns:
        (the pstats table, the number of layers of the float graph).

    `tf.Graph.get_operations` is a C++ method that cProfile does not see;
    it is wrapped in a Python function for the duration so that its calls
    and time show up.
    """
    model = build_model(spec, training=True, seed=seed)
    layers = count_layer_ops(model.graph)
    own = tf.Graph.__dict__.get('get_operations')  # None: inherited.
    original = tf.Graph.get_operations

    def get_operations(graph):
        return original(graph)

    profiler = cProfile.Profile(time.process_time)
    tf.Graph.get_operations = get_operations
    try:
        profiler.enable()
        tf1_quantize.create_training_graph(input_graph=model.graph)
        profiler.disable()
    finally:
        if own is None:
            del tf.Graph.get_operations
        else:
            tf.Graph.get_operations = own
    return pstats.Stats(profiler).stats, layers  # type: ignore


# TensorFlow functions the rewrite calls whose counts show whole-graph scans
# (get_operations), graph edits (_update_input), op creation, and the
# variable-scope bookkeeping that TF1 does on every variable_scope entry.
_WATCHED_TF_FUNCTIONS = ('get_operations', '_update_input',
                         '_create_op_internal', 'close_variable_subscopes',
                         'assign_moving_average', 'get_variable')


def run_profile(shallow: ModelSpec, deep: Optional[ModelSpec], seed: int,
                top: int = 15) -> dict:
    """cProfile of create_training_graph; the top library functions.

    For each of the `top` tf1_quantize functions with the largest cumulative
    time on `shallow`, also reports its call count and cumulative time on
    `deep` and the growth of both, to compare with the growth of the layer
    count. `superlinear` lists every function (library or TensorFlow) with at
    least 1% of the total own time whose own time grows more than 1.25 times
    faster than the layer count.
    """
    layers = {}
    stats = {}
    for spec in (shallow, deep) if deep else (shallow,):
        stats[spec.name], layers[spec.name] = _profile_once(spec, seed)
    low = stats[shallow.name]
    high = stats[deep.name] if deep else {}
    growth = (_ratio(layers[deep.name], layers[shallow.name])
              if deep else None)
    total = max((v[3] for v in low.values()), default=0.0)
    library = sorted((k for k in low if _library_function(k)),
                     key=lambda k: low[k][3], reverse=True)[:top]
    watched = []
    for name in _WATCHED_TF_FUNCTIONS:
        keys = [k for k in low if k[2] == name and not _library_function(k)]
        if keys:
            watched.append(max(keys, key=lambda k: low[k][3]))

    def row(key):
        calls, cumulative = low[key][1], low[key][3]
        entry = {'function': _function_label(key), 'calls': calls,
                 'tottime_s': low[key][2], 'cumtime_s': cumulative}
        if key in high:
            entry['deep_calls'] = high[key][1]
            entry['deep_tottime_s'] = high[key][2]
            entry['deep_cumtime_s'] = high[key][3]
            entry['calls_growth'] = _ratio(high[key][1], calls)
            entry['tottime_growth'] = _ratio(high[key][2], low[key][2])
            entry['cumtime_growth'] = _ratio(high[key][3], cumulative)
        return entry

    superlinear = []
    if growth:
        for key in sorted(low, key=lambda k: low[k][2], reverse=True):
            own = low[key][2]
            if own < 0.01 * total or key not in high:
                continue
            if high[key][2] / own > 1.25 * growth:
                superlinear.append(row(key))
    return {
        'graph': shallow.name,
        'deep_graph': deep.name if deep else None,
        'clock': 'process CPU time',
        'layers': layers[shallow.name],
        'layers_growth': growth,
        'total_s': total,
        'deep_total_s': max((v[3] for v in high.values()), default=None),
        'top_library_functions': [row(k) for k in library],
        'tensorflow_calls': [row(k) for k in watched],
        'superlinear': superlinear,
    }


# ---------------------------------------------------------------------------
# Configurations, report.


@dataclasses.dataclass(frozen=True)
class Config:
    """What one run measures."""
    rewrite_models: Tuple[ModelSpec, ...]
    shallow: str
    deep: str
    rewrite_repeats: Dict[str, int]
    step_models: Tuple[ModelSpec, ...]
    steps: Dict[str, Tuple[int, int]]
    # Quick runs trace memory in the timed run and skip the warm-up.
    separate_memory_pass: bool = True
    warm_up: bool = True


def default_config() -> Config:
    """ResNet-50/101/152 and MobileNetV2 at 224; full-size step models."""
    return Config(
        rewrite_models=(
            ModelSpec('resnet50', 'resnet', 224, blocks=(3, 4, 6, 3)),
            ModelSpec('resnet101', 'resnet', 224, blocks=(3, 4, 23, 3)),
            ModelSpec('resnet152', 'resnet', 224, blocks=(3, 8, 36, 3)),
            ModelSpec('mobilenet_v2', 'mobilenet_v2', 224),
        ),
        shallow='resnet50', deep='resnet152',
        rewrite_repeats={'resnet50': 3, 'resnet101': 1, 'resnet152': 2,
                         'mobilenet_v2': 3},
        step_models=(
            ModelSpec('model_a', 'model_a', 8, batch=64, channels=1,
                      classes=10),
            ModelSpec('mobilenet_v2', 'mobilenet_v2', 96, batch=8,
                      classes=10),
        ),
        steps={'model_a': (300, 30), 'mobilenet_v2': (30, 5)})


def quick_config() -> Config:
    """Two tiny ResNets and a tiny MobileNetV2; a few steps (smoke test)."""
    tiny_mobilenet = dict(kind='mobilenet_v2', image_size=16, blocks=(1, 2),
                          width=0.35, classes=10)
    return Config(
        rewrite_models=(
            ModelSpec('resnet_s', 'resnet', 16, blocks=(1, 1), width=0.125,
                      classes=10),
            ModelSpec('resnet_m', 'resnet', 16, blocks=(2, 2), width=0.125,
                      classes=10),
            ModelSpec('mobilenet_v2', **tiny_mobilenet),
        ),
        shallow='resnet_s', deep='resnet_m',
        rewrite_repeats={},
        step_models=(
            ModelSpec('model_a', 'model_a', 8, batch=64, channels=1,
                      classes=10),
            ModelSpec('mobilenet_v2', batch=2, **tiny_mobilenet),
        ),
        steps={'model_a': (5, 2), 'mobilenet_v2': (3, 1)},
        separate_memory_pass=False, warm_up=False)


def evaluate_targets(results: dict) -> List[dict]:
    """The issue's targets against the measured values (not enforced)."""
    targets = []

    def add(name, value, limit):
        targets.append({'name': name, 'value': value, 'limit': limit,
                        'met': None if value is None else value <= limit})

    rewrite = results.get('rewrite')
    if rewrite:
        scaling = rewrite['scaling']
        deep, shallow = scaling['deep'], scaling['shallow']
        for mode in _REWRITES:
            add('%s %s rewrite cost/op over build cost/op' % (deep, mode),
                rewrite['graphs'][deep][mode]['per_op_cost_ratio'],
                TARGET_PER_OP_COST_RATIO)
            add('%s / %s %s rewrite time' % (deep, shallow, mode),
                scaling['%s_rewrite_s' % mode],
                round(TARGET_REWRITE_SCALING_PER_LAYER * scaling['layers'], 2))
    step = results.get('step')
    if step:
        if 'model_a' in step:
            add('model_a QAT step / float step',
                step['model_a']['qat_step_ratio'], TARGET_QAT_STEP_RATIO)
            add('model_a one-conv QAT step / float step',
                step['model_a']['qat_one_conv_step_ratio'],
                TARGET_ONE_CONV_STEP_RATIO)
        for name, entry in step.items():
            add('%s eval inference / float inference' % name,
                entry['eval_inference_ratio'], TARGET_EVAL_INFERENCE_RATIO)
    return targets


def _fmt(value, spec='%.2f') -> str:
    return '-' if value is None else spec % value


def _both(entry: dict, key: str, spec: str = '%.2f') -> str:
    """'wall (cpu)' of `key % ''` and `key % '_cpu'`."""
    return '%s (%s)' % (_fmt(entry.get(key % ''), spec),
                        _fmt(entry.get(key % '_cpu'), spec))


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(c)) for c in column)
              for column in zip(headers, *rows)]

    def line(cells):
        return '  '.join(str(c).rjust(w) if i else str(c).ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths)))

    return '\n'.join([line(headers), line(['-' * w for w in widths])] +
                     [line(r) for r in rows])


def format_report(results: dict) -> str:
    """The human-readable tables of `results`."""
    parts = ['tf1_quantize benchmark: TensorFlow %s, Python %s, %s CPUs%s' % (
        results['meta']['tensorflow'], results['meta']['python'],
        results['meta']['cpu_count'],
        ', --quick' if results['meta']['quick'] else '')]
    rewrite = results.get('rewrite')
    if rewrite:
        rows = []
        for name, modes in rewrite['graphs'].items():
            for mode, m in modes.items():
                rows.append([
                    name if mode == 'training' else '', mode, m['layers'],
                    m['float_ops'], m['ops_added'],
                    _fmt(m['ops_added_per_layer'], '%.1f'),
                    m['fake_quant_ops'], _both(m, 'build%s_s', '%.2f'),
                    _both(m, 'rewrite%s_s', '%.2f'),
                    _both(m, 'build_us_per_op%s', '%.0f'),
                    _both(m, 'rewrite_us_per_op%s', '%.0f'),
                    _both(m, 'per_op_cost_ratio%s', '%.2f'),
                    _fmt(m['tracemalloc_peak_mib'], '%.1f'),
                    _fmt(m['rss_delta_mib'], '%.1f')])
        parts.append(
            '\nGraph rewrites (best of `repeats` runs; "wall (cpu)": wall '
            'and process CPU time)\n' + _table(
                ['graph', 'rewrite', 'layers', 'float ops', 'ops added',
                 'added/layer', 'FakeQuants', 'build s', 'rewrite s',
                 'build us/op', 'rewrite us/op', 'per-op ratio',
                 'tracemalloc MiB', 'RSS delta MiB'], rows))
        s = rewrite['scaling']
        parts.append('\nScaling %s / %s (layers x%s):' % (
            s['deep'], s['shallow'], _fmt(s['layers'])))
        for mode in _REWRITES:
            parts.append(
                '  %-8s build x%s, rewrite x%s, ops added x%s' % (
                    mode, _both(s, mode + '_build%s_s'),
                    _both(s, mode + '_rewrite%s_s'),
                    _fmt(s[mode + '_ops_added'])))
    step = results.get('step')
    if step:
        rows = [[name, '%dx%d b%d' % (m['image_size'], m['image_size'],
                                      m['batch']), m['steps'],
                 _fmt(m['float_step_ms']), _fmt(m['qat_step_ms']),
                 _fmt(m['qat_step_ratio']), _fmt(m['qat_one_conv_step_ms']),
                 _fmt(m['qat_one_conv_step_ratio']),
                 _fmt(m['float_inference_ms']),
                 _fmt(m['eval_inference_ms']),
                 _fmt(m['eval_inference_ratio'])]
                for name, m in step.items()]
        parts.append('\nStep cost (median ms, interleaved runs)\n' + _table(
            ['model', 'input', 'steps', 'float step', 'QAT step', 'ratio',
             '1-conv QAT', 'ratio', 'float infer', 'FQ infer', 'ratio'],
            rows))
    profile = results.get('profile')
    if profile:
        def rows(entries):
            return [[e['function'], e['calls'], _fmt(e['cumtime_s'], '%.3f'),
                     _fmt(e['tottime_s'], '%.3f'),
                     _fmt(e.get('calls_growth')),
                     _fmt(e.get('tottime_growth')),
                     _fmt(e.get('cumtime_growth'))] for e in entries]
        headers = ['function', 'calls', 'cumtime s', 'tottime s',
                   'calls growth', 'tottime growth', 'cumtime growth']
        parts.append(
            '\ncProfile of create_training_graph on %s (%s; total %.2f s, '
            '%s s on %s; growth = %s / %s, layers x%s)\n' % (
                profile['graph'], profile['clock'], profile['total_s'],
                _fmt(profile['deep_total_s']), profile['deep_graph'],
                profile['deep_graph'], profile['graph'],
                _fmt(profile['layers_growth'])) +
            _table(headers, rows(profile['top_library_functions'])) +
            '\n\nTensorFlow calls\n' +
            _table(headers, rows(profile['tensorflow_calls'])))
        if profile['superlinear']:
            parts.append('\nOwn time growing > 1.25x faster than layers\n' +
                         _table(headers, rows(profile['superlinear'])))
    if results.get('targets'):
        rows = [[t['name'], _fmt(t['value']), '<= %.1f' % t['limit'],
                 {True: 'met', False: 'MISSED', None: '-'}[t['met']]]
                for t in results['targets']]
        parts.append('\nTargets (reported, not enforced)\n' + _table(
            ['target', 'value', 'limit', ''], rows))
    return '\n'.join(parts)


def library_fingerprint() -> str:
    """SHA-256 of the tf1_quantize sources measured, to compare runs."""
    digest = hashlib.sha256()
    package = os.path.dirname(os.path.abspath(tf1_quantize.__file__))
    for path in sorted(glob.glob(os.path.join(package, '*.py'))):
        digest.update(os.path.basename(path).encode())
        with open(path, 'rb') as f:
            digest.update(f.read())
    return digest.hexdigest()[:16]


def run(quick: bool = False, only: Optional[str] = None, seed: int = 0,
        profile: bool = False, trace_memory: bool = True,
        log: Callable[[str], None] = print) -> dict:
    """Runs the benchmark and returns the results (the JSON document).

    Args:
        quick: the small configuration (`quick_config`).
        only: 'rewrite', 'step' or 'profile' to run one part; None runs
            rewrite and step.
        seed: seed of weights and data.
        profile: add the cProfile report of create_training_graph.
        trace_memory: measure the tracemalloc peak of each rewrite.
        log: progress messages.

    Returns:
        The JSON document::

            meta: tensorflow, python, platform, cpu_count, quick, seed,
                only, time, library_sha256 (of the tf1_quantize sources),
                total_s
            rewrite (unless only='step'):
                graphs: {graph name: {'training' | 'eval': {
                    layers, float_ops, ops_added, ops_added_per_layer,
                    fake_quant_ops, repeats, build_s, build_cpu_s,
                    rewrite_s, rewrite_cpu_s, tracemalloc_peak_mib,
                    rss_delta_mib, build_us_per_op[_cpu],
                    rewrite_us_per_op[_cpu], per_op_cost_ratio[_cpu]}}}
                scaling: shallow, deep, layers (deep / shallow ratio) and
                    {training,eval}_{build_s,build_cpu_s,rewrite_s,
                    rewrite_cpu_s,ops_added} ratios
            step (unless only='rewrite'): {model name: {
                float_step_ms, qat_step_ms, qat_step_ratio,
                qat_one_conv_step_ms, qat_one_conv_step_ratio,
                float_inference_ms, eval_inference_ms,
                eval_inference_ratio, layers, batch, image_size, steps,
                warmup, optimizer, model}}
            profile (with `profile`): see `run_profile`
            targets: [{name, value, limit, met}]

        Rewrite and build times are the best of `repeats` runs, step and
        inference times medians; `_cpu` ones are process CPU time, the
        others wall time.
    """
    config = quick_config() if quick else default_config()
    results = {'meta': {
        'tensorflow': tf.__version__,
        'python': platform.python_version(),
        'platform': platform.platform(),
        'cpu_count': os.cpu_count(),
        'quick': quick,
        'seed': seed,
        'only': only,
        'time': time.strftime('%Y-%m-%dT%H:%M:%S%z'),
        'library_sha256': library_fingerprint(),
    }}
    start = time.perf_counter()
    if only in (None, 'rewrite'):
        log('Rewrite benchmark:')
        results['rewrite'] = run_rewrite_benchmark(
            config.rewrite_models, config.shallow, config.deep, seed,
            config.rewrite_repeats, trace_memory,
            config.separate_memory_pass, config.warm_up, log)
    if only in (None, 'step'):
        log('Step benchmark:')
        results['step'] = run_step_benchmark(config.step_models, seed,
                                             config.steps, log)
    if profile or only == 'profile':
        log('Profile:')
        by_name = {s.name: s for s in config.rewrite_models}
        results['profile'] = run_profile(by_name[config.shallow],
                                         by_name[config.deep], seed)
    results['targets'] = evaluate_targets(results)
    results['meta']['total_s'] = time.perf_counter() - start
    return results


def _log(message: str) -> None:
    """Progress goes to stderr, the report to stdout."""
    print(message, file=sys.stderr, flush=True)


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """Command line entry point; returns the results."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--quick', action='store_true',
                        help='small graphs and few steps (smoke test)')
    parser.add_argument('--only', choices=('rewrite', 'step', 'profile'),
                        help='run only one part')
    parser.add_argument('--json', metavar='PATH',
                        help='write the results as JSON to PATH')
    parser.add_argument('--seed', type=int, default=0,
                        help='seed of weights and data (default 0)')
    parser.add_argument('--profile', action='store_true',
                        help='add a cProfile of create_training_graph')
    parser.add_argument('--no-tracemalloc', dest='trace_memory',
                        action='store_false',
                        help='skip the tracemalloc pass of each rewrite')
    args = parser.parse_args(argv)
    results = run(quick=args.quick, only=args.only, seed=args.seed,
                  profile=args.profile, trace_memory=args.trace_memory,
                  log=_log)
    print(format_report(results))
    if args.json:
        path = export.write_atomic(
            args.json, json.dumps(results, indent=2, sort_keys=True).encode())
        _log('Wrote %s' % path)
    return results


if __name__ == '__main__':
    cli.enter_caller_directory()
    main()
