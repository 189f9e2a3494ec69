"""Session settings for rewritten training graphs.

A QAT training graph holds several times the ops of the float one, and
Grappler's cost follows nodes times edges: on TF-slim ResNet-v1-50 its
passes take most of the first `session.run` of the train op. Two settings
remove that cost (numbers: README, "Performance"):

* group the update ops into one barrier before the optimizer,
  `tf.control_dependencies([tf.group(*update_ops)])`, rather than
  `tf.control_dependencies(update_ops)`, which gives every gradient op one
  control edge per update op;
* `recommended_config()`: Grappler's meta optimizer off, and of the
  classic graph optimizer only common subexpression elimination: its
  constant folding, run on every new executor, took 0.1 to 1.2 s of
  ResNet-50's first step, QAT and float alike.
"""

from typing import Optional

import tensorflow as tf


def recommended_config(
        config: Optional[tf.compat.v1.ConfigProto] = None
) -> tf.compat.v1.ConfigProto:
    """A session config for quantization-aware training graphs.

    Args:
        config: settings to start from (not modified); a default
            `ConfigProto` if None.

    Returns:
        A copy of `config` with Grappler's meta optimizer disabled and the
        graph optimizer at `L0` with common subexpression elimination on
        (contrib's fold steps were 15 to 30% slower without it) and
        constant folding off. On the CPU this measured no slower in the
        steady step; on accelerators, compare both, as Grappler's layout
        and fusion passes may matter there.
    """
    result = tf.compat.v1.ConfigProto()
    if config is not None:
        result.CopyFrom(config)
    result.graph_options.rewrite_options.disable_meta_optimizer = True
    optimizer = result.graph_options.optimizer_options
    optimizer.opt_level = tf.compat.v1.OptimizerOptions.L0
    optimizer.do_common_subexpression_elimination = True
    optimizer.do_constant_folding = False
    return result
