"""Quantization-aware training demo on the UCI handwritten digits.

Runs the whole `tf.contrib.quantize` workflow with `tf1_quantize` on real
data that ships with scikit-learn (8x8 digits, 1797 images, no download):

1. float training of a TF1-style graph (compat.v1 ops, contrib naming, fused
   batch norm with moving averages in UPDATE_OPS);
2. QAT fine-tuning in a new graph: forward pass, then
   `experimental_create_training_graph(...)`, then the optimizer; the model
   variables are restored from the float checkpoint;
3. an eval graph (batch norm in inference mode) rewritten with
   `create_eval_graph` / `experimental_create_eval_graph`, restored from the
   QAT checkpoint: fake-quant accuracy;
4. export: freeze, convert to integer TFLite (uint8 from asymmetric training,
   int8 from symmetric training), check every op is integer, compare with
   the fake-quant graph (parity), TFLite accuracy.

Two models:
  A  Conv 3x3 -> BN -> ReLU -> depthwise 3x3 -> BN -> ReLU -> Conv 1x1 -> BN
     -> ReLU6 -> global average pool -> Dense(10)
  B  Conv 3x3 with ReLU -> BN -> MaxPool 2 -> Flatten -> Dense(10)
     (BN after the activation: contrib could not fold it)

Usage:
  tools/bazel run //tools:demo -- [--small] [--out DIR]
  python -m tools.demo [--small] [--out DIR]     # from the repository root

The full run exits with status 1 when a model A target is missed.
"""

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional, Tuple

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tf1_quantize  # noqa: E402
from tf1_quantize import cli  # noqa: E402
from tf1_quantize import export  # noqa: E402

v1 = tf.compat.v1

INPUT = 'input'
INPUT_RANGE = (0.0, 1.0)
NUM_CLASSES = 10
BN_DECAY = 0.9
BN_EPSILON = 1e-3
SEED = 0


# ------------------------------------------------------------------- data


@dataclasses.dataclass
class Data:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load_digits(small: bool) -> Data:
    """The scikit-learn digits, scaled to [0, 1], stratified 80/20 split.

    Args:
        small: keep 320 training and 120 test images (for a quick run).

    Returns:
        NHWC float32 images (N, 8, 8, 1) and int64 labels.
    """
    from sklearn import datasets  # pylint: disable=g-import-not-at-top
    from sklearn import model_selection  # pylint: disable=g-import-not-at-top
    digits = datasets.load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., np.newaxis]
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = model_selection.train_test_split(
        x, y, test_size=0.2, stratify=y, random_state=SEED)
    if small:
        x_train, y_train = x_train[:320], y_train[:320]
        x_test, y_test = x_test[:120], y_test[:120]
    return Data(x_train, y_train, x_test, y_test)


# ---------------------------------------------------- layers (contrib style)


def _get_weights(name: str, shape: List[int]) -> tf.Tensor:
    # Deterministic through the graph-level seed (`set_random_seed`).
    return v1.get_variable(name, shape,
                           initializer=v1.initializers.he_normal())


def batch_norm(x: tf.Tensor, is_training: bool) -> tf.Tensor:
    """Fused batch norm in scope `BatchNorm`, contrib-style variables.

    In training, the moving statistics are updated with
    `assign_moving_average(..., zero_debias=False)` ops in UPDATE_OPS.
    """
    channels = x.shape[-1]
    with v1.variable_scope('BatchNorm'):
        gamma = v1.get_variable('gamma', [channels],
                                initializer=v1.ones_initializer())
        beta = v1.get_variable('beta', [channels],
                               initializer=v1.zeros_initializer())
        moving_mean = v1.get_variable(
            'moving_mean', [channels], initializer=v1.zeros_initializer(),
            trainable=False)
        moving_variance = v1.get_variable(
            'moving_variance', [channels], initializer=v1.ones_initializer(),
            trainable=False)
        if not is_training:
            y, _, _ = v1.nn.fused_batch_norm(
                x, gamma, beta, moving_mean, moving_variance,
                epsilon=BN_EPSILON, is_training=False)
            return y
        y, mean, variance = v1.nn.fused_batch_norm(
            x, gamma, beta, epsilon=BN_EPSILON, is_training=True)
        for variable, value in ((moving_mean, mean),
                                (moving_variance, variance)):
            # TF 2.x keeps TF1's helper (`moving_averages`) here.
            update = tf.__internal__.train.assign_moving_average(
                variable, value, BN_DECAY, zero_debias=False)
            v1.add_to_collection(v1.GraphKeys.UPDATE_OPS, update)
        return y


