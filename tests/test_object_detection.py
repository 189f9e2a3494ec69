"""The Object Detection API's graph rewriter (`tf1_quantize.object_detection`).

The OD API's messages are rebuilt here from the fields of its
`graph_rewriter.proto` and `pipeline.proto` (numbers and defaults), so the
text parser is checked against protobuf's own, without an OD API install.
"""

import types

import pytest
import tensorflow as tf
from google.protobuf import descriptor_pb2
from google.protobuf import descriptor_pool
from google.protobuf import message_factory
from google.protobuf import text_format

from tf1_quantize import api
from tf1_quantize import object_detection as od
import builders as gb

v1 = tf.compat.v1

BLOCK = '''
graph_rewriter {
  quantization {
    delay: 48000
    weight_bits: 8
    activation_bits: 8
    symmetric: true
  }
}
'''

# A pipeline.config as the OD API's TF1 samples write them (shortened).
PIPELINE = '''
model {
  ssd {
    num_classes: 90
    image_resizer { fixed_shape_resizer { height: 300 width: 300 } }
    feature_extractor { type: "ssd_mobilenet_v2" depth_multiplier: 1.0 }
  }
}
train_config: {
  batch_size: 24
  fine_tune_checkpoint: "PATH/model.ckpt"  # {braces} in comments and
  data_augmentation_options { random_horizontal_flip { } }
}
train_input_reader: {
  tf_record_input_reader { input_path: "train-?????-of-{00100}.record" }
  label_map_path: "mscoco_label_map.pbtxt"
}
graph_rewriter {
  quantization {
    delay: 0x30
    activation_bits: 7,
  }
}
eval_config: { num_examples: 8000 metrics_set: ["coco_detection_metrics"] }
'''


def _od_messages():
    """(Pipeline, GraphRewriter) classes with the OD API's field numbers."""
    proto = descriptor_pb2.FileDescriptorProto(
        name='od_graph_rewriter_test.proto', package='od_test',
        syntax='proto2')
    label = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
    kinds = descriptor_pb2.FieldDescriptorProto
    quantization = proto.message_type.add(name='Quantization')
    for number, (name, kind, default) in enumerate((
            ('delay', kinds.TYPE_INT32, '500000'),
            ('weight_bits', kinds.TYPE_INT32, '8'),
            ('activation_bits', kinds.TYPE_INT32, '8'),
            ('symmetric', kinds.TYPE_BOOL, 'false')), start=1):
        quantization.field.add(name=name, number=number, type=kind,
                               label=label, default_value=default)
    for message, (field, number, field_type) in (
            ('GraphRewriter', ('quantization', 1, 'Quantization')),
            ('Pipeline', ('graph_rewriter', 6, 'GraphRewriter'))):
        proto.message_type.add(name=message).field.add(
            name=field, number=number, type=kinds.TYPE_MESSAGE, label=label,
            type_name='.od_test.' + field_type)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return tuple(message_factory.GetMessageClass(
        pool.FindMessageTypeByName('od_test.' + name))
                 for name in ('Pipeline', 'GraphRewriter'))


PIPELINE_MESSAGE, GRAPH_REWRITER_MESSAGE = _od_messages()


def _protobuf_parse(text):
    """The graph_rewriter message protobuf reads from `text`."""
    pipeline = text_format.Parse(text, PIPELINE_MESSAGE(),
                                 allow_unknown_field=True)
    return pipeline.graph_rewriter


# ---------------------------------------------------------------- parsing


@pytest.mark.parametrize('text', [
    BLOCK,
    PIPELINE,
    'graph_rewriter { quantization { } }',
    'graph_rewriter: < quantization: < symmetric: 1 delay: 5 > >',
    'graph_rewriter { }',
], ids=['block', 'pipeline', 'defaults', 'angle-brackets', 'empty-block'])
def test_text_reads_as_protobuf_does(text):
    expected = _protobuf_parse(text)
    assert od.parse_graph_rewriter(text) == od.parse_graph_rewriter(expected)


def test_the_fields_and_the_od_api_defaults():
    assert od.parse_graph_rewriter(BLOCK) == od.QuantizationConfig(
        delay=48000, weight_bits=8, activation_bits=8, symmetric=True)
    assert od.parse_graph_rewriter(PIPELINE) == od.QuantizationConfig(
        delay=48, weight_bits=8, activation_bits=7, symmetric=False)
    # An unset message reads as the proto's defaults.
    assert od.parse_graph_rewriter(GRAPH_REWRITER_MESSAGE()) == (
        od.QuantizationConfig(delay=500000, weight_bits=8, activation_bits=8,
                              symmetric=False))
    # The block's body alone, and a dict.
    assert od.parse_graph_rewriter('quantization { delay: 7 }').delay == 7
    assert od.parse_graph_rewriter(
        {'quantization': {'delay': 10, 'symmetric': True}}) == (
            od.QuantizationConfig(delay=10, symmetric=True))
    # Duck-typed: anything with a `quantization` attribute.
    message = types.SimpleNamespace(quantization=types.SimpleNamespace(
        delay=3, weight_bits=4, activation_bits=8, symmetric=False))
    assert od.parse_graph_rewriter(message) == od.QuantizationConfig(
        delay=3, weight_bits=4)


