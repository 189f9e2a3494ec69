"""Graph pieces every test graph builder uses: seeded values, variables,
activations, contrib's batch norm and its moving-average updates."""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Iterator, List, Optional

import numpy as np
import tensorflow as tf

v1 = tf.compat.v1

TF_VERSION = tuple(int(p) for p in tf.__version__.split('.')[:2])

EPSILON = 1e-3
MOMENTUM = 0.7  # Far from 1 so that moving averages move visibly per step.


def keras_module():
    """Returns Keras 2: ``tf_keras`` on TF >= 2.16, else ``tf.keras``."""
    if TF_VERSION >= (2, 16):
        import tf_keras  # pylint: disable=import-outside-toplevel
        return tf_keras
    return tf.keras


class Values:
    """Deterministic initial values, drawn in call order from one seed.

    Shared by every test graph builder. `normal_scale` is the default
    standard deviation of `normal`.
    """

    def __init__(self, seed: int = 0, normal_scale: float = 0.5):
        self._rng = np.random.RandomState(seed)
        self._normal_scale = normal_scale

    def normal(self, shape, scale=None):
        scale = self._normal_scale if scale is None else scale
        return (scale * self._rng.randn(*shape)).astype(np.float32)

    def positive(self, shape, low=0.5, high=1.5):
        return self._rng.uniform(low, high, size=shape).astype(np.float32)


def variable(name, value, trainable=True):
    """A float32 variable (of the current variable scope's kind) holding
    the numpy array `value`."""
    return v1.get_variable(
        name, shape=value.shape, dtype=tf.float32,
        initializer=v1.constant_initializer(value), trainable=trainable)


def activation(x, name):
    """Applies activation `name` ('relu', 'relu6', 'tanh', 'leaky_relu',
    'identity' or None) in the current name scope, with contrib's op
    names."""
    if name is None:
        return x
    if name == 'relu':
        return tf.nn.relu(x, name='Relu')
    if name == 'relu6':
        return tf.nn.relu6(x, name='Relu6')
    if name == 'tanh':
        return tf.math.tanh(x, name='Tanh')
    if name == 'leaky_relu':
        return tf.nn.leaky_relu(x, alpha=0.2, name='LeakyRelu')
    if name == 'identity':
        return tf.identity(x, name='Identity')
    raise ValueError(f'unknown activation {name!r}')


def assign_moving_average(variable, value, momentum, name):
    """``variable -= (variable - value) * (1 - momentum)`` in scope `name`.

    Op names follow contrib's batch_norm: ``<name>/decay`` (a Const holding
    1 - momentum), ``<name>/sub``, ``<name>/mul`` and the assign op
    (``<name>`` for a ref variable, ``<name>/AssignSubVariableOp`` for a
    resource variable).
    """
    with tf.name_scope(name) as scope:
        decay = tf.constant(1.0 - momentum, tf.float32, name='decay')
        delta = tf.multiply(tf.subtract(variable, value, name='sub'), decay,
                            name='mul')
        if variable.op.type == 'VarHandleOp':
            return variable.assign_sub(delta, read_value=False)
        return v1.assign_sub(variable, delta, name=scope)


def find_op_upstream(tensor: tf.Tensor, op_type: str) -> tf.Operation:
    """The first op of `op_type` found walking up from `tensor`'s producer."""
    seen, stack = set(), [tensor.op]
    while stack:
        op = stack.pop()
        if op.type == op_type:
            return op
        if op.name not in seen:
            seen.add(op.name)
            stack.extend(t.op for t in op.inputs)
    raise ValueError(f'no {op_type} op above {tensor.name}')


@contextlib.contextmanager
def control_flow_v1() -> Iterator[None]:
    """Builds v1 control flow (Switch/Merge) in the block, then restores."""
    was_v2 = v1.control_flow_v2_enabled()
    v1.disable_control_flow_v2()
    try:
        yield
    finally:
        if was_v2:
            v1.enable_control_flow_v2()


# ---------------------------------------------------------------------------
# contrib's batch_norm.


@dataclasses.dataclass
class BatchNorm:
    """Handles into one `batch_norm`.

    Attributes:
        op: the FusedBatchNorm* op, or the final ``add_1`` op of an unfused
            batch norm.
        output: the result, in the input's shape.
        gamma: None without scale.
        beta, moving_mean, moving_variance: the other variables.
        update_ops: the moving-average updates (empty in inference mode or
            without updates).
    """
    op: tf.Operation
    output: tf.Tensor
    gamma: Optional[tf.Variable]
    beta: tf.Variable
    moving_mean: tf.Variable
    moving_variance: tf.Variable
    update_ops: List[tf.Operation]

    @property
    def variables(self):
        """(gamma, beta, moving_mean, moving_variance)."""
        return self.gamma, self.beta, self.moving_mean, self.moving_variance


