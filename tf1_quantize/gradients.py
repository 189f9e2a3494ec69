"""Gradients of the ops the rewrite builds, without per-op constants and
update-op edges.

A training script builds its gradients inside
`control_dependencies(update_ops)`. There every gradient op that reads only
forward tensors or nothing (constants: shapes, reduction axes, zeros) takes
one control edge per update op, about 100 on a ResNet; the rest of the
gradient waits for the updates through its inputs anyway. TF's gradients
of the folds' broadcasting multiplies, adds and divisions (`correction_mult`,
`mul_fold`, `post_conv_mul`, `correction_add`, `add_fold`, `scale_compute`)
and of the delay's `Select` build such ops: on ResNet-50 about 20 per layer,
with 2k control edges.

The gradients registered here build the same arithmetic ops in the same
order as TF's (`math_grad` of TF 2.15 to 2.21: `_MulGrad`, `_AddGrad`,
`_RealDivGrad`, `_SelectGrad`), so the values are the same, and take their
constants from `shared_constants` and their forward-only ops out of the
update-op block. Ops built inside `shared_constant_gradients()` use them
(the op's `_gradient_op_type` attribute names the gradient, as for contrib's
`FoldFusedBatchNormGrad`: differentiating a restored training graph needs
`import tf1_quantize`).

An input that no gradient can flow through (a constant: the fold's epsilon,
Bessel factor and zero correction offset; a `stop_gradient`: the
one-convolution fold's scale) gets none: TF's gradients compute one and,
gated with the others (`gate_gradients`), run it every step, though nothing
reads it. On ResNet-50 that was a sum over each layer's output (contrib's
fold) and six weight-sized ops per layer (the one-convolution fold).
"""

import contextlib
from typing import Callable, Iterator, List, Optional

import tensorflow as tf

from tf1_quantize import graph_edit
from tf1_quantize import shared_constants

MUL_GRADIENT = 'Tf1QuantizeMulGrad'
ADD_GRADIENT = 'Tf1QuantizeAddGrad'
DIV_GRADIENT = 'Tf1QuantizeRealDivGrad'
SELECT_GRADIENT = 'Tf1QuantizeSelectGrad'

_GRADIENT_STOPS = frozenset({'Const', 'StopGradient'})
_SHAPE_ONLY_OPS = frozenset({'Identity', 'Reshape'})
_RESHAPE_CHAIN_LIMIT = 4


@contextlib.contextmanager
def shared_constant_gradients() -> Iterator[None]:
    """Gives the Mul, Add, AddV2, RealDiv and Select ops built in the block
    the gradients of this module.

    Yields:
        Nothing.
    """
    graph = tf.compat.v1.get_default_graph()
    with graph.gradient_override_map({'Mul': MUL_GRADIENT,
                                      'Add': ADD_GRADIENT,
                                      'AddV2': ADD_GRADIENT,
                                      'RealDiv': DIV_GRADIENT,
                                      'Select': SELECT_GRADIENT}):
        yield


@tf.RegisterGradient(MUL_GRADIENT)
def _mul_grad(op: tf.Operation, grad: tf.Tensor):
    """d(x * y) = (grad * y, x * grad), each summed to its input's shape."""
    x, y = op.inputs
    return (_unless_stopped(x, lambda: _sum_to_shape(
                tf.raw_ops.Mul(x=grad, y=y), x, y)),
            _unless_stopped(y, lambda: _sum_to_shape(
                tf.raw_ops.Mul(x=x, y=grad), y, x)))


@tf.RegisterGradient(ADD_GRADIENT)
def _add_grad(op: tf.Operation, grad: tf.Tensor):
    """d(x + y) = (grad, grad), each summed to its input's shape."""
    x, y = op.inputs
    return (_unless_stopped(x, lambda: _sum_to_shape(grad, x, y)),
            _unless_stopped(y, lambda: _sum_to_shape(grad, y, x)))


