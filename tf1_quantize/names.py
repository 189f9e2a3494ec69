"""The names and op types the rewrite and its checks look for, each spelled
once.

Names: contrib fixed the names of the ops and variables the rewrite creates
(tools and checkpoints read them), and a second rewrite recognises earlier
work by them. Op types: the sets of op types that the patterns match, the
walks pass through and the checks refuse. This module imports nothing from
the package, so that every module may import it.
"""

import re

# ============================ Names ======================================

# Quantizer scopes `<context>/<name>` (spec §3.2, §10): the checkpoint
# names of the range variables.
WEIGHTS_QUANT = 'weights_quant'
ACT_QUANT = 'act_quant'
CONV_QUANT = 'conv_quant'
POST_ACTIVATION_BYPASS_QUANT = 'post_activation_bypass_quant'
ACTIVATION_QUANT = 'activation_%s_quant'  # % the op type, e.g. AddV2.
# A batch norm rewritten as a multiply and add (not in contrib).
MUL_QUANT = 'mul_quant'
OFFSET_QUANT = 'offset_quant'
# The quant_delay predicate `<P>/activate_quant`.
ACTIVATE_QUANT = 'activate_quant'
# contrib's step counter variable, which drives quant_delay.
STEP_COUNTER = 'fake_quantization_step'

# Folds (spec §2.2, §2.4): the fold's scope, the layer clone's suffix, the
# corrections' scope, the freeze switches of the moving-average decays.
BN_FOLD_SCOPE = 'BatchNorm_Fold'
FOLD_SUFFIX = '_Fold'
CORRECTION_SCOPE = 'batch_norm_correction'
# Where a rewrite keeps the constants its quantizers and folds share.
SHARED_CONSTANTS_SCOPE = 'quantize_constants'
FREEZE_MOVING_MEAN = 'freeze_moving_mean'
FREEZE_MOVING_VAR = 'freeze_moving_var'

# The folded weights `w * gamma / sigma` (spec §2.2).
FOLDED_WEIGHTS = 'mul_fold'
# Training folds: the weights times `sigma_B / sigma_mv` first.
CORRECTED_WEIGHTS = 'correction_mult'

# Ops under these name prefixes belong to gradients, optimizers or summaries;
# the rewrite never reroutes their inputs (contrib skipped the same prefixes).
SKIPPED_PREFIXES = ('gradients/', 'RMSProp/', 'Adagrad/', 'Const_',
                    'HistogramSummary', 'ScalarSummary')

# The two rewrite modes, as recorded in REWRITE_COLLECTION.
TRAINING = 'training'
EVAL = 'eval'
# A graph collection holding the mode of the rewrites applied to the graph.
REWRITE_COLLECTION = 'tf1_quantize_rewrites'
# The training quantizers' range updates (spec §4): `Assign<Min|Max>Last`
# (weights) and `Assign<Min|Max>Ema` (activations).
RANGE_UPDATE = 'Assign%s%s'  # % ('Min' or 'Max', 'Last' or 'Ema').
RANGE_UPDATES = tuple(RANGE_UPDATE % (bound, rule) for bound in ('Min', 'Max')
                      for rule in ('Last', 'Ema'))
# The update only a training weights quantizer has.
WEIGHTS_RANGE_UPDATE = RANGE_UPDATE % ('Min', 'Last')
# Quantizer scopes end in `_quant` (`weights_quant`, `act_quant_1`, ...).
_QUANTIZER_SUFFIX = '_quant'

# The one-convolution fold's cond (`<scope>/one_conv_fold/...`).
ONE_CONV_FOLD = 'one_conv_fold'

# The quant_delay switch of a quantizer `<P>`: `<P>/delayed_quant`, a
# Select, or with contrib's conds the scope of `<P>/delayed_quant/Merge`.
DELAYED_QUANT = 'delayed_quant'

# ============================ Op types ===================================

# --- Layers and batch norms ------------------------------------------------
# Ops that read weights as their second input: the layers quantized.
LAYER_TYPES = ('Conv2D', 'DepthwiseConv2dNative', 'MatMul')
# Compute ops the rewrite never quantizes (the report says they stay float).
UNSUPPORTED_LAYER_TYPES = ('Conv3D', 'Conv2DBackpropInput', 'BatchMatMul',
                           'BatchMatMulV2', 'BatchMatMulV3', 'Einsum')
# A fused batch norm, any version.
FUSED_BN_TYPES = ('FusedBatchNorm', 'FusedBatchNormV2', 'FusedBatchNormV3')
# The ops that end a layer pattern as its activation.
ACTIVATION_TYPES = ('Relu', 'Relu6', 'Identity')
# The adds of a layer pattern: bias, bypass, an unfused batch norm's offset.
ADD_TYPES = ('Add', 'AddV2')