def bn_variables(values: Values, channels: int, scale: bool = True,
                 normal_scale: Optional[float] = None):
    """``gamma`` (if `scale`), ``beta``, ``moving_mean``, ``moving_variance``
    in the current variable scope, drawn in that order from `values`
    (gamma and the variance positive; `normal_scale` the standard deviation
    of the others, `values`' default if None)."""
    gamma = variable('gamma', values.positive([channels])) if scale else None
    beta = variable('beta', values.normal([channels], normal_scale))
    moving_mean = variable('moving_mean',
                           values.normal([channels], normal_scale),
                           trainable=False)
    moving_variance = variable('moving_variance',
                               values.positive([channels]), trainable=False)
    return gamma, beta, moving_mean, moving_variance


def batch_norm(values: Values, y: tf.Tensor, *, fused: bool = True,
               training: bool = True, scale: bool = True,
               updates: bool = True, momentum: float = MOMENTUM,
               data_format: str = 'NHWC',
               normal_scale: Optional[float] = None) -> BatchNorm:
    """contrib's batch_norm of `y` in variable scope ``BatchNorm``.

    Fused: FusedBatchNormV3 (a 2-D `y` is reshaped to [-1, 1, 1, C] in
    ``Reshape`` and back in ``Reshape_1``, as contrib's fully_connected
    did); unfused: ``moments`` + ``batchnorm_1``. In training mode it
    normalizes with the batch statistics and, with `updates`, adds
    ``AssignMovingAvg{,_1}`` updates (`assign_moving_average`) to
    UPDATE_OPS; in inference mode it uses the moving statistics.

    Args:
        values: where the initial values come from (see `bn_variables`).
        y: the tensor to normalize (any float dtype for a fused BN; the
            parameters are float32).
        fused, training, scale, updates, momentum: as above.
        data_format: of a fused batch norm ('NHWC' or 'NCHW').
        normal_scale: see `bn_variables`.
    """
    channels = y.shape[1] if data_format == 'NCHW' else y.shape[-1]
    with v1.variable_scope('BatchNorm') as scope:
        variables = bn_variables(values, channels, scale, normal_scale)
        with tf.name_scope(scope.original_name_scope):
            build = _fused_bn if fused else _unfused_bn
            op, out, mean, variance = build(y, *variables, training,
                                            data_format)
            update_ops = []
            if training and updates:
                update_ops = [
                    assign_moving_average(variables[2], mean, momentum,
                                          'AssignMovingAvg'),
                    assign_moving_average(variables[3], variance, momentum,
                                          'AssignMovingAvg_1'),
                ]
            for update in update_ops:
                v1.add_to_collection(v1.GraphKeys.UPDATE_OPS, update)
    return BatchNorm(op, out, *variables, update_ops)


def _fused_bn(y, gamma, beta, moving_mean, moving_variance, training,
              data_format):
    """Returns (bn_op, out, mean, variance)."""
    channels = moving_mean.shape[0]
    is_2d = y.shape.ndims == 2
    if is_2d:
        y = tf.reshape(y, [-1, 1, 1, channels], name='Reshape')
    if gamma is None:
        gamma = tf.ones([channels], name='ones')
    if training:
        out, mean, variance = v1.nn.fused_batch_norm(
            y, gamma, beta, epsilon=EPSILON, is_training=True,
            data_format=data_format)
    else:
        out, mean, variance = v1.nn.fused_batch_norm(
            y, gamma, beta, mean=moving_mean, variance=moving_variance,
            epsilon=EPSILON, is_training=False, data_format=data_format)
    bn_op = out.op
    if is_2d:
        out = tf.reshape(out, [-1, channels], name='Reshape_1')
    return bn_op, out, mean, variance


def _unfused_bn(y, gamma, beta, moving_mean, moving_variance, training,
                data_format):
    del data_format  # channels last
    if training:
        mean, variance = tf.nn.moments(y, list(range(y.shape.ndims - 1)),
                                       name='moments')
    else:
        mean, variance = moving_mean, moving_variance
    out = tf.nn.batch_normalization(y, mean, variance, beta, gamma, EPSILON,
                                    name='batchnorm_1')
    return out.op, out, mean, variance
