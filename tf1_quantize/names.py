"""Names of the ops the rewrite creates that later rewrites look for.

contrib fixed these names (tools and checkpoints read them), and a second
rewrite recognises earlier work by them, so each is spelled here once.
"""

import re

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

# Folds (spec §2.2, §2.4): the fold's scope, the layer clone's suffix, the
# corrections' scope, the freeze switches of the moving-average decays.
BN_FOLD_SCOPE = 'BatchNorm_Fold'
FOLD_SUFFIX = '_Fold'
CORRECTION_SCOPE = 'batch_norm_correction'
FREEZE_MOVING_MEAN = 'freeze_moving_mean'
FREEZE_MOVING_VAR = 'freeze_moving_var'

# The folded weights `w * gamma / sigma` (spec §2.2).
FOLDED_WEIGHTS = 'mul_fold'
# Training folds: the weights times `sigma_B / sigma_mv` first.
CORRECTED_WEIGHTS = 'correction_mult'

_UNIQUIFIER = re.compile(r'_\d+$')


def base_name(op_name: str) -> str:
    """The last part of an op name, without TF's `_<k>` uniquifier suffix:
    two layers in one name scope get `mul_fold` and `mul_fold_1`."""
    return _UNIQUIFIER.sub('', op_name.rpartition('/')[2])

# The two rewrite modes, as recorded in REWRITE_COLLECTION.
TRAINING = 'training'
EVAL = 'eval'
# A graph collection holding the mode of the rewrites applied to the graph.
REWRITE_COLLECTION = 'tf1_quantize_rewrites'
# The training quantizers' range updates (spec §4): `Assign<Min|Max>Last`
# (weights) and `Assign<Min|Max>Ema` (activations).
RANGE_UPDATES = tuple('Assign%s%s' % (bound, kind) for bound in ('Min', 'Max')
                      for kind in ('Last', 'Ema'))
# Quantizer scopes end in `_quant` (`weights_quant`, `act_quant_1`, ...).
_QUANTIZER_SUFFIX = '_quant'
FAKE_QUANT_TYPES = ('FakeQuantWithMinMaxVars', 'FakeQuantWithMinMaxArgs',
                    'FakeQuantWithMinMaxVarsPerChannel')


def is_quantizer_op(op) -> bool:
    """Whether `op` is a FakeQuant a rewrite inserted (`<P>_quant/...`)."""
    scope = op.name.rpartition('/')[0]
    return (op.type in FAKE_QUANT_TYPES
            and base_name(scope).endswith(_QUANTIZER_SUFFIX))


# The one-convolution fold's cond (`<scope>/one_conv_fold/...`).
ONE_CONV_FOLD = 'one_conv_fold'

# The quant_delay switch of a quantizer `<P>`: `<P>/delayed_quant`, a
# Select, or with contrib's conds the scope of `<P>/delayed_quant/Merge`.
DELAYED_QUANT = 'delayed_quant'


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
