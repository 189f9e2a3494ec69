"""The rewrites on serialized graphs (GraphDef / MetaGraphDef)."""

import numpy as np
import pytest
import tensorflow as tf

import builders
from tf1_quantize import graph_def as graph_def_lib

v1 = tf.compat.v1


def _meta_graph(spec=builders.LayerSpec()):
    built = builders.build_contrib_layer(spec)
    with built.graph.as_default():
        return v1.train.export_meta_graph(), built


def test_meta_graph_rewrite_leaves_input_untouched_and_keeps_collections():
    meta, built = _meta_graph()
    before = meta.SerializeToString(deterministic=True)
    rewritten = graph_def_lib.rewrite_meta_graph_def(meta, is_training=True,
                                                     quant_delay=5)
    assert meta.SerializeToString(deterministic=True) == before
    graph = tf.Graph()
    with graph.as_default():
        v1.train.import_meta_graph(rewritten)
        names = {v.op.name for v in v1.global_variables()}
        assert len(v1.get_collection(v1.GraphKeys.UPDATE_OPS)) == 2
        assert {v.op.name for v in v1.trainable_variables()} == {
            v.op.name for v in built.graph.get_collection(
                v1.GraphKeys.TRAINABLE_VARIABLES)}
    assert {'fake_quantization_step', 'test/weights_quant/min',
            'test/act_quant/max'} <= names
    node_names = {n.name for n in rewritten.graph_def.node}
    assert 'test/add_fold' in node_names


def test_meta_graph_eval_rewrite_runs_from_a_saver_restore(tmp_path):
    meta, _ = _meta_graph(builders.LayerSpec(bn_training=False))
    rewritten = graph_def_lib.rewrite_meta_graph_def(meta, is_training=False)
    graph = tf.Graph()
    with graph.as_default():
        saver = v1.train.import_meta_graph(rewritten)
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            path = saver.save(sess, str(tmp_path / 'model'))
            saver.restore(sess, path)
            out = graph.get_tensor_by_name(
                'test/act_quant/FakeQuantWithMinMaxVars:0')
            x = graph.get_tensor_by_name('input:0')
            value = sess.run(out, {x: np.ones(x.shape.as_list())})
    # Eval ranges start at contrib's act_quant init [0, 6].
    assert value.min() >= 0.0 and value.max() <= 6.0


def test_graph_def_rewrite_returns_a_new_graph_def():
    meta, _ = _meta_graph()
    original = meta.graph_def
    before = original.SerializeToString(deterministic=True)
    rewritten = graph_def_lib.rewrite_graph_def(original, is_training=True)
    assert original.SerializeToString(deterministic=True) == before
    assert any(n.op == 'FakeQuantWithMinMaxVars' for n in rewritten.node)


def test_graph_def_rewrite_reports_bad_arguments():
    meta, _ = _meta_graph()
    with pytest.raises(ValueError, match='weight_bits'):
        graph_def_lib.rewrite_graph_def(meta.graph_def, is_training=True,
                                        weight_bits=1)