@pytest.mark.parametrize('config,error', [
    ('graph_rewriter { quantization { delai: 3 } }',
     r"Unknown field 'delai' in quantization \(line 1\); known fields: "
     'delay, weight_bits'),
    ('graph_rewriter { pruning { } }', "Unknown field 'pruning' in "
     'graph_rewriter'),
    ('model { } train_config { }', "Unknown field 'model'.*pipeline.config "
     'holding one graph_rewriter block'),
    ('graph_rewriter { quantization { delay: 1 delay: 2 } }',
     "Field 'delay' given twice"),
    ('graph_rewriter { quantization { delay: "48000" } }',
     'delay .* must be an integer'),
    ('graph_rewriter {\n quantization {\n symmetric: yes } }',
     r'symmetric \(line 3\) must be true or false'),
    ('graph_rewriter { quantization { delay: 1 }', "Missing '}'"),
    ('graph_rewriter {}\ngraph_rewriter {}', 'More than one graph_rewriter '
     'block, at lines 1, 2'),
    ('graph_rewriter: 3', 'must be a block'),
    ('', 'No graph_rewriter block'),
    ({'quantization': {'delay': 1.5}}, 'delay must be an integer'),
    ({'quantization': {'bits': 8}}, "Unknown field 'bits'"),
    ({'quantization': 8}, 'must be a message'),
])
def test_bad_configs_are_refused_clearly(config, error):
    with pytest.raises(ValueError, match=error):
        od.build_graph_rewriter(config, is_training=True)


def test_other_kinds_are_refused():
    with pytest.raises(TypeError, match='got list'):
        od.build_graph_rewriter([BLOCK], is_training=True)


# -------------------------------------------------------------- rewriting


@pytest.mark.parametrize('is_training', [True, False],
                         ids=['training', 'eval'])
def test_the_rewrite_calls_take_the_config(monkeypatch, is_training):
    calls = []
    for name in ('experimental_create_training_graph',
                 'experimental_create_eval_graph'):
        monkeypatch.setattr(api, name, lambda graph, _name=name, **kwargs:
                            calls.append((_name, graph, kwargs)))
    rewrite = od.build_graph_rewriter(BLOCK, is_training)
    graph = tf.Graph()
    with graph.as_default():
        rewrite()
    other = tf.Graph()
    rewrite(other)
    bits = dict(weight_bits=8, activation_bits=8, symmetric=True)
    if is_training:
        expected = ('experimental_create_training_graph',
                    dict(quant_delay=48000, **bits))
    else:  # The OD API's eval rewrite has no delay.
        expected = ('experimental_create_eval_graph', bits)
    assert calls == [(expected[0], graph, expected[1]),
                     (expected[0], other, expected[1])]


def _fake_quant_names(graph):
    return sorted(op.name for op in graph.get_operations()
                  if op.type == 'FakeQuantWithMinMaxVars')


def test_training_and_eval_rewrites_of_a_model():
    graphs = {}
    for is_training in (True, False):
        graph = tf.Graph()
        with graph.as_default():
            x = gb.input_placeholder()
            gb.conv_layer(x, 'FeatureExtractor/Conv', 4, gb.Values(0),
                          batch_norm=True, bn_training=is_training,
                          activation='Relu6', resource=True)
            od.build_graph_rewriter(PIPELINE, is_training)()
        graphs[is_training] = graph
    expected = ['FeatureExtractor/Conv/act_quant/FakeQuantWithMinMaxVars',
                'FeatureExtractor/Conv/weights_quant/'
                'FakeQuantWithMinMaxVars']
    for graph in graphs.values():
        assert _fake_quant_names(graph) == expected
        act = graph.get_operation_by_name(expected[0])
        assert act.get_attr('num_bits') == 7  # activation_bits: 7
    # The training graph counts steps for the delay; eval has no delay.
    names = {is_training: {v.op.name for v in graph.get_collection(
        v1.GraphKeys.GLOBAL_VARIABLES)} for is_training, graph in
             graphs.items()}
    assert 'fake_quantization_step' in names[True]
    assert 'fake_quantization_step' not in names[False]
