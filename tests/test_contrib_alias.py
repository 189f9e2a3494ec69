"""`tf1_quantize.install_as_contrib()`: a TF 1.15 script runs unmodified.

Each test runs a script in a fresh Python process, since the alias changes
`sys.modules` and the `tensorflow` module for the rest of the process.
"""

import os
import subprocess
import sys
import textwrap

# A TF 1.15 contrib QAT script, unmodified but for its first line.
CONTRIB_SCRIPT = '''
import tf1_quantize; tf1_quantize.install_as_contrib()
import tensorflow.compat.v1 as tf
from tensorflow.contrib import quantize as contrib_quantize
import tensorflow.contrib.quantize

tf.disable_v2_behavior()


def build_model():
    images = tf.placeholder(tf.float32, [None, 6, 6, 3], name='images')
    with tf.variable_scope('conv'):
        weights = tf.get_variable('weights', [3, 3, 3, 4],
                                  initializer=tf.constant_initializer(0.1))
        biases = tf.get_variable('biases', [4],
                                 initializer=tf.zeros_initializer())
        conv = tf.nn.conv2d(images, weights, [1, 1, 1, 1], 'SAME')
        return images, tf.nn.relu6(tf.nn.bias_add(conv, biases))


def fake_quants(graph):
    return sorted(op.name for op in graph.get_operations()
                  if op.type == 'FakeQuantWithMinMaxVars')


train_graph = tf.Graph()
with train_graph.as_default():
    images, output = build_model()
    loss = tf.reduce_mean(tf.square(output))
    contrib_quantize.create_training_graph(quant_delay=0)
    train_op = tf.train.GradientDescentOptimizer(0.1).minimize(loss)
    with tf.Session() as sess:
        sess.run(tf.global_variables_initializer())
        sess.run(train_op, {images: [[[[1.0, 2.0, 3.0]] * 6] * 6]})
        act_max = sess.run('conv/act_quant/max:0')
print('train', fake_quants(train_graph), act_max)

eval_graph = tf.Graph()
with eval_graph.as_default():
    build_model()
    tf.contrib.quantize.create_eval_graph()
print('eval', fake_quants(eval_graph))

symmetric_graph = tf.Graph()
with symmetric_graph.as_default():
    build_model()
    tensorflow.contrib.quantize.experimental_create_eval_graph(symmetric=True)
print('symmetric', fake_quants(symmetric_graph))

try:
    from tensorflow.contrib import slim
except ImportError as error:
    print('slim:', error)
'''

FAKE_QUANTS = ['conv/act_quant/FakeQuantWithMinMaxVars',
               'conv/weights_quant/FakeQuantWithMinMaxVars']


def _run(script, tmp_path):
    path = tmp_path / 'script.py'
    path.write_text(textwrap.dedent(script))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path),
               TF_CPP_MIN_LOG_LEVEL='3')
    result = subprocess.run([sys.executable, str(path)], env=env,
                            capture_output=True, text=True, timeout=300,
                            check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return dict(line.split(' ', 1) for line in result.stdout.splitlines())


def test_unmodified_contrib_script_runs(tmp_path):
    printed = _run(CONTRIB_SCRIPT, tmp_path)
    fake_quants, act_max = printed['train'].rsplit(' ', 1)
    assert fake_quants == str(FAKE_QUANTS)
    # One training step set the activation range to the batch's (not the
    # initial 6): 0.1 * 9 * (1 + 2 + 3) at interior positions.
    assert abs(float(act_max) - 5.4) < 1e-3
    assert printed['eval'] == str(FAKE_QUANTS)
    assert printed['symmetric'] == str(FAKE_QUANTS)
    assert "No module named 'tensorflow.contrib.slim'" in printed['slim:']
    assert 'provides only tensorflow.contrib.quantize' in printed['slim:']


def test_alias_is_idempotent_and_holds_quantize_only(tmp_path):
    printed = _run('''
        import sys
        import tf1_quantize
        tf1_quantize.install_as_contrib()
        finders = len(sys.meta_path)
        tf1_quantize.install_as_contrib()
        import tensorflow as tf
        import tensorflow.compat.v1 as v1
        import tensorflow.contrib as contrib
        print('same', all(m.quantize is tf1_quantize for m in (
            contrib, tf.contrib, tf.compat.v1.contrib, v1.contrib)),
            len(sys.meta_path) == finders)
        print('dunder', hasattr(contrib, '__wrapped__'))
        for name in ('layers', 'quantize.python'):
            try:
                exec('import tensorflow.contrib.' + name)
            except ModuleNotFoundError as error:
                print(name, error.name)
        try:
            tf.contrib.slim
        except ModuleNotFoundError as error:
            print('attribute', type(error).__name__, error.name)
        ''', tmp_path)
    assert printed == {
        'same': 'True True',
        'dunder': 'False',
        'layers': 'tensorflow.contrib.layers',
        'quantize.python': 'tensorflow.contrib.quantize.python',
        'attribute': 'ModuleNotFoundError tensorflow.contrib.slim',
    }


def test_alias_never_replaces_an_existing_contrib(tmp_path):
    printed = _run('''
        import sys
        import types
        import tf1_quantize
        other = types.ModuleType('tensorflow.contrib')
        sys.modules['tensorflow.contrib'] = other
        try:
            tf1_quantize.install_as_contrib()
        except RuntimeError as error:
            print('refused', 'does not replace it' in str(error))
        import tensorflow as tf
        print('kept', sys.modules['tensorflow.contrib'] is other,
              hasattr(tf, 'contrib'))
        ''', tmp_path)
    assert printed == {'refused': 'True', 'kept': 'True False'}
