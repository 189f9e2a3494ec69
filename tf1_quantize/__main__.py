"""`python -m tf1_quantize`: see `tf1_quantize.cli`."""

import sys

from tf1_quantize import cli

if __name__ == '__main__':
    sys.exit(cli.main())
