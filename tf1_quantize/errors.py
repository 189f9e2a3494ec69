"""The errors the rewrite raises. All are `ValueError`s, as contrib's were."""


class QuantizeError(ValueError):
    """A rewrite was refused; the graph was left untouched."""


class UnsupportedGraphError(QuantizeError):
    """The graph holds a structure the rewrite cannot handle correctly."""
