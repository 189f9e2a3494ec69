"""What a rewrite did, in a form a person can read."""

from __future__ import annotations

import dataclasses
from typing import List

from tf1_quantize.quantize import InsertedQuant


@dataclasses.dataclass
class RewriteReport:
    """The outcome of one rewrite.

    Attributes:
        is_training: whether the training rewrite was built.
        layers: names of the layer ops found (before folding).
        folded: names of the layer ops whose batch norm was folded.
        affine: names of the batch norms no layer could take, rewritten as
            quantized per-channel multiply and add ops.
        fake_quants: the FakeQuant ops inserted.
    """
    is_training: bool
    layers: List[str]
    folded: List[str]
    affine: List[str]
    fake_quants: List[InsertedQuant]

    def __str__(self) -> str:
        lines = ['%s rewrite: %d layers, %d batch norms folded, %d FakeQuant '
                 'ops inserted.' % ('Training' if self.is_training else 'Eval',
                                    len(self.layers), len(self.folded),
                                    len(self.fake_quants))]
        lines += ['  folded: %s' % name for name in self.folded]
        lines += ['  affine (not after a layer): %s' % name
                  for name in self.affine]
        lines += ['  quantized %s with %s' % (q.tensor, q.name)
                  for q in self.fake_quants]
        return '\n'.join(lines)
