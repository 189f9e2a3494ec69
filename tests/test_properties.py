"""Property tests: the rewrite on random small graphs (see graph_generator).

Five properties, each checked on 50 derandomized examples (deterministic in
CI; `tools/soak.py` runs the same checks on many more random examples):

1. A rewrite either succeeds (and the graph then trains and runs with finite
   numbers) or raises a documented error, leaving the graph untouched.
2. The training rewrite with quantization and the BN freeze both in the
   future computes the same outputs, gradients and moving-average updates as
   the original graph.
3. The 16-bit eval rewrite, with every range set to the range observed on the
   batch, stays within a derived quantization error bound of the original.
4. A second identical rewrite changes nothing.
5. A checkpoint of the training graph restores into the eval graph with no
   variable missing.

Each property is a plain `check_*` function (property_checks.py,
quantization_bound.py); the tests below and the soak tool (`PROPERTIES`)
call them with drawn examples. Structures the properties found are pinned
as fast examples in test_property_examples.py.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import graph_generator as gen
from property_checks import (check_checkpoint_restores_into_eval_graph,
                             check_rewrite_succeeds_or_refuses,
                             check_second_rewrite_is_noop,
                             check_training_graph_matches_original)
from quantization_bound import check_eval_graph_within_quantization_bound

SLOW = [HealthCheck.too_slow, HealthCheck.data_too_large,
        HealthCheck.filter_too_much]


# ---------------------------------------------------------------------------
# The properties, for the tests and tools/soak.py.


@dataclasses.dataclass(frozen=True)
class Property:
    """A property: its check and the strategies of its arguments."""
    name: str
    check: Callable
    strategies: dict


PROPERTIES = [
    Property('rewrite_succeeds_or_refuses', check_rewrite_succeeds_or_refuses,
             dict(desc=gen.graph_descriptions(hazards=True),
                  call=gen.rewrite_calls(), bn_training=st.booleans())),
    Property('training_graph_matches_original',
             check_training_graph_matches_original,
             dict(desc=gen.graph_descriptions(), one_conv_fold=st.booleans())),
    Property('eval_graph_within_quantization_bound',
             check_eval_graph_within_quantization_bound,
             dict(desc=gen.graph_descriptions())),
    Property('second_rewrite_is_noop', check_second_rewrite_is_noop,
             dict(desc=gen.graph_descriptions(), call=gen.rewrite_calls(),
                  bn_training=st.booleans())),
    Property('checkpoint_restores_into_eval_graph',
             check_checkpoint_restores_into_eval_graph,
             dict(desc=gen.graph_descriptions(),
                  calls=gen.training_eval_call_pairs())),
]
_BY_NAME = {p.name: p for p in PROPERTIES}


@settings(max_examples=50, deadline=None, derandomize=True,
          suppress_health_check=SLOW)
@given(**_BY_NAME['rewrite_succeeds_or_refuses'].strategies)
def test_rewrite_succeeds_or_refuses_without_mutation(desc, call,
                                                      bn_training):
    check_rewrite_succeeds_or_refuses(desc, call, bn_training)


@settings(max_examples=50, deadline=None, derandomize=True,
          suppress_health_check=SLOW)
@given(**_BY_NAME['training_graph_matches_original'].strategies)
def test_training_graph_matches_original_before_delays(desc, one_conv_fold):
    check_training_graph_matches_original(desc, one_conv_fold)


@settings(max_examples=50, deadline=None, derandomize=True,
          suppress_health_check=SLOW)
@given(**_BY_NAME['eval_graph_within_quantization_bound'].strategies)
def test_16bit_eval_graph_within_quantization_bound(desc):
    check_eval_graph_within_quantization_bound(desc)


@settings(max_examples=50, deadline=None, derandomize=True,
          suppress_health_check=SLOW)
@given(**_BY_NAME['second_rewrite_is_noop'].strategies)
def test_second_rewrite_changes_nothing(desc, call, bn_training):
    check_second_rewrite_is_noop(desc, call, bn_training)


@settings(max_examples=50, deadline=None, derandomize=True,
          suppress_health_check=SLOW)
@given(**_BY_NAME['checkpoint_restores_into_eval_graph'].strategies)
def test_training_checkpoint_restores_into_eval_graph(desc, calls):
    check_checkpoint_restores_into_eval_graph(desc, calls)
