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

Usage, from the repository root::

    python -m tools.benchmark                 # full run (a few minutes)
    python -m tools.benchmark --quick         # small graphs, few steps
    python -m tools.benchmark --only rewrite --json out/bench.json
    python -m tools.benchmark --only rewrite --profile   # + cProfile report
    python -m tools.benchmark --only profile  # the cProfile report alone
    tools/bazel run //tools:benchmark -- --quick

``--profile`` adds a cProfile of ``create_training_graph`` on the ResNet-50
graph (the smaller ResNet in ``--quick``): the library functions with the
largest cumulative time, and how each grows on the deeper ResNet compared
with the layer count (a growth well above it points at a super-linear scan).

Modules: `models` (the graphs), `timing` (the measurements), `profiling`
(the cProfile report), `reports` (targets and tables), `runner` (the
configurations, the run and the command line).
"""

import os

# Before TensorFlow is first imported, by any module of the package.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
