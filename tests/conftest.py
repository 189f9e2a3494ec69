"""pytest configuration shared by the tests in this directory.

Puts tests/ on ``sys.path`` so that test files can ``import builders``
however pytest is started (``pytest tests/``, one file, or Bazel's runner).
"""

import os
import sys

_TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

# TF 2.21's oneDNN kernels sometimes abort tiny convolutions ("could not
# create a primitive descriptor for the reorder primitive") depending on what
# ran before in the process; the reference kernels are deterministic. Set
# before any test module imports TensorFlow.
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
