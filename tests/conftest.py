"""pytest configuration shared by the tests in this directory.

Puts tests/ on ``sys.path`` so that test files can ``import graph_builders``
however pytest is started (``pytest tests/``, one file, or Bazel's runner).
"""

import os
import sys

_TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)
