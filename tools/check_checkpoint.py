"""Does a checkpoint restore into a graph? Says which variables are missing,
unexpected or mismatched and why, lists the quantization ranges and
batch-norm statistics it holds, and exits 2 on a mismatch.

    python -m tools.check_checkpoint --meta model.meta --rewrite train \
        --checkpoint old/model.ckpt-100000

Same as `python -m tf1_quantize check ...`.
"""

import sys

from tf1_quantize import cli

if __name__ == '__main__':
    cli.enter_caller_directory()
    sys.exit(cli.main(['check'] + sys.argv[1:]))
