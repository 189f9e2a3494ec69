"""The benchmark's configurations, the run and the command line."""

from __future__ import annotations

import argparse
import dataclasses
import glob
import hashlib
import json
import os
import platform
import sys
import time
from typing import Callable, Dict, Optional, Sequence, Tuple

import tensorflow as tf

import tf1_quantize
from tf1_quantize import export
from tools import benchmark
from tools.benchmark.models import ModelSpec
from tools.benchmark.profiling import run_profile
from tools.benchmark.reports import evaluate_targets, format_report
from tools.benchmark.timing import run_rewrite_benchmark, run_step_benchmark


# The step benchmark's model A, the same in both configurations.
_MODEL_A = ModelSpec('model_a', 'model_a', 8, batch=64, channels=1, classes=10)


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
            _MODEL_A,
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
            _MODEL_A,
            ModelSpec('mobilenet_v2', batch=2, **tiny_mobilenet),
        ),
        steps={'model_a': (5, 2), 'mobilenet_v2': (3, 1)},
        separate_memory_pass=False, warm_up=False)


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
    parser = argparse.ArgumentParser(
        description=benchmark.__doc__.splitlines()[0])
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
