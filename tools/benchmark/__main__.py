"""`python -m tools.benchmark` and `tools/bazel run //tools:benchmark`."""

# First: the package sets TF_CPP_MIN_LOG_LEVEL before TensorFlow is imported
# (Bazel runs this file as a script, without importing the package first).
from tools.benchmark import runner  # isort: skip
from tf1_quantize import cli  # isort: skip

if __name__ == '__main__':
    cli.enter_caller_directory()
    runner.main()
