"""Session settings for rewritten training graphs.

A QAT training graph holds several times the ops of the float one, and
Grappler's cost follows nodes times edges: on TF-slim ResNet-v1-50 its
passes take most of the first `session.run` of the train op. Two settings
remove that cost (numbers: README, "Performance"):

* group the update ops into one barrier before the optimizer,
  `tf.control_dependencies([tf.group(*update_ops)])`, rather than
  `tf.control_dependencies(update_ops)`, which gives every gradient op one
  control edge per update op;
* `recommended_config()`: Grappler's meta optimizer off.
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
        A copy of `config` with Grappler's meta optimizer disabled. On the
        CPU this measured no slower in the steady step; on accelerators,
        compare both, as Grappler's layout and fusion passes may matter
        there.
    """
    result = tf.compat.v1.ConfigProto()
    if config is not None:
        result.CopyFrom(config)
    result.graph_options.rewrite_options.disable_meta_optimizer = True
    return result