# --- Variables and weights -------------------------------------------------
# Variable ops, ref and resource.
VARIABLE_TYPES = ('Variable', 'VariableV2', 'VarHandleOp')
# Ops between a variable and the tensor a layer reads as its weights: a
# ref variable's `read` Identity, a resource read, the ConcatV2 of a
# partitioned variable's parts (input 0 is the first part) and a fold's Mul
# (input 0 is the weights); the layer patterns accept these.
WEIGHT_READ_TYPES = ('Identity', 'ReadVariableOp', 'ConcatV2', 'Mul')
# A stored value: a variable, its read or a constant (an unfused batch
# norm whose mean is one normalizes with moving statistics).
STORED_VALUE_TYPES = ('ReadVariableOp', 'Identity', 'VariableV2', 'Variable',
                      'Const')

# --- Around the FakeQuants -------------------------------------------------
# The FakeQuants a quantizer builds (range variables); also their op names.
VARIABLE_RANGE_FAKE_QUANT_TYPES = ('FakeQuantWithMinMaxVars',
                                   'FakeQuantWithMinMaxVarsPerChannel')
# Any FakeQuant, fixed ranges (`...Args`) included.
FAKE_QUANT_TYPES = VARIABLE_RANGE_FAKE_QUANT_TYPES + (
    'FakeQuantWithMinMaxArgs',)
# Outputs quantized when computed from quantized tensors: contrib's Add and
# Mul, plus the ops whose output range older TFLite converters (TF 2.15) do
# not derive from their input (they leave such ops float).
INTERMEDIATE_TYPES = ('Add', 'AddV2', 'Mul', 'Mean', 'AvgPool', 'ConcatV2')
# Ops whose output is as quantized as their input 0 (its values, moved or
# selected): an intermediate op reading one reads a quantized tensor.
QUANTIZED_PASS_THROUGH_TYPES = ('Reshape', 'Identity', 'BatchToSpaceND',
                                'SpaceToBatchND', 'MaxPool', 'Max')
# Ops that pass their input's values on unchanged, in row-major order.
VALUE_PRESERVING_TYPES = ('Reshape', 'Identity')
# Activations TFLite fuses into the op before them (no FakeQuant between).
TFLITE_FUSED_ACTIVATION_TYPES = ('Relu', 'Relu6')
# Ops whose outputs are never negative (for finite inputs).
NON_NEGATIVE_ACTIVATION_TYPES = ('Relu', 'Relu6')

# --- Graphs the rewrite refuses or reports on ------------------------------
# The optimizers of the apply ops below: all of them, those with sparse ops.
_OPTIMIZERS = ('Adagrad', 'AdagradDA', 'Adam', 'AddSign', 'CenteredRMSProp',
               'Ftrl', 'FtrlV2', 'GradientDescent', 'Momentum', 'PowerSign',
               'ProximalAdagrad', 'ProximalGradientDescent', 'RMSProp')
_SPARSE_OPTIMIZERS = ('Adadelta', 'Adagrad', 'AdagradDA', 'CenteredRMSProp',
                      'Ftrl', 'FtrlV2', 'Momentum', 'ProximalAdagrad',
                      'ProximalGradientDescent', 'RMSProp')
# The optimizer-apply op types whose presence means the rewrite came too late
# (the same 47 types contrib checked).
TRAINING_OP_TYPES = frozenset(
    ['Apply' + o for o in _OPTIMIZERS] +
    ['ResourceApply' + o for o in ('Adadelta',) + _OPTIMIZERS] +
    ['ResourceSparseApply' + o for o in _SPARSE_OPTIMIZERS] +
    ['SparseApply' + o for o in _SPARSE_OPTIMIZERS])
# Ops that branch on a tensor: control flow v2's If ops, a v1 cond's Switch.
CONDITIONAL_TYPES = ('If', 'StatelessIf', 'Switch')
# The ops that run a function of the graph's library: control flow v2 and
# `tf.function` calls (tf.data's function attributes hold input pipelines).
FUNCTION_CALL_TYPES = frozenset([
    'If', 'StatelessIf', 'While', 'StatelessWhile', 'Case', 'StatelessCase',
    'PartitionedCall', 'StatefulPartitionedCall'])

# ============================ Helpers ====================================

_UNIQUIFIER = re.compile(r'_\d+$')


def base_name(op_name: str) -> str:
    """The last part of an op name, without TF's `_<k>` uniquifier suffix:
    two layers in one name scope get `mul_fold` and `mul_fold_1`."""
    return _UNIQUIFIER.sub('', op_name.rpartition('/')[2])


def is_quantizer_op(op) -> bool:
    """Whether `op` is a FakeQuant a rewrite inserted (`<P>_quant/...`)."""
    scope = op.name.rpartition('/')[0]
    return (op.type in FAKE_QUANT_TYPES
            and base_name(scope).endswith(_QUANTIZER_SUFFIX))


def is_delayed_quant(op) -> bool:
    """Whether `op` outputs a quantizer's delay switch (either form)."""
    if op.type == 'Merge':
        return DELAYED_QUANT + '/Merge' in op.name
    return op.type == 'Select' and base_name(op.name) == DELAYED_QUANT


def is_own_conditional(name: str) -> bool:
    """Whether `name` (an op's or a control-flow context's) lies in a
    conditional a rewrite built: a delay switch or a one-convolution fold,
    uniquified or not (`one_conv_fold_1/...` beside other layers)."""
    return any(base_name(part) in (DELAYED_QUANT, ONE_CONV_FOLD)
               for part in name.split('/')[:-1])