@tf.RegisterGradient(DIV_GRADIENT)
def _real_div_grad(op: tf.Operation, grad: tf.Tensor):
    """d(x / y) = (grad / y, grad * (-x / y / y)), each summed to its
    input's shape."""
    x, y = op.inputs

    def grad_y():
        with graph_edit.no_control_dependencies(op.graph):  # Forward only.
            quotient = tf.raw_ops.RealDiv(
                x=tf.raw_ops.RealDiv(x=tf.math.negative(x), y=y), y=y)
        return _sum_to_shape(tf.raw_ops.Mul(x=grad, y=quotient), y, x)

    return (_unless_stopped(x, lambda: _sum_to_shape(
                tf.raw_ops.RealDiv(x=grad, y=y), x, y)),
            _unless_stopped(y, grad_y))


@tf.RegisterGradient(SELECT_GRADIENT)
def _select_grad(op: tf.Operation, grad: tf.Tensor):
    """The gradient goes to the input that was selected, zeros to the
    other."""
    condition, x, y = op.inputs
    if _stops_gradients(x) and _stops_gradients(y):
        return None, None, None
    with graph_edit.no_control_dependencies(op.graph):  # Forward only.
        if x.shape.is_fully_defined():
            zeros = tf.fill(
                shared_constants.constant(x.shape.as_list(), tf.int32),
                shared_constants.constant(0, x.dtype))
        else:
            zeros = tf.zeros_like(x)
    return (None,
            _unless_stopped(x, lambda: tf.raw_ops.Select(
                condition=condition, x=grad, y=zeros)),
            _unless_stopped(y, lambda: tf.raw_ops.Select(
                condition=condition, x=zeros, y=grad)))


def _stops_gradients(tensor: tf.Tensor) -> bool:
    """Whether `tensor` is a Const or StopGradient output, or one reshaped;
    a gradient w.r.t. it reaches nothing."""
    op = tensor.op
    # A bounded walk: a longer chain just keeps its (unused) gradient.
    for _ in range(_RESHAPE_CHAIN_LIMIT):
        if op.type not in _SHAPE_ONLY_OPS:
            break
        op = op.inputs[0].op
    return op.type in _GRADIENT_STOPS


def _unless_stopped(operand: tf.Tensor,
                    gradient: Callable[[], tf.Tensor]) -> Optional[tf.Tensor]:
    """`gradient()`, or None without building it if no gradient can flow
    through `operand` (see `_stops_gradients`)."""
    return None if _stops_gradients(operand) else gradient()


def _sum_to_shape(grad: tf.Tensor, operand: tf.Tensor,
                  other: tf.Tensor) -> tf.Tensor:
    """`grad` summed over the axes along which `operand` was broadcast
    against `other`, and shaped like `operand`."""
    axes = _broadcast_axes(operand.shape, other.shape)
    if axes is None:  # Broadcasting decided at run time, as TF does it.
        shape = tf.shape(operand)
        axes, _ = tf.raw_ops.BroadcastGradientArgs(s0=shape,
                                                   s1=tf.shape(other))
    elif not axes and operand.shape.rank >= other.shape.rank:
        return grad
    else:
        axes = shared_constants.constant(axes, tf.int32)
        shape = (shared_constants.constant(operand.shape.as_list(), tf.int32)
                 if operand.shape.is_fully_defined() else tf.shape(operand))
    summed = tf.math.reduce_sum(grad, axes, keepdims=True)
    return tf.reshape(summed, shape)


def _broadcast_axes(shape: tf.TensorShape,
                    other: tf.TensorShape) -> Optional[List[int]]:
    """The axes (of the broadcast result) along which a tensor of `shape`
    was broadcast against one of `other`; None if that depends on run-time
    sizes. NumPy broadcasting: shapes align at their last axis."""
    if shape.rank is None or other.rank is None:
        return None
    rank = max(shape.rank, other.rank)
    dims = [1] * (rank - shape.rank) + shape.as_list()
    other_dims = [1] * (rank - other.rank) + other.as_list()
    axes = []
    for axis, (dim, other_dim) in enumerate(zip(dims, other_dims)):
        if dim == 1 and other_dim != 1:
            axes.append(axis)
        elif (dim is None or other_dim is None) and 1 not in (dim,
                                                              other_dim):
            return None
    return axes
