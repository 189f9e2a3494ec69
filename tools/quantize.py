"""`tools/bazel run //tools:quantize -- COMMAND ...`: the tf1_quantize CLI."""

import sys

from tf1_quantize import cli

if __name__ == '__main__':
    cli.enter_caller_directory()
    sys.exit(cli.main())
