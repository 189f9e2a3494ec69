"""The delay and freeze switches as selects against contrib's v1 conds.

Both forms must compute the same numbers, before and after `quant_delay`
and `freeze_bn_delay`: outputs, gradients, range and moving-average
updates, over several training steps.
"""

import numpy as np
import pytest
import tensorflow as tf

import builders as gb

import tf1_quantize

v1 = tf.compat.v1

QUANT_DELAY = 3
FREEZE_DELAY = 7
STEPS = 10
SPECS = [gb.LayerSpec(layer=layer, bn=bn, residual=residual)
         for layer in gb.LAYER_TYPES for bn in ('fused', 'unfused')
         for residual in (False, True)]
SPECS.append(gb.LayerSpec(layer='conv', bn='fused', activation=None))


def _run_steps(spec: gb.LayerSpec, switch_merge: bool):
    """Rewrites the layer (training, both delays) and runs it `STEPS` times,
    each time followed by its moving-average updates (a run of their own:
    in one run they would race with the reads).

    Returns:
        Per step: the head, the gradients and every global variable
        afterwards; and the set of op types of the rewritten graph.
    """
    built = gb.build_contrib_layer(spec)
    head = gb.add_head(built)
    with built.graph.as_default():
        with tf1_quantize.switch_merge_conds(switch_merge):
            tf1_quantize.experimental_create_training_graph(
                quant_delay=QUANT_DELAY, freeze_bn_delay=FREEZE_DELAY)
        grads = tf.gradients(tf.reduce_sum(head),
                             [built.inputs] + v1.trainable_variables())
        everything = sorted(v1.global_variables(), key=lambda v: v.op.name)
        types = {op.type for op in built.graph.get_operations()}
        steps = []
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            for feed in built.feeds(STEPS, seed=3):
                values = sess.run([head, grads], feed)
                sess.run(built.update_ops, feed)
                steps.append(values + [sess.run(everything)])
    return steps, types


@pytest.mark.parametrize('spec', SPECS, ids=[s.id for s in SPECS])
def test_selects_compute_what_contribs_conds_compute(spec):
    selects, select_types = _run_steps(spec, switch_merge=False)
    conds, cond_types = _run_steps(spec, switch_merge=True)
    assert not select_types & {'Switch', 'Merge'}
    assert {'Switch', 'Merge'} <= cond_types
    for step, (got, want) in enumerate(zip(selects, conds)):
        for a, b in zip(tf.nest.flatten(got), tf.nest.flatten(want)):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6,
                                       err_msg='step %d' % step)
