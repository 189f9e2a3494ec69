"""The recommended session settings."""

import tensorflow as tf

from tf1_quantize import sessions


def test_recommended_config_turns_grappler_off_and_keeps_the_rest():
    base = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=3)
    config = sessions.recommended_config(base)
    assert config.graph_options.rewrite_options.disable_meta_optimizer
    assert config.intra_op_parallelism_threads == 3
    assert not base.graph_options.rewrite_options.disable_meta_optimizer
    assert sessions.recommended_config().graph_options.rewrite_options\
        .disable_meta_optimizer


def test_recommended_config_keeps_only_subexpression_elimination():
    options = sessions.recommended_config().graph_options.optimizer_options
    assert options.opt_level == tf.compat.v1.OptimizerOptions.L0
    assert options.do_common_subexpression_elimination
    assert not options.do_constant_folding
