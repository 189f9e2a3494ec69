"""`tensorflow.contrib.quantize` as an alias of this library.

TensorFlow 2 no longer ships `tensorflow.contrib`. After one call to
`install_as_contrib()`, a TF 1.15 script's own imports find this library::

    import tf1_quantize; tf1_quantize.install_as_contrib()
    from tensorflow.contrib import quantize as contrib_quantize  # unchanged
    tf.contrib.quantize.create_training_graph(quant_delay=2000)  # unchanged

The alias holds only `quantize`: any other contrib module (`slim`,
`layers`, ...) raises `ModuleNotFoundError` naming it.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types

import tensorflow as tf

CONTRIB = 'tensorflow.contrib'
_LIBRARY = __name__.rpartition('.')[0]


class _ContribModule(types.ModuleType):
    """`tensorflow.contrib` with `quantize` only."""

    def __getattr__(self, name: str):
        if name.startswith('__'):
            raise AttributeError(name)
        raise _missing(name)


class _ContribFinder(importlib.abc.MetaPathFinder):
    """Fails `import tensorflow.contrib.<name>` with a clear message."""

    def find_spec(self, fullname, path=None, target=None):
        del path, target  # Unused.
        prefix = CONTRIB + '.'
        if fullname.startswith(prefix):
            raise _missing(fullname[len(prefix):])
        return None


def _missing(name: str) -> ModuleNotFoundError:
    module = '%s.%s' % (CONTRIB, name)
    return ModuleNotFoundError(
        'No module named %r: TensorFlow 2 has no tensorflow.contrib, and '
        'tf1_quantize.install_as_contrib() provides only '
        'tensorflow.contrib.quantize' % module, name=module)


def _is_ours(module) -> bool:
    return isinstance(module, _ContribModule)


def install_as_contrib() -> None:
    """Makes `tensorflow.contrib.quantize` resolve to `tf1_quantize`.

    Afterwards `from tensorflow.contrib import quantize`, `import
    tensorflow.contrib.quantize`, `tf.contrib.quantize` and
    `tf.compat.v1.contrib.quantize` all give this library. Calling it again
    does nothing.

    Raises:
        RuntimeError: if TensorFlow (or something else) already provides
            `tensorflow.contrib`; it is never replaced.
    """
    library = sys.modules[_LIBRARY]
    # `tf.compat.v1` and `import tensorflow.compat.v1` can be two objects.
    parents = [tf, tf.compat.v1,
               importlib.import_module('tensorflow.compat.v1')]
    existing = [sys.modules.get(CONTRIB)] + [
        getattr(parent, 'contrib', None) for parent in parents]
    existing = [found for found in existing if found is not None]
    if existing and all(_is_ours(found) for found in existing):
        return
    if existing or importlib.machinery.PathFinder.find_spec(
            CONTRIB, tf.__path__):
        raise RuntimeError(
            'tensorflow.contrib already exists (%r); install_as_contrib() '
            'does not replace it' % (existing[0] if existing else CONTRIB))
    contrib = _ContribModule(CONTRIB, __doc__.split('\n')[0])
    contrib.__path__ = []  # A package, so `import contrib.x` asks finders.
    contrib.quantize = library
    sys.meta_path.insert(0, _ContribFinder())
    sys.modules[CONTRIB] = contrib
    sys.modules[CONTRIB + '.quantize'] = library
    for parent in parents:
        parent.contrib = contrib
