"""Small, deterministic TF1-style graphs shared by the tf1_quantize tests.

Every builder creates its graph in a fresh ``tf.Graph`` (or the one given),
initializes all variables from a seeded ``numpy.random.RandomState`` through
``constant_initializer`` (two builds with the same arguments hold identical
values) and returns a record naming the tensors and ops a test needs.

Modules (their public names are all importable from ``builders``):

* `builders.ops`: seeded `Values`, `variable`, `activation`, contrib's
  `batch_norm` (fused or unfused, training or inference, any momentum) and
  `assign_moving_average`; every builder below, and the random graphs of
  ``graph_generator``, make their layers and batch norms from these.
* `builders.contrib`: raw ``tf.compat.v1`` ops with the op names of
  ``tf.contrib.layers``: the parameterized layer block
  (`build_contrib_layer`, `build_placement_graph`), `conv_layer` under any
  scope and the multi-layer graphs made of it, `build_cond_bn_graph` (a
  batch norm whose training flag is a tensor).
* `builders.keras_layers`: the same block from Keras 2 layers
  (`build_keras_layer`) or ``tf.compat.v1.layers`` (`build_v1_layers`).
* `builders.reference`: numpy references (batch norm, FakeQuant, learned
  ranges, moving averages).

Importable as ``builders`` (tests/ on ``sys.path``, see conftest.py).
"""

from builders.contrib import (FC_SHAPE, IMAGE_SHAPE, LAYER_OP_NAMES,
                              LAYER_OP_TYPES, LAYER_TYPES,
                              PLACEMENT_ACTIVATIONS, RICH_PREFIXES,
                              RICH_WEIGHT_PREFIXES, STACK_IMAGE_SHAPE,
                              STACK_MOMENTUM, WEIGHT_NAMES, BuiltLayer,
                              CondGraph, ConvLayer, LayerSpec,
                              PlacementGraph, activation_graph, add_head,
                              build_cond_bn_graph, build_contrib_layer,
                              build_placement_graph, conv_layer,
                              input_placeholder, random_feeds, rich_graph,
                              simple_graph)
from builders.keras_layers import (V1_LAYERS_AVAILABLE,
                                   V1_LAYERS_SKIP_REASON, build_keras_layer,
                                   build_v1_layers)
from builders.ops import (EPSILON, MOMENTUM, TF_VERSION, BatchNorm, Values,
                          activation, assign_moving_average, batch_norm,
                          bn_variables, control_flow_v1, find_op_upstream,
                          keras_module, variable)
from builders.reference import (EMA_DECAY, EmaReference, batch_range,
                                numpy_activation, numpy_bn_block,
                                numpy_fake_quant)