def conv2d(x, num_outputs: int, kernel: int, scope: str, is_training: bool,
           activation: Optional[Callable] = tf.nn.relu,
           normalize: bool = True) -> tf.Tensor:
    """conv -> (BN | bias) -> activation, like contrib `conv2d`."""
    with v1.variable_scope(scope):
        weights = _get_weights('weights',
                               [kernel, kernel, x.shape[-1], num_outputs])
        y = tf.nn.conv2d(x, weights, [1, 1, 1, 1], 'SAME', name='Conv2D')
        if normalize:
            y = batch_norm(y, is_training)
        else:
            biases = v1.get_variable('biases', [num_outputs],
                                     initializer=v1.zeros_initializer())
            y = tf.nn.bias_add(y, biases, name='BiasAdd')
        return activation(y) if activation else y


def depthwise_conv2d(x, kernel: int, scope: str,
                     is_training: bool) -> tf.Tensor:
    """Depthwise conv -> BN -> ReLU, like contrib `separable_conv2d(None)`."""
    with v1.variable_scope(scope):
        weights = _get_weights('depthwise_weights',
                               [kernel, kernel, x.shape[-1], 1])
        y = v1.nn.depthwise_conv2d_native(x, weights, [1, 1, 1, 1], 'SAME',
                                          name='depthwise')
        return tf.nn.relu(batch_norm(y, is_training))


def dense(x, num_outputs: int, scope: str) -> tf.Tensor:
    """MatMul + BiasAdd, like contrib `fully_connected(activation_fn=None)`."""
    with v1.variable_scope(scope):
        weights = _get_weights('weights', [x.shape[-1], num_outputs])
        biases = v1.get_variable('biases', [num_outputs],
                                 initializer=v1.zeros_initializer())
        y = tf.matmul(x, weights, name='MatMul')
        return tf.nn.bias_add(y, biases, name='BiasAdd')


def model_a(images: tf.Tensor, is_training: bool) -> tf.Tensor:
    """Conv-BN-ReLU, depthwise-BN-ReLU, 1x1 conv-BN-ReLU6, pool, dense."""
    with v1.variable_scope('ModelA'):
        net = conv2d(images, 16, 3, 'Conv2d_0', is_training)
        net = depthwise_conv2d(net, 3, 'Conv2d_1_depthwise', is_training)
        net = conv2d(net, 32, 1, 'Conv2d_1_pointwise', is_training,
                     activation=tf.nn.relu6)
        net = tf.reduce_mean(net, [1, 2], name='GlobalPool')
        return dense(net, NUM_CLASSES, 'Logits')


def model_b(images: tf.Tensor, is_training: bool) -> tf.Tensor:
    """Conv with ReLU, then BN (after the activation), max pool, dense."""
    with v1.variable_scope('ModelB'):
        net = conv2d(images, 16, 3, 'Conv2d_0', is_training,
                     normalize=False)
        with v1.variable_scope('Norm'):
            net = batch_norm(net, is_training)
        net = tf.nn.max_pool2d(net, 2, 2, 'VALID', name='MaxPool')
        net = tf.reshape(net, [-1, 4 * 4 * 16], name='Flatten')
        return dense(net, NUM_CLASSES, 'Logits')


MODELS = {
    'A': ('Conv-BN-ReLU / DW-BN-ReLU / 1x1-BN-ReLU6 / pool / dense',
          model_a),
    'B': ('Conv+ReLU / BN / MaxPool / dense (BN after ReLU)', model_b),
}


# --------------------------------------------------------------- training


@dataclasses.dataclass
class Settings:
    """Training settings (steps and epochs)."""
    float_epochs: int
    qat_epochs: int
    batch_size: int
    float_lr: float
    qat_lr: float
    quant_delay: int
    freeze_bn_delay: int


@dataclasses.dataclass
class QatVariant:
    """One QAT run and the TFLite types exported from it."""
    label: str
    symmetric: bool
    inference_types: Tuple[tf.dtypes.DType, ...]
    per_channel: bool = False
    one_conv: bool = False


