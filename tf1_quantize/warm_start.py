"""Warm-starting a quantization-aware training run from a float checkpoint.

A float checkpoint holds the model's variables but none of the rewrite's
(the quantization ranges, their moving-average state, `fake_quantization_
step`), so restoring "everything" fails, and Estimator's default
(`vars_to_warm_start='.*'`: trainable variables only) leaves the batch norms'
moving statistics at their initial values. The model's variables here are
every global variable except the rewrite's own, the global step (the QAT run
counts its own steps, which `quant_delay` may be measured in) and optimizer
state (slots such as `<var>/Momentum`, Adam's `beta1_power`), which the QAT
run's optimizer starts afresh.

    # Estimator (TF <= 2.15):
    tf.compat.v1.estimator.WarmStartSettings(
        float_checkpoint, vars_to_warm_start=warm_start.vars_to_warm_start())
    # Saver, tf_slim's assign_from_checkpoint_fn, init_from_checkpoint:
    tf.compat.v1.train.Saver(warm_start.model_variables()).restore(
        session, float_checkpoint)

Variables are told apart by name (Estimator matches names, before the graph
exists), so a model variable named like the rewrite's (`<...>_quant/min`) or
like an optimizer slot (`<var>/Adam`) is not warm-started.
"""

from typing import List, Optional

import tensorflow as tf

from tf1_quantize import step_counter

# The rewrite's variables: `<P>/min`, `<P>/max` and the moving-average state
# `<P>/<P>/min/biased` (and `local_step`, and for `max`), where the
# quantizer scope `P` ends in `_quant` or `_quant_<k>` (spec §10).
_REWRITE_VARIABLES = (r'(?:.*/)?[^/]*_quant(?:_\d+)?/'
                      r'(?:min|max|.*/(?:min|max)/(?:biased|local_step))')
# State of the tf.compat.v1 optimizers and moving averages: the slots
# `<var>/<Name>` and `<var>/<Name>_<k>`, and Adam's powers of beta.
_OPTIMIZER_STATE = (r'.*/(?:Adadelta|Adagrad|AdagradDA|Adam|Ftrl|Momentum|'
                    r'ProximalAdagrad|RMSProp|ExponentialMovingAverage)'
                    r'(?:_\d+)?|beta[12]_power(?:_\d+)?')
_EXCLUDED = '|'.join([_REWRITE_VARIABLES, _OPTIMIZER_STATE,
                      step_counter.STEP_VARIABLE_NAME,
                      tf.compat.v1.GraphKeys.GLOBAL_STEP])
# Matches (from the start, as `get_collection(scope=...)` does) the name of
# every variable but the excluded ones, with or without the `:0` suffix.
MODEL_VARIABLES_PATTERN = r'(?!(?:%s)(?::\d+)?$).+' % _EXCLUDED


def vars_to_warm_start() -> List[str]:
    """The `vars_to_warm_start` for warm-starting a QAT graph from a float
    checkpoint.

    Returns:
        A one-element list holding `MODEL_VARIABLES_PATTERN`: in list form,
        `WarmStartSettings` (and `tf.compat.v1.train.warm_start`) match each
        regex against every global variable, trainable or not.
    """
    return [MODEL_VARIABLES_PATTERN]


def model_variables(graph: Optional[tf.Graph] = None) -> List[tf.Variable]:
    """The variables of `graph` that a float checkpoint initializes.

    For `tf.compat.v1.train.Saver(var_list=...)`, tf_slim's
    `assign_from_checkpoint_fn(path, var_list)` and the like; initialize the
    other variables (e.g. with `global_variables_initializer`) first.

    Args:
        graph: the QAT graph (after the rewrite and the optimizer); the
            default graph if None.

    Returns:
        Its global variables whose names match `MODEL_VARIABLES_PATTERN`,
        in collection order.
    """
    graph = graph or tf.compat.v1.get_default_graph()
    return graph.get_collection(tf.compat.v1.GraphKeys.GLOBAL_VARIABLES,
                                scope=MODEL_VARIABLES_PATTERN)
