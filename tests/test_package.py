"""Package skeleton test: tf1_quantize imports and has the public API.

Runs under Bazel (//tests:test_package), plain `pytest tests/`, and after
`pip install .`.
"""

import os

import pytest
import tensorflow as tf

import tf1_quantize

# The functions of tf.contrib.quantize that this package replaces, plus
# batch-norm folding.
PUBLIC_FUNCTIONS = (
    "create_training_graph",
    "create_eval_graph",
    "experimental_create_training_graph",
    "experimental_create_eval_graph",
    "fold_batch_norms",
)


@pytest.mark.parametrize("name", PUBLIC_FUNCTIONS)
def test_exposes_public_function(name):
    assert callable(getattr(tf1_quantize, name, None)), (
        "tf1_quantize.%s is missing or not callable" % name)


def test_runs_under_tensorflow_2():
    # Shown with `pytest -s` or `bazel test --test_output=all`.
    print("tf1_quantize from %s, TensorFlow %s" % (
        getattr(tf1_quantize, "__file__", "?"), tf.__version__))
    assert tf.__version__.startswith("2."), tf.__version__
    # tools/bazel passes the TensorFlow version pinned for the venv it set
    # up, so this checks that TF1Q_TF really selects that environment.
    expected = os.environ.get("TF1Q_EXPECT_TF_VERSION")
    if expected:
        assert tf.__version__ == expected, (
            "expected TensorFlow %s from the venv, got %s" % (expected, tf.__version__))
