"""A cProfile of `create_training_graph`: the library functions with the
largest cumulative time, a few TensorFlow calls, and how each grows from the
shallow to the deep graph compared with the layer count."""

from __future__ import annotations

import cProfile
import os
import pstats
import time
from typing import Tuple

import tensorflow as tf

import tf1_quantize
from tools.benchmark.models import ModelSpec, build_model, count_layer_ops
from tools.benchmark.timing import ratio


class _ProfiledGraph(tf.Graph):
    """A graph whose `get_operations` is a Python method.

    `tf.Graph.get_operations` is a C++ method that cProfile lists under no
    usable name; this override makes its calls (the rewrite's whole-graph
    scans) and their time show up as `get_operations`.
    """

    def get_operations(self):
        return super().get_operations()


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
    """
    model = build_model(spec, training=True, seed=seed,
                        graph=_ProfiledGraph())
    layers = count_layer_ops(model.graph)
    profiler = cProfile.Profile(time.process_time)
    profiler.enable()
    tf1_quantize.create_training_graph(input_graph=model.graph)
    profiler.disable()
    return pstats.Stats(profiler).stats, layers  # type: ignore


# TensorFlow functions the rewrite calls whose counts show whole-graph scans
# (get_operations), graph edits (_update_input), op creation, and the
# variable-scope bookkeeping that TF1 does on every variable_scope entry.
_WATCHED_TF_FUNCTIONS = ('get_operations', '_update_input',
                         '_create_op_internal', 'close_variable_subscopes',
                         'assign_moving_average', 'get_variable')


def run_profile(shallow: ModelSpec, deep: ModelSpec, seed: int,
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
    for spec in (shallow, deep):
        stats[spec.name], layers[spec.name] = _profile_once(spec, seed)
    low, high = stats[shallow.name], stats[deep.name]
    growth = ratio(layers[deep.name], layers[shallow.name])
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
            entry['calls_growth'] = ratio(high[key][1], calls)
            entry['tottime_growth'] = ratio(high[key][2], low[key][2])
            entry['cumtime_growth'] = ratio(high[key][3], cumulative)
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
        'deep_graph': deep.name,
        'clock': 'process CPU time',
        'layers': layers[shallow.name],
        'layers_growth': growth,
        'total_s': total,
        'deep_total_s': max((v[3] for v in high.values()), default=None),
        'top_library_functions': [row(k) for k in library],
        'tensorflow_calls': [row(k) for k in watched],
        'superlinear': superlinear,
    }
