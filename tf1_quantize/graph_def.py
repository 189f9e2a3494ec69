"""The rewrites on serialized graphs: GraphDef and MetaGraphDef in, new out.

For pipelines that keep graphs on disk and have no Python model code. The
input protocol buffer is never modified: it is imported into a fresh graph,
rewritten there and exported again.
"""

from __future__ import annotations

import tensorflow as tf

from tf1_quantize import api

_REWRITES = {
    True: api.experimental_create_training_graph,
    False: api.experimental_create_eval_graph,
}


def rewrite_graph_def(graph_def: tf.compat.v1.GraphDef, is_training: bool,
                      **kwargs) -> tf.compat.v1.GraphDef:
    """Returns a rewritten copy of a GraphDef.

    Args:
        graph_def: the graph to rewrite (left untouched).
        is_training: training rewrite (as `experimental_create_training_graph`)
            or eval rewrite (as `experimental_create_eval_graph`).
        **kwargs: the keyword arguments of that function.

    Returns:
        The rewritten GraphDef. Variables created by the rewrite appear as
        nodes only: a GraphDef carries no collections (use
        `rewrite_meta_graph_def` to keep them).

    Raises:
        TypeError, ValueError: as the rewrite functions; ValueError also if
            `graph_def` cannot be imported.
    """
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(graph_def, name='')
    _REWRITES[is_training](graph, **kwargs)
    return graph.as_graph_def()


def rewrite_meta_graph_def(meta_graph_def: tf.compat.v1.MetaGraphDef,
                           is_training: bool,
                           **kwargs) -> tf.compat.v1.MetaGraphDef:
    """Returns a rewritten copy of a MetaGraphDef, collections included.

    Variables, update ops and every other collection survive the round trip;
    the variables the rewrite creates join GLOBAL_VARIABLES, so a `Saver`
    built from the result saves them.

    Args:
        meta_graph_def: the MetaGraph to rewrite (left untouched).
        is_training: training or eval rewrite (see `rewrite_graph_def`).
        **kwargs: the keyword arguments of that rewrite function.

    Returns:
        The rewritten MetaGraphDef.

    Raises:
        TypeError, ValueError: as the rewrite functions.
    """
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.train.import_meta_graph(meta_graph_def)
        _REWRITES[is_training](graph, **kwargs)
        return tf.compat.v1.train.export_meta_graph(graph=graph)
