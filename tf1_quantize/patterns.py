"""What a quantizable layer and a batch norm look like: declarative op-type
patterns (see `graph_matcher`) and the matchers built from them.

`records` turns their matches into the records a rewrite works on; nothing
here walks or changes the graph.
"""

from tf1_quantize.graph_matcher import GraphMatcher, OneofPattern
from tf1_quantize.graph_matcher import OpTypePattern as P

LAYER_TYPES = ('Conv2D', 'DepthwiseConv2dNative', 'MatMul')
FUSED_BN_TYPES = ('FusedBatchNorm', 'FusedBatchNormV2', 'FusedBatchNormV3')
ACTIVATION_TYPES = ('Relu', 'Relu6', 'Identity')
ADD = 'Add|AddV2'

# --- The weights a layer reads -------------------------------------------
_var = P('Variable|VariableV2')
_partition_identity = P('Identity', inputs=[_var])
# A partitioned variable (`partitioner=`): a ConcatV2 of its parts' reads.
_partition_read = OneofPattern([_partition_identity, P('ReadVariableOp')])
_partition_concat = P('ConcatV2', inputs=[_partition_read, 'Const'],
                      variadic=True)
_weight_identity = P(
    'Identity',
    name='weight_read',
    inputs=[OneofPattern([_partition_identity, _partition_concat, _var])])
_weight_resource = P('ReadVariableOp', name='weight_read')
_weight_concat = P('ConcatV2', name='weight_read',
                   inputs=[_partition_read, 'Const'], variadic=True)
WEIGHT_READ = OneofPattern(
    [_weight_identity, _weight_resource, _weight_concat])
_folded_weight = P('Mul', name='folded_weight')

# --- The layer op and what may directly follow it -------------------------
_layer = P('|'.join(LAYER_TYPES),
           name='layer',
           inputs=['*', OneofPattern([WEIGHT_READ, _folded_weight])])
_batch_to_space = P('BatchToSpaceND',
                    name='batch_to_space',
                    inputs=[_layer, '*', '*'])
_layer_output = OneofPattern([_batch_to_space, _layer])

# --- Batch norms after the layer -------------------------------------------
_pre_bias = P('BiasAdd', name='pre_bn_bias_add', inputs=[_layer_output, '*'])
_bn_input = OneofPattern([
    P('Identity', name='bn_input_identity', inputs=[_layer_output]), _pre_bias,
    _layer_output
])
_fused_bn = P('|'.join(FUSED_BN_TYPES),
              name='fused_bn',
              inputs=[
                  OneofPattern([
                      P('Reshape',
                        name='bn_input_reshape',
                        inputs=[_bn_input, '*']), _bn_input
                  ]), '*', '*', '*', '*'
              ])
_fused_bn_output = OneofPattern([
    P('Reshape', name='bn_output_reshape', inputs=[_fused_bn, '*']), _fused_bn
])
# tf.nn.batch_normalization: x * inv + (beta - mean * inv), where
# inv = rsqrt(var + eps) * gamma (or without gamma).
_rsqrt = P('Rsqrt',
           name='bn_rsqrt',
           inputs=[P(ADD, name='bn_var_eps', inputs=['*', '*'])])
_inv = OneofPattern(
    [P('Mul', name='bn_inv_scaled', inputs=[_rsqrt, '*']), _rsqrt])
_unfused_bn = P(ADD,
                name='unfused_bn',
                inputs=[
                    P('Mul', name='bn_scale_mul', inputs=[_bn_input, _inv]),
                    P('Sub',
                      name='bn_bias',
                      inputs=['*', P('Mul', inputs=['*', _inv])])
                ])
_batch_norm = OneofPattern([_fused_bn_output, _unfused_bn])

# --- Bias, folded forms, bypass and activation ----------------------------
_bias_add = P(ADD + '|BiasAdd',
              name='bias_add',
              inputs=[_layer_output, '*'],
              ordered_inputs=False)
# The training-mode fold (see folding.py) builds these with ordered inputs;
# matching them in order keeps an unfused batch norm from looking folded.
_post_conv_mul = P('Mul', inputs=['*', _layer_output])
_correction_add = P(ADD, inputs=[_post_conv_mul, '*'])
_folded_bias_add = P(ADD,
                     name='folded_bias_add',
                     inputs=[_correction_add, '*'])


