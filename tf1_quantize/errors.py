"""The errors the rewrite raises. All are `ValueError`s, as contrib's were."""


class QuantizeError(ValueError):
    """A rewrite was refused; the graph was left untouched."""


class UnsupportedGraphError(QuantizeError):
    """The graph holds a structure the rewrite cannot handle correctly."""


class RewriteAbortedError(QuantizeError):
    """The rewrite failed after it had started changing the graph, on
    something the checks before it did not foresee. What it changed in
    existing ops and collections was undone (see `graph_edit.transaction`).
    """