VARIANTS = (
    # contrib's default (asymmetric weights) gives uint8 models; int8 from it
    # is attempted to show the error export raises.
    QatVariant('asymmetric', False, (tf.uint8, tf.int8)),
    QatVariant('symmetric', True, (tf.int8, tf.uint8)),
    # Beyond contrib: one symmetric range per output channel (TFLite's int8
    # per-channel convolutions).
    QatVariant('per-channel', True, (tf.int8,), per_channel=True),
    # Beyond contrib: training folds that run each layer once (the eval
    # graph and its export are the same as for 'symmetric').
    QatVariant('one-conv', True, (tf.int8,), one_conv=True),
)


def _session(graph: tf.Graph) -> v1.Session:
    config = v1.ConfigProto(intra_op_parallelism_threads=2,
                            inter_op_parallelism_threads=1)
    return v1.Session(graph=graph, config=config)


def _model_variables(graph: tf.Graph) -> List[tf.Variable]:
    return list(graph.get_collection(v1.GraphKeys.GLOBAL_VARIABLES))


def train(builder: Callable, data: Data, epochs: int, lr: float,
          batch_size: int, save_path: str, log_prefix: str,
          rewrite: Optional[Callable[[tf.Graph], None]] = None,
          restore_from: Optional[str] = None) -> str:
    """Trains a model; with `rewrite`, a QAT graph restored from float.

    Adam with a cosine learning-rate decay from `lr`. The rewrite runs
    after the forward pass and loss, before the optimizer, as contrib
    required. Only the model variables (those that exist before
    the rewrite) are restored from `restore_from`; the rewrite's range
    variables start from their initializers.

    Returns:
        The checkpoint path written.
    """
    graph = tf.Graph()
    with graph.as_default():
        v1.set_random_seed(SEED)
        images = v1.placeholder(tf.float32, [None, 8, 8, 1], name=INPUT)
        labels = v1.placeholder(tf.int64, [None], name='labels')
        logits = builder(images, is_training=True)
        model_vars = _model_variables(graph)
        loss = v1.losses.sparse_softmax_cross_entropy(labels, logits)
        correct = tf.reduce_sum(
            tf.cast(tf.equal(tf.argmax(logits, -1), labels), tf.float32))
        if rewrite is not None:
            # Reroutes the loss and `correct` to the quantized logits.
            rewrite(graph)
        step = v1.train.get_or_create_global_step()
        total_steps = epochs * -(-len(data.x_train) // batch_size)
        learning_rate = v1.train.cosine_decay(lr, step, total_steps,
                                              alpha=0.05)
        with tf.control_dependencies(
                v1.get_collection(v1.GraphKeys.UPDATE_OPS)):
            train_op = v1.train.AdamOptimizer(learning_rate).minimize(
                loss, global_step=step)
        saver = v1.train.Saver(
            model_vars if rewrite is None else None, max_to_keep=1)
        restorer = (v1.train.Saver(model_vars) if restore_from else None)
    rng = np.random.RandomState(SEED)
    with graph.as_default(), _session(graph) as session:
        session.run(v1.global_variables_initializer())
        if restorer:
            restorer.restore(session, restore_from)
        for epoch in range(epochs):
            order = rng.permutation(len(data.x_train))
            total_loss = total_correct = 0.0
            for start in range(0, len(order), batch_size):
                index = order[start:start + batch_size]
                _, batch_loss, batch_correct = session.run(
                    [train_op, loss, correct],
                    {images: data.x_train[index], labels: data.y_train[index]})
                total_loss += batch_loss * len(index)
                total_correct += batch_correct
            print(f'  {log_prefix} epoch {epoch + 1}/{epochs}: '
                  f'loss {total_loss / len(order):.4f}, '
                  f'train accuracy {100 * total_correct / len(order):.2f}%',
                  flush=True)
        os.makedirs(os.path.dirname(save_path), exist_ok=True)
        return saver.save(session, save_path)


def eval_session(builder: Callable, checkpoint: str,
                 rewrite: Optional[Callable[[tf.Graph], None]] = None,
                 ) -> Tuple[v1.Session, str]:
    """Builds an inference graph (BN in inference mode), rewrites, restores.

    Returns:
        The session (the caller closes it) and the output tensor name: the
        logits, or after a rewrite the FakeQuant that quantizes them.
    """
    graph = tf.Graph()
    with graph.as_default():
        images = v1.placeholder(tf.float32, [None, 8, 8, 1], name=INPUT)
        logits = builder(images, is_training=False)
        if rewrite is not None:
            rewrite(graph)
        saver = v1.train.Saver()
        session = _session(graph)
        saver.restore(session, checkpoint)
    return session, export.resolve_output_name(graph, logits.name)


def accuracy(session: v1.Session, output: str, data: Data) -> float:
    predictions = session.run(output, {INPUT + ':0': data.x_test})
    return float(np.mean(np.argmax(predictions, -1) == data.y_test))


def rewrite_summary(graph: tf.Graph) -> Tuple[str, List[str]]:
    """What the eval rewrite did, from `tf1_quantize.last_report`.

    Returns:
        A short note for the table and the lines to print: batch norms
        folded, batch norms rewritten on their own as quantized affine ops
        (e.g. BN after an activation, which contrib could not fold), compute
        ops left float with the reason.
    """
    report = tf1_quantize.last_report(graph)
    notes = [f'{len(report.folded)} BN folded'] if report.folded else []
    lines = [f'BN folded into {name}' for name in report.folded]
    for name in report.affine:
        notes.append(f'BN {name.rsplit("/", 2)[0]} not folded: quantized '
                     'affine')
        lines.append(f'BN {name} not after a layer (not folded): rewritten '
                     'as quantized multiply/add')
    for op in report.float_ops:
        notes.append(f'{op.name} float')
        lines.append(f'stays float: {op.name} ({op.type}): {op.reason}')
    return '; '.join(notes), lines


# ---------------------------------------------------------------- report


@dataclasses.dataclass
class Row:
    """One line of the final table."""
    model: str
    variant: str
    float_accuracy: float
    fake_quant_accuracy: Optional[float] = None
    tflite_accuracy: Optional[float] = None
    parity: Optional[export.ParityReport] = None
    size_bytes: Optional[int] = None
    float_ops: Optional[int] = None
    note: str = ''


def _pct(value: Optional[float]) -> str:
    return '-' if value is None else f'{100 * value:.2f}'


def print_table(rows: List[Row], timings: Dict[str, float],
                float_sizes: Dict[str, int]) -> None:
    header = ('model', 'variant', 'float%', 'fakeq%', 'tflite%', 'argmax%',
              'maxLSB', '<=1LSB%', 'size', 'floatops', 'note')
    lines = [header]
    for r in rows:
        lines.append((
            r.model, r.variant, _pct(r.float_accuracy),
            _pct(r.fake_quant_accuracy), _pct(r.tflite_accuracy),
            _pct(r.parity.argmax_agreement) if r.parity else '-',
            (f'{r.parity.max_diff_lsb:.0f}'
             if r.parity and r.parity.output_scale else '-'),
            _pct(r.parity.within_one_lsb) if r.parity else '-',
            f'{r.size_bytes / 1024:.1f}K' if r.size_bytes else '-',
            '-' if r.float_ops is None else str(r.float_ops),
            r.note))
    widths = [max(len(line[i]) for line in lines)
              for i in range(len(header) - 1)]
    print('\n== Results (test set accuracy in %; parity: TFLite vs '
          'fake-quant graph, in output LSB) ==')
    for line in lines:
        cells = [c.ljust(w) for c, w in zip(line, widths)] + [line[-1]]
        print('  '.join(cells).rstrip())
    print('\nfloat32 TFLite size: ' + ', '.join(
        f'{m} {s / 1024:.1f}K' for m, s in float_sizes.items()))
    print('time per phase: ' + ', '.join(
        f'{k} {v:.1f}s' for k, v in timings.items()))


# ----------------------------------------------------------------- phases


def float_tflite_size(session: v1.Session, output: str) -> int:
    """Size of the float32 TFLite model (the baseline for the sizes)."""
    frozen = export.freeze_session(session, output)
    with tempfile.TemporaryDirectory(prefix='tf1_quantize_demo_') as tmp:
        path = os.path.join(tmp, 'float.pb')
        with open(path, 'wb') as f:
            f.write(frozen.SerializeToString())
        converter = v1.lite.TFLiteConverter.from_frozen_graph(
            path, [INPUT], [output.split(':')[0]])
        return len(converter.convert())


def export_row(session: v1.Session, output: str, data: Data,
               dtype: tf.dtypes.DType, path: str, row: Row) -> Row:
    """Exports one TFLite type; errors become notes, not crashes.

    A model with float ops is reported, then exported again with
    `allow_float_ops=True` so that the mixed model can still be measured.
    """
    def run(allow_float_ops: bool, target: str) -> Row:
        model, report = export.export_session(
            session, INPUT, output, dtype,
            input_ranges={INPUT: INPUT_RANGE}, parity_inputs=data.x_test,
            output_path=target, allow_float_ops=allow_float_ops)
        predictions = export.run_tflite(model, data.x_test)
        return dataclasses.replace(
            row, parity=report.parity, size_bytes=report.size_bytes,
            float_ops=len(report.float_ops),
            tflite_accuracy=float(np.mean(
                np.argmax(predictions, -1) == data.y_test)))

    try:
        return run(False, path)
    except export.FloatOpsError as e:
        kinds = sorted({op.op_name for op in e.float_ops})
        note = (f'not integer-only: {len(e.float_ops)} float ops '
                f'({", ".join(kinds)}); measured the mixed model')
        print(f'    {dtype.name}: FloatOpsError:\n      ' +
              str(e).replace('\n', '\n      '))
        mixed = run(True, path.replace('.tflite', '_mixed.tflite'))
        return _add_note(mixed, note)
    except export.AsymmetricWeightsError as e:
        print(f'    {dtype.name}: {type(e).__name__} (as expected):\n      ' +
              str(e).replace('\n', '\n      '))
        return _add_note(row, 'AsymmetricWeightsError: int8 needs '
                         'symmetric=True training')
    except Exception as e:  # pylint: disable=broad-except
        # Conversion failed (an ExportError or the converter's own error):
        # report it and go on with the demo.
        first_line = (str(e).splitlines() or [''])[0]
        print(f'    {dtype.name}: export failed: {type(e).__name__}: '
              f'{first_line}')
        return _add_note(row, f'{type(e).__name__}: {first_line[:60]}')


def _add_note(row: Row, note: str) -> Row:
    return dataclasses.replace(
        row, note='; '.join(n for n in (note, row.note) if n))


def _qat_rewrites(variant: QatVariant, settings: Settings):
    """The training and eval rewrites of one QAT variant."""
    def training(graph: tf.Graph) -> None:
        tf1_quantize.experimental_create_training_graph(
            graph, symmetric=variant.symmetric,
            quant_delay=settings.quant_delay,
            freeze_bn_delay=settings.freeze_bn_delay,
            per_channel_weights=variant.per_channel,
            one_conv_fold=variant.one_conv)

    def evaluation(graph: tf.Graph) -> None:
        if variant.symmetric:
            tf1_quantize.experimental_create_eval_graph(
                graph, symmetric=True, per_channel_weights=variant.per_channel)
        else:
            tf1_quantize.create_eval_graph(graph)

    return training, evaluation


def run_model(key: str, data: Data, settings: Settings, out_dir: str,
              work_dir: str, timings: Dict[str, float],
              float_sizes: Dict[str, int]) -> List[Row]:
    """Float training, then each QAT variant with its exports."""
    description, builder = MODELS[key]
    print(f'\n=== Model {key}: {description} ===', flush=True)
    start = time.time()
    float_ckpt = train(
        builder, data, settings.float_epochs, settings.float_lr,
        settings.batch_size, os.path.join(work_dir, f'{key}_float', 'ckpt'),
        f'[{key} float]')
    session, output = eval_session(builder, float_ckpt)
    with session:
        float_accuracy = accuracy(session, output, data)
        float_sizes[key] = float_tflite_size(session, output)
    print(f'  [{key} float] test accuracy {100 * float_accuracy:.2f}%')
    timings[f'{key} float'] = time.time() - start
    rows = []
    for variant in VARIANTS:
        start = time.time()
        training, evaluation = _qat_rewrites(variant, settings)
        qat_ckpt = train(
            builder, data, settings.qat_epochs, settings.qat_lr,
            settings.batch_size,
            os.path.join(work_dir, f'{key}_{variant.label}', 'ckpt'),
            f'[{key} QAT {variant.label}]', rewrite=training,
            restore_from=float_ckpt)
        timings[f'{key} QAT {variant.label}'] = time.time() - start
        start = time.time()
        session, output = eval_session(builder, qat_ckpt, evaluation)
        with session:
            fq_accuracy = accuracy(session, output, data)
            note, lines = rewrite_summary(session.graph)
            print(f'  [{key} QAT {variant.label}] fake-quant test accuracy '
                  f'{100 * fq_accuracy:.2f}%; eval rewrite:')
            print('\n'.join(f'    {line}' for line in lines))
            for dtype in variant.inference_types:
                path = os.path.join(
                    out_dir, f'model_{key.lower()}_{variant.label}_'
                    f'{dtype.name}.tflite')
                row = Row(key, f'{dtype.name} ({variant.label} QAT)',
                          float_accuracy, fq_accuracy, note=note)
                rows.append(export_row(session, output, data, dtype, path,
                                       row))
        timings[f'{key} eval+export {variant.label}'] = time.time() - start
    return rows


def check_targets(rows: List[Row]) -> List[Tuple[bool, str]]:
    """The model A targets: `(met, description)` per target and variant.

    Argmax agreement counts a position as agreeing when TFLite's class is
    within one output step of the fake-quant graph's top value
    (`ParityReport.argmax_agreement`); the exact share is shown beside it.
    """
    results = []
    for row in rows:
        if row.model != 'A' or row.tflite_accuracy is None:
            continue
        drop = 100 * (row.float_accuracy - row.tflite_accuracy)
        within = row.parity.within_one_lsb
        checks = [
            (drop <= 0.3, f'accuracy drop {drop:.2f} points <= 0.3'),
            (row.parity.argmax_agreement >= 0.999,
             f'argmax agreement {_pct(row.parity.argmax_agreement)}% >= '
             f'99.9 (exact {_pct(row.parity.exact_argmax_agreement)}%)'),
            (within is not None and within >= 0.99,
             f'within 1 LSB {_pct(within)}% >= 99'),
            (row.float_ops == 0, f'float ops {row.float_ops} == 0'),
        ]
        results += [(ok, f'A {row.variant}: {text}') for ok, text in checks]
    return results


# ------------------------------------------------------------------- main


def settings_for(small: bool, steps_per_epoch: int) -> Settings:
    if small:
        return Settings(float_epochs=4, qat_epochs=1, batch_size=32,
                        float_lr=2e-2, qat_lr=1e-3, quant_delay=2,
                        freeze_bn_delay=steps_per_epoch // 2)
    return Settings(float_epochs=30, qat_epochs=5, batch_size=32,
                    float_lr=1e-2, qat_lr=1e-3,
                    quant_delay=steps_per_epoch // 2,
                    freeze_bn_delay=3 * steps_per_epoch)


def _default_out_dir() -> str:
    # Outside `bazel run`: the checkout this file is in.
    checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    workspace = os.environ.get('BUILD_WORKSPACE_DIRECTORY', checkout)
    return os.path.join(workspace, 'out', 'demo')


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--small', action='store_true',
                        help='a few steps on a subset of the data')
    parser.add_argument('--out', default=None,
                        help='directory for the .tflite files '
                        '(default: out/demo in the workspace)')
    parser.add_argument('--models', default='A,B',
                        help='comma-separated models to run (A, B)')
    return parser.parse_args(argv)


def _resolve_out(path: Optional[str]) -> str:
    if path is None:
        return _default_out_dir()
    return os.path.abspath(os.path.expanduser(path))


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    np.random.seed(SEED)
    start = time.time()
    data = load_digits(args.small)
    out_dir = _resolve_out(args.out)
    os.makedirs(out_dir, exist_ok=True)
    steps_per_epoch = -(-len(data.x_train) // 32)
    settings = settings_for(args.small, steps_per_epoch)
    print(f'TensorFlow {tf.__version__}; digits: {len(data.x_train)} train, '
          f'{len(data.x_test)} test images; {settings}; output: {out_dir}')
    timings = {'data': time.time() - start}
    rows, float_sizes = [], {}
    with tempfile.TemporaryDirectory(prefix='tf1_quantize_demo_') as work:
        for key in args.models.split(','):
            rows += run_model(key.strip().upper(), data, settings, out_dir,
                              work, timings, float_sizes)
    print_table(rows, timings, float_sizes)
    targets = check_targets(rows)
    if targets:
        print('\nModel A targets' +
              (' (met only by the full run; --small does not enforce them):'
               if args.small else ':'))
        print('\n'.join(f'  {"PASS" if ok else "FAIL"}  {text}'
                        for ok, text in targets))
    print(f'\ntotal {time.time() - start:.1f}s')
    missed = sum(not ok for ok, _ in targets)
    if missed and not args.small:
        print(f'{missed} target(s) missed', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    cli.enter_caller_directory()
    sys.exit(main())
