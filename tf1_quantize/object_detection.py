"""The Object Detection API's `graph_rewriter` for TF1 pipelines, on TF 2.

A TF1 Object Detection API `pipeline.config` may hold

    graph_rewriter {
      quantization { delay: 48000 weight_bits: 8 activation_bits: 8 }
    }

which the OD API turned into a quantization-aware training rewrite with
`graph_rewriter_builder.build(config, is_training)`. On TF 2 that builder has
no `tf.contrib.quantize` to call. `build_graph_rewriter` is a replacement:

    rewrite = build_graph_rewriter(configs['graph_rewriter_config'], True)
    rewrite()  # rewrites the default graph, as the OD API's function did

It reads the OD API's proto message, a dict, or the text of the block (or of
a whole `pipeline.config`); no OD API install is needed.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, List, Mapping, Optional

import tensorflow as tf

from tf1_quantize import api

# The OD API's graph_rewriter.proto: Quantization fields and their defaults.
_DEFAULTS = {'delay': 500000, 'weight_bits': 8, 'activation_bits': 8,
             'symmetric': False}
_BLOCK = 'graph_rewriter'
_MESSAGE = 'quantization'
_TRUE = ('true', 'True', 't', '1')
_FALSE = ('false', 'False', 'f', '0')


@dataclasses.dataclass(frozen=True)
class QuantizationConfig:
    """The `quantization` message of an OD API `graph_rewriter` block.

    Attributes:
        delay: training steps before quantized values are used.
        weight_bits: bits of weight quantization.
        activation_bits: bits of activation quantization.
        symmetric: symmetric ranges (int8 TFLite needs them).
    """
    delay: int = _DEFAULTS['delay']
    weight_bits: int = _DEFAULTS['weight_bits']
    activation_bits: int = _DEFAULTS['activation_bits']
    symmetric: bool = _DEFAULTS['symmetric']


def build_graph_rewriter(config: Any, is_training: bool
                         ) -> Callable[[Optional[tf.Graph]], None]:
    """The OD API's `graph_rewriter_builder.build`, calling this library.

    The returned function rewrites a graph (the default graph when called
    without one, as the OD API's did): training with
    `experimental_create_training_graph(quant_delay=delay, weight_bits=...,
    activation_bits=..., symmetric=...)`, eval with
    `experimental_create_eval_graph` with the same bits and symmetry and no
    delay. Unlike the OD API, `symmetric` is honoured and bit widths other
    than 8 are allowed.

    Args:
        config: the OD API's `GraphRewriter` message (or any object with a
            `quantization` attribute holding the fields), a dict such as
            `{'quantization': {'delay': 48000}}`, or protobuf text: the
            `graph_rewriter { ... }` block, its body, or a whole
            `pipeline.config` holding one such block.
        is_training: build the training rewrite, else the eval rewrite.

    Returns:
        A function `graph_rewrite_fn(input_graph=None)`.

    Raises:
        ValueError: unknown fields, bad values or unparsable text.
        TypeError: if `config` is none of the accepted kinds.
    """
    settings = parse_graph_rewriter(config)

    def graph_rewrite_fn(input_graph: Optional[tf.Graph] = None) -> None:
        graph = (tf.compat.v1.get_default_graph() if input_graph is None
                 else input_graph)
        bits = dict(weight_bits=settings.weight_bits,
                    activation_bits=settings.activation_bits,
                    symmetric=settings.symmetric)
        if is_training:
            api.experimental_create_training_graph(
                graph, quant_delay=settings.delay, **bits)
        else:
            api.experimental_create_eval_graph(graph, **bits)

    return graph_rewrite_fn


def parse_graph_rewriter(config: Any) -> QuantizationConfig:
    """Reads the quantization settings of a `graph_rewriter` config.

    Args:
        config: as for `build_graph_rewriter`.

    Returns:
        A `QuantizationConfig`; fields not given take the OD API's defaults.

    Raises:
        ValueError: unknown fields, bad values or unparsable text.
        TypeError: if `config` is none of the accepted kinds.
    """
    if isinstance(config, str):
        return _settings(_block_body(_parse_text(config)))
    if isinstance(config, Mapping):
        return _settings(_fields_of(config))
    if hasattr(config, _MESSAGE):
        message = getattr(config, _MESSAGE)
        return _settings([_Field(_MESSAGE, [
            _Field(name, getattr(message, name), None)
            for name in _DEFAULTS if hasattr(message, name)], None)])
    raise TypeError('A graph_rewriter config is a GraphRewriter message, a '
                    'dict or protobuf text, got %s' % type(config).__name__)


@dataclasses.dataclass(frozen=True)
class _Field:
    name: str
    value: Any  # A list of _Field for a message, a tuple for a list.
    line: Optional[int]

    def where(self) -> str:
        return '' if self.line is None else ' (line %d)' % self.line


def _fields_of(mapping: Mapping) -> List[_Field]:
    return [_Field(name, _fields_of(value) if isinstance(value, Mapping)
                   else value, None) for name, value in mapping.items()]


def _block_body(fields: List[_Field]) -> List[_Field]:
    """The body of the one `graph_rewriter` block, or the text itself."""
    blocks = [field for field in fields if field.name == _BLOCK]
    if len(blocks) > 1:
        raise ValueError('More than one graph_rewriter block, at lines %s' %
                         ', '.join(str(block.line) for block in blocks))
    if not blocks:
        if not fields:
            raise ValueError('No graph_rewriter block in the text')
        for field in fields:
            if field.name != _MESSAGE:
                raise ValueError(
                    'Unknown field %r%s: expected a graph_rewriter { ... } '
                    'block, its body quantization { ... }, or a '
                    'pipeline.config holding one graph_rewriter block' %
                    (field.name, field.where()))
        return fields
    if not isinstance(blocks[0].value, list):
        raise ValueError('graph_rewriter%s must be a block { ... }' %
                         blocks[0].where())
    return blocks[0].value


def _settings(body: List[_Field]) -> QuantizationConfig:
    values = {}
    for message in _known(body, (_MESSAGE,), _BLOCK):
        if not isinstance(message.value, list):
            raise ValueError('quantization%s must be a message { ... }' %
                             message.where())
        for field in _known(message.value, tuple(_DEFAULTS), _MESSAGE):
            convert = _bool if field.name == 'symmetric' else _int
            values[field.name] = convert(field)
    return QuantizationConfig(**values)


def _known(fields: List[_Field], names, parent: str) -> List[_Field]:
    seen = set()
    for field in fields:
        if field.name not in names:
            raise ValueError('Unknown field %r in %s%s; known fields: %s' % (
                field.name, parent, field.where(), ', '.join(names)))
        if field.name in seen:
            raise ValueError('Field %r given twice in %s%s' %
                             (field.name, parent, field.where()))
        seen.add(field.name)
    return fields


def _int(field: _Field) -> int:
    value = field.value
    if isinstance(value, str):
        try:
            return int(value, 0)
        except ValueError:
            pass
    elif isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ValueError('%s%s must be an integer, got %r' %
                     (field.name, field.where(), value))


def _bool(field: _Field) -> bool:
    value = field.value
    if isinstance(value, bool):
        return value
    if value in _TRUE or value in _FALSE:
        return value in _TRUE
    raise ValueError('%s%s must be true or false, got %r' %
                     (field.name, field.where(), value))


# ----------------------------------------------- protobuf text format

_TOKENS = re.compile(r'''
    (?P<skip>\s+|\#[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<word>[-+.\w]+)
  | (?P<punct>[{}<>:;,\[\]])
''', re.VERBOSE)
_CLOSING = {'{': '}', '<': '>'}


def _parse_text(text: str) -> List[_Field]:
    """Parses protobuf text into `_Field`s, checking structure only."""
    tokens, line, position = [], 1, 0
    while position < len(text):
        match = _TOKENS.match(text, position)
        if not match:
            raise ValueError('Cannot parse the config at line %d: %r' %
                             (line, text[position:position + 20]))
        if match.lastgroup != 'skip':
            tokens.append((match.group(), line))
        line += match.group().count('\n')
        position = match.end()
    fields, end = _parse_fields(tokens, 0, None)
    if end < len(tokens):
        raise ValueError('Unexpected %r at line %d' % tokens[end])
    return fields


def _parse_fields(tokens, index, closing):
    """Fields up to `closing` (None: the end); returns (fields, index)."""
    fields = []
    while True:
        if index == len(tokens):
            if closing:
                raise ValueError('Missing %r at the end of the config' %
                                 closing)
            return fields, index
        text, line = tokens[index]
        if text == closing:
            return fields, index
        if text == '[':  # An extension's name: [package.name].
            end = _find(tokens, index, ']')
            name = ''.join(t for t, _ in tokens[index:end + 1])
            index = end + 1
        elif re.match(r'[A-Za-z_]\w*$', text):
            name, index = text, index + 1
        else:
            raise ValueError('Expected a field name at line %d, got %r' %
                             (line, text))
        if _at(tokens, index) == ':':
            index += 1
        value, index = _parse_value(tokens, index, line)
        fields.append(_Field(name, value, line))
        if _at(tokens, index) in (',', ';'):
            index += 1


def _parse_value(tokens, index, line):
    text = _at(tokens, index)
    if text in _CLOSING:
        value, index = _parse_fields(tokens, index + 1, _CLOSING[text])
        return value, index + 1
    if text == '[':  # A list of scalars.
        end = _find(tokens, index, ']')
        return tuple(t for t, _ in tokens[index + 1:end] if t != ','), end + 1
    if text is None or text in ('}', '>', ']', ':', ';', ','):
        raise ValueError('Expected a value at line %d' % line)
    return text, index + 1


def _at(tokens, index) -> Optional[str]:
    return tokens[index][0] if index < len(tokens) else None


def _find(tokens, index, text) -> int:
    for end in range(index, len(tokens)):
        if tokens[end][0] == text:
            return end
    raise ValueError('Missing %r after line %d' % (text, tokens[index][1]))
