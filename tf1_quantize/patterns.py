"""What a quantizable layer and a batch norm look like: declarative op-type
patterns (see `graph_matcher`) and the matchers built from them.

`records` turns their matches into the records a rewrite works on; nothing
here walks or changes the graph.
"""

from tf1_quantize import names
from tf1_quantize.graph_matcher import GraphMatcher, OneofPattern
from tf1_quantize.graph_matcher import OpTypePattern as P

_LAYER = '|'.join(names.LAYER_TYPES)
_FUSED_BN = '|'.join(names.FUSED_BN_TYPES)
ADD = '|'.join(names.ADD_TYPES)


def _maybe_after(op_type, pattern, name=None, other_inputs=1):
    """An op of `op_type` reading `pattern` as its input 0 (any ops as its
    `other_inputs` further inputs), or else `pattern` itself."""
    return OneofPattern(
        [P(op_type, name=name, inputs=[pattern] + ['*'] * other_inputs),
         pattern])


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
_layer = P(_LAYER,
           name='layer',
           inputs=['*', OneofPattern([WEIGHT_READ, _folded_weight])])
_layer_output = _maybe_after('BatchToSpaceND', _layer, 'batch_to_space', 2)

# --- Batch norms after the layer -------------------------------------------
_pre_bias = P('BiasAdd', name='pre_bn_bias_add', inputs=[_layer_output, '*'])
_bn_input = OneofPattern([
    P('Identity', name='bn_input_identity', inputs=[_layer_output]), _pre_bias,
    _layer_output
])
_fused_bn = P(_FUSED_BN,
              name='fused_bn',
              inputs=[_maybe_after('Reshape', _bn_input, 'bn_input_reshape'),
                      '*', '*', '*', '*'])
_fused_bn_output = _maybe_after('Reshape', _fused_bn, 'bn_output_reshape')
# tf.nn.batch_normalization: x * inv + (beta - mean * inv), where
# inv = rsqrt(var + eps) * gamma (or without gamma).
_rsqrt = P('Rsqrt',
           name='bn_rsqrt',
           inputs=[P(ADD, name='bn_var_eps', inputs=['*', '*'])])
_inv = _maybe_after('Mul', _rsqrt, 'bn_inv_scaled')


def _unfused_bn_of(bn_input):
    """tf.nn.batch_normalization of `bn_input`."""
    return P(ADD,
             name='unfused_bn',
             inputs=[
                 P('Mul', name='bn_scale_mul', inputs=[bn_input, _inv]),
                 P('Sub', name='bn_bias',
                   inputs=['*', P('Mul', inputs=['*', _inv])])
             ])


_unfused_bn = _unfused_bn_of(_bn_input)
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
    scale = _maybe_after('Reshape', P('StopGradient|Identity'))
    # Inside the cond, inputs pass a Switch.
    unscaled_weights = P('RealDiv',
                         name='unscaled_weights',
                         inputs=[_maybe_after('Switch', folded_weights),
                                 _maybe_after('Switch', scale)])
    layer = P(_LAYER, name='layer', inputs=['*', unscaled_weights])
    layer_output = _maybe_after('BatchToSpaceND', layer, 'batch_to_space', 2)
    batch_norm = P('FusedBatchNormV3',
                   name='one_conv_bn',
                   inputs=[_maybe_after('Reshape', layer_output),
                           '*', '*', '*', '*'])
    batch_output = _maybe_after('Reshape', batch_norm, 'one_conv_reshape')
    return batch_norm, _maybe_after('Merge', batch_output, 'one_conv_merge')


_, _one_conv_fold = _one_conv_fold_patterns(_folded_weight)
_pre_activation = OneofPattern(
    [_bias_add, _folded_bias_add, _one_conv_fold, _batch_norm])
_bn_identity = P('Identity', inputs=[_pre_activation])
_bypass = P(ADD,
            name='bypass',
            inputs=[OneofPattern([_pre_activation, _bn_identity]), '*'],
            ordered_inputs=False)
_activation = P(
    '|'.join(names.ACTIVATION_TYPES),
    name='activation',
    inputs=[
        OneofPattern([_pre_activation, _bn_identity, _bypass, _layer_output])
    ])
_post_activation_bypass = P(ADD,
                            name='post_activation_bypass',
                            inputs=['*', _activation],
                            ordered_inputs=False)
# A conv fed directly by another conv (separable convolution).
_inner_layer = P(_LAYER, name='layer', inputs=['*', WEIGHT_READ])
_sep_conv = P(_LAYER,
              name='sep_conv',
              inputs=[
                  _maybe_after('BatchToSpaceND', _inner_layer,
                               'batch_to_space', 2), '*'
              ])

# Matched in this order; a layer is recorded by the first root that matches.
# A batch norm after anything: the ones no layer record claims are
# rewritten on their own (e.g. a batch norm after an activation).
_any_fused_bn = P(_FUSED_BN,
                  name='fused_bn',
                  inputs=['*', '*', '*', '*', '*'])
STANDALONE_BN_MATCHER = GraphMatcher(
    OneofPattern([_any_fused_bn, _unfused_bn_of('*')]))

# Also once the folded layer's weights are quantized.
ONE_CONV_BN_MATCHER = GraphMatcher(_one_conv_fold_patterns(P('*'))[0])

LAYER_MATCHERS = [
    GraphMatcher(p)
    for p in (_post_activation_bypass, _activation, _pre_activation, _sep_conv)
]
# Any layer reading variable weights (`quantize_bare_layers`).
BARE_LAYER_MATCHER = GraphMatcher(_inner_layer)
# The batch norms after a layer (an Identity before one is not an activation).
BATCH_NORM_MATCHER = GraphMatcher(_batch_norm)