def _one_conv_fold_patterns(folded_weights):
    """The one-convolution training fold (see folding.py): the folded weights
    `folded_weights`, divided by the fold's scale again, feed a layer whose
    output a training-mode fused batch norm normalizes; with a freeze, a v1
    cond (Switch/Merge, batch-statistics branch first) selects between that
    and the moving-statistics form.

    Returns:
        (the batch norm pattern, the pattern of the fold's last op).
    """
    def maybe_switched(pattern):  # Inside the cond, inputs pass a Switch.
        return OneofPattern([P('Switch', inputs=[pattern, '*']), pattern])

    scale = P('StopGradient|Identity')
    unscaled_weights = P(
        'RealDiv',
        name='unscaled_weights',
        inputs=[
            maybe_switched(folded_weights),
            maybe_switched(
                OneofPattern([P('Reshape', inputs=[scale, '*']), scale]))
        ])
    layer = P('|'.join(LAYER_TYPES),
              name='layer',
              inputs=['*', unscaled_weights])
    layer_output = OneofPattern([
        P('BatchToSpaceND', name='batch_to_space', inputs=[layer, '*', '*']),
        layer
    ])
    batch_norm = P('FusedBatchNormV3',
                   name='one_conv_bn',
                   inputs=[
                       OneofPattern(
                           [P('Reshape', inputs=[layer_output, '*']),
                            layer_output]),
                       '*', '*', '*', '*'
                   ])
    batch_output = OneofPattern([
        P('Reshape', name='one_conv_reshape', inputs=[batch_norm, '*']),
        batch_norm
    ])
    return batch_norm, OneofPattern([
        P('Merge', name='one_conv_merge', inputs=[batch_output, '*']),
        batch_output
    ])


_, _one_conv_fold = _one_conv_fold_patterns(_folded_weight)
_pre_activation = OneofPattern(
    [_bias_add, _folded_bias_add, _one_conv_fold, _batch_norm])
_bn_identity = P('Identity', inputs=[_pre_activation])
_bypass = P(ADD,
            name='bypass',
            inputs=[OneofPattern([_pre_activation, _bn_identity]), '*'],
            ordered_inputs=False)
_activation = P(
    '|'.join(ACTIVATION_TYPES),
    name='activation',
    inputs=[
        OneofPattern([_pre_activation, _bn_identity, _bypass, _layer_output])
    ])
_post_activation_bypass = P(ADD,
                            name='post_activation_bypass',
                            inputs=['*', _activation],
                            ordered_inputs=False)
# A conv fed directly by another conv (separable convolution).
_inner_layer = P('|'.join(LAYER_TYPES), name='layer',
                 inputs=['*', WEIGHT_READ])
_sep_conv = P('|'.join(LAYER_TYPES),
              name='sep_conv',
              inputs=[
                  OneofPattern([
                      P('BatchToSpaceND',
                        name='batch_to_space',
                        inputs=[_inner_layer, '*', '*']), _inner_layer
                  ]), '*'
              ])

# Matched in this order; a layer is recorded by the first root that matches.
# A batch norm after anything: the ones no layer record claims are
# rewritten on their own (e.g. a batch norm after an activation).
_any_fused_bn = P('|'.join(FUSED_BN_TYPES),
                  name='fused_bn',
                  inputs=['*', '*', '*', '*', '*'])
_any_unfused_bn = P(ADD,
                    name='unfused_bn',
                    inputs=[
                        P('Mul', name='bn_scale_mul', inputs=['*', _inv]),
                        P('Sub',
                          name='bn_bias',
                          inputs=['*', P('Mul', inputs=['*', _inv])])
                    ])
STANDALONE_BN_MATCHER = GraphMatcher(
    OneofPattern([_any_fused_bn, _any_unfused_bn]))

# Also once the folded layer's weights are quantized.
ONE_CONV_BN_MATCHER = GraphMatcher(_one_conv_fold_patterns(P('*'))[0])

LAYER_MATCHERS = [
    GraphMatcher(p)
    for p in (_post_activation_bypass, _activation, _pre_activation, _sep_conv)
]
# Any layer reading variable weights (`quantize_bare_layers`).
BARE_LAYER_MATCHER = GraphMatcher(P('|'.join(LAYER_TYPES), name='layer',
                                     inputs=['*', WEIGHT_READ]))
# The batch norms after a layer (an Identity before one is not an activation).
BATCH_NORM_MATCHER = GraphMatcher(_batch_norm)
