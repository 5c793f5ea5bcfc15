"""bpickle: the wire encoding of Landscape's message system.

Every value starts with one ASCII type letter::

    bool   b1 / b0                        (no terminator)
    int    i<decimal>;                    i42;  i-7;
    float  f<repr(x)>;                    f1.5;  f1e+20;  finf;  fnan;
    bytes  s<byte length>:<raw bytes>     s2:hi
    str    u<UTF-8 byte length>:<UTF-8>   u6:h\\xc3\\xa9llo  (the length counts bytes)
    list   l<item>*;                      li1;u1:a;
    tuple  t<item>*;                      ts1:x;
    dict   d(<key><value>)*;              du1:anu1:bi1;;   (keys sorted when encoding)
    None   n

:func:`dumps` dispatches on the *exact* type, like landscape's encoder: ``int``
subclasses (``IntEnum``), ``str`` subclasses, ``set`` and anything else raise
:class:`EncodeError` naming the type.

:func:`loads` is strict where landscape's decoder is lenient (section R of the
message-system spec): empty input, an unknown type letter, a missing terminator,
a length past the end, trailing bytes after the top-level value, invalid UTF-8, a
bool other than ``b0``/``b1``, an int other than an optional ``-`` and ASCII
digits, a float that is not a plain decimal/exponent/``inf``/``nan``, a repeated
or unhashable dict key, nesting deeper than ``max_depth`` and input longer than
``max_length`` all raise :class:`DecodeError` -- and nothing else is ever raised
for bad bytes. It still accepts what the real client sends: ``s`` (bytes) dict
keys are decoded to ``str`` as ASCII, dict keys may come in any order, and ints
and lengths may have leading zeros.

The decoder is one flat loop with an explicit stack (no recursion, so no
``RecursionError``), and it finds terminators with ``bytes.index`` rather than
looking at one byte at a time: ``bench/bpickle_bench.py`` measures it.
"""

from __future__ import annotations

import re

__all__ = ["DEFAULT_MAX_DEPTH", "DEFAULT_MAX_LENGTH", "DecodeError", "EncodeError", "dumps", "loads"]

#: Default limit of :func:`loads` on the input size, in bytes (64 MiB).
DEFAULT_MAX_LENGTH = 64 * 1024 * 1024
#: Default limit of :func:`loads` on container nesting.
DEFAULT_MAX_DEPTH = 64
# Encoding refuses deeper nesting than this: it is almost certainly a cycle, and
# the limit keeps the recursive encoder far from Python's recursion limit.
_MAX_ENCODE_DEPTH = 500


class DecodeError(ValueError):
    """Bytes that are not one valid bpickle value.

    ``offset`` is the byte offset in the input where the problem was found.
    """

    def __init__(self, reason: str, offset: int) -> None:
        super().__init__(f"invalid bpickle at byte {offset}: {reason}")
        self.reason = reason
        self.offset = offset


class EncodeError(TypeError, ValueError):
    """A value bpickle cannot encode (an unsupported type, unsortable dict keys...)."""


# --- encoding ---------------------------------------------------------------------


def dumps(obj: object) -> bytes:
    """Encode ``obj`` as bpickle.

    Supported types, matched exactly (no subclasses): ``bool``, ``int``,
    ``float``, ``bytes``, ``str``, ``list``, ``tuple``, ``dict`` and ``None``.
    Dict keys are sorted, so equal values always give equal bytes.

    :raises EncodeError: for an unsupported type (the message names it), dict
        keys that cannot be sorted together, a ``str`` that is not encodable as
        UTF-8 (lone surrogates), or nesting deeper than 500 (a cycle).
    """
    parts: list[bytes] = []
    _encode(obj, parts.append, 0)
    return b"".join(parts)


def _encode(obj: object, out, depth: int) -> None:
    t = type(obj)
    if t is str:
        try:
            raw = obj.encode("utf-8")  # type: ignore[union-attr]
        except UnicodeEncodeError as e:
            raise EncodeError(f"cannot encode str as UTF-8: {e.reason} at index {e.start}") from None
        out(b"u%d:" % len(raw))
        out(raw)
    elif t is int:
        out(b"i%d;" % obj)
    elif t is dict:
        if depth >= _MAX_ENCODE_DEPTH:
            raise EncodeError(f"nesting deeper than {_MAX_ENCODE_DEPTH} (a circular structure?)")
        try:
            keys = sorted(obj)  # type: ignore[call-overload]
        except TypeError as e:
            raise EncodeError(f"dict keys cannot be sorted: {e}") from None
        out(b"d")
        depth += 1
        for key in keys:
            _encode(key, out, depth)
            _encode(obj[key], out, depth)  # type: ignore[index]
        out(b";")
    elif t is bytes:
        out(b"s%d:" % len(obj))  # type: ignore[arg-type]
        out(obj)  # type: ignore[arg-type]
    elif t is bool:
        out(b"b1" if obj else b"b0")
    elif obj is None:
        out(b"n")
    elif t is list or t is tuple:
        if depth >= _MAX_ENCODE_DEPTH:
            raise EncodeError(f"nesting deeper than {_MAX_ENCODE_DEPTH} (a circular structure?)")
        out(b"l" if t is list else b"t")
        depth += 1
        for item in obj:  # type: ignore[attr-defined]
            _encode(item, out, depth)
        out(b";")
    elif t is float:
        out(b"f%s;" % repr(obj).encode("ascii"))
    else:
        raise EncodeError(f"bpickle cannot encode values of type {t.__module__}.{t.__qualname__}")


# --- decoding ---------------------------------------------------------------------

# Type letters as the ints that indexing bytes gives.
_U, _I, _SEMI, _D, _S, _L, _T, _B, _N, _F = b"ui;dsltbnf"
_ZERO, _ONE = ord("0"), ord("1")
_FLOAT = re.compile(rb"-?(?:(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?|inf)|nan")

# The canonical text of 0..999 and its value: one dict lookup both validates and
# converts most lengths and ints (anything else takes the isdigit()/int() path).
_SMALL_INTS = {b"%d" % i: i for i in range(1000)}


def loads(data: bytes, *, max_depth: int = DEFAULT_MAX_DEPTH, max_length: int = DEFAULT_MAX_LENGTH) -> object:
    """Decode exactly one bpickle value that spans all of ``data``.

    ``data`` may be ``bytes``, ``bytearray`` or ``memoryview``. ``max_depth``
    bounds container nesting (a top-level list is depth 1); ``max_length``
    bounds ``len(data)``. Dict keys sent as bytes (``s``) are decoded to ``str``
    as ASCII.

    :raises DecodeError: for anything but one well-formed value (see the module
        docstring); ``.offset`` says where. Nothing else is raised for bad input.
    :raises TypeError: if ``data`` is not bytes-like (a programming error).
    """
    if type(data) is not bytes:
        if isinstance(data, (bytes, bytearray, memoryview)):
            data = bytes(data)
        else:
            raise TypeError(f"bpickle.loads needs bytes, not {type(data).__name__}")
    n = len(data)
    if n > max_length:
        raise DecodeError(f"input of {n} bytes is longer than the limit of {max_length}", max_length)
    if not n:
        raise DecodeError("empty input", 0)

    index = data.index
    small = _SMALL_INTS.get
    # Enclosing containers as (items, kind, start offset); the bottom entry is
    # the top level, (None, -1, 0), so a value is complete when it is popped.
    stack: list = []
    limit = max_depth
    items: list | None = None  # the items of the innermost open container
    kind = -1  # its kind: 0 list, 1 tuple, 2 dict (keys and values alternate)
    start = 0  # its offset
    pos = 0
    value: object = None
    # Type letters are compared as literal ints (what indexing bytes gives):
    # u=117 i=105 ;=59 d=100 s=115 l=108 n=110 b=98 t=116 f=102.
    # The loop is unrolled on purpose (the u and s branches repeat): a helper call per token is slower.
    try:
        while True:
            tok = pos
            c = data[pos]  # IndexError here: the input ended where a value was due
            if c == 117:  # u
                if data[pos + 2] == 58:  # a one-digit length and ':', as most keys have
                    size = data[pos + 1] - 48
                    if size < 0 or size > 9:
                        raise DecodeError("str length is not ASCII digits", tok)
                    begin = pos + 3
                else:
                    colon = index(b":", pos + 1)
                    text = data[pos + 1 : colon]
                    size = small(text)
                    if size is None:
                        if not text.isdigit():
                            raise DecodeError("str length is not ASCII digits", tok)
                        size = int(text)
                    begin = colon + 1
                pos = begin + size
                if pos > n:
                    raise DecodeError(f"str of {size} bytes runs past the end of the input", tok)
                value = data[begin:pos].decode()
            elif c == 105:  # i
                if data[pos + 2] == 59:  # one digit and ';'
                    value = data[pos + 1] - 48
                    if value < 0 or value > 9:
                        raise DecodeError(f"int {data[pos + 1 : pos + 2]!r} is not ASCII digits", tok)
                    pos += 3
                else:
                    semi = index(b";", pos + 1)
                    text = data[pos + 1 : semi]
                    value = small(text)
                    if value is None:
                        if not text.isdigit() and not (text[:1] == b"-" and text[1:].isdigit()):
                            raise DecodeError(f"int {text[:40]!r} is not an optional '-' and ASCII digits", tok)
                        value = int(text)
                    pos = semi + 1
            elif c == 59:  # ;
                if kind == 2:
                    it = iter(items)  # type: ignore[arg-type]
                    try:
                        value = dict(zip(it, it))
                        ok = len(value) * 2 == len(items)  # type: ignore[arg-type]
                    except TypeError:  # an unhashable key
                        ok = False
                    if not ok:
                        if len(items) % 2:  # type: ignore[arg-type]
                            raise DecodeError("dict has a key without a value", tok)
                        _bad_dict_key(data, start)
                elif kind == 0:
                    value = items
                elif kind == 1:
                    value = tuple(items)  # type: ignore[arg-type]
                else:
                    raise DecodeError("';' outside any list, tuple or dict", tok)
                items, kind, start = stack.pop()
                pos += 1
                if items is None:
                    break
                items.append(value)
                continue
            elif c == 100:  # d
                stack.append((items, kind, start))
                if len(stack) > limit:
                    raise DecodeError(f"nesting deeper than the limit of {max_depth}", tok)
                items = []
                kind = 2
                start = pos
                pos += 1
                continue
            elif c == 115:  # s
                if data[pos + 2] == 58:
                    size = data[pos + 1] - 48
                    if size < 0 or size > 9:
                        raise DecodeError("bytes length is not ASCII digits", tok)
                    begin = pos + 3
                else:
                    colon = index(b":", pos + 1)
                    text = data[pos + 1 : colon]
                    size = small(text)
                    if size is None:
                        if not text.isdigit():
                            raise DecodeError("bytes length is not ASCII digits", tok)
                        size = int(text)
                    begin = colon + 1
                pos = begin + size
                if pos > n:
                    raise DecodeError(f"bytes of {size} bytes run past the end of the input", tok)
                value = data[begin:pos]
                if kind == 2 and not len(items) % 2:  # type: ignore[arg-type]
                    # A dict key: landscape decodes bytes keys to str as ASCII.
                    value = value.decode("ascii")
            elif c == 108 or c == 116:  # l, t
                stack.append((items, kind, start))
                if len(stack) > limit:
                    raise DecodeError(f"nesting deeper than the limit of {max_depth}", tok)
                items = []
                kind = 0 if c == 108 else 1
                start = pos
                pos += 1
                continue
            elif c == 110:  # n
                value = None
                pos += 1
            elif c == 98:  # b
                d = data[pos + 1]
                if d == 49:
                    value = True
                elif d == 48:
                    value = False
                else:
                    raise DecodeError("bool is neither b0 nor b1", tok)
                pos += 2
            elif c == 102:  # f
                semi = index(b";", pos + 1)
                text = data[pos + 1 : semi]
                if _FLOAT.fullmatch(text) is None:
                    raise DecodeError(f"float {text[:40]!r} is not a decimal number, inf or nan", tok)
                value = float(text)
                pos = semi + 1
            else:
                raise DecodeError(f"unknown type letter {bytes([c])!r}", tok)

            if items is None:
                break
            items.append(value)
    except DecodeError:
        raise
    except IndexError:
        if tok < n and data[tok] == 105 and b";" in data[tok:]:  # a short int text such as "i;"
            text = data[tok + 1 : data.index(b";", tok)]
            raise DecodeError(f"int {text!r} is not an optional '-' and ASCII digits", tok) from None
        raise DecodeError(_ended(stack, items), n) from None
    except UnicodeDecodeError as e:
        what = "dict key sent as bytes is not ASCII" if data[tok] == 115 else "str is not valid UTF-8"
        raise DecodeError(what, tok) from None
    except ValueError:
        # bytes.index found no terminator, or int() refused a digit string
        # longer than Python's int-conversion limit.
        letter = chr(data[tok])
        terminator = ":" if letter in "us" else ";"
        if terminator.encode() not in data[tok:]:
            reason = f"no {terminator!r} after the {letter!r} value's text"
        else:
            reason = "number has too many digits"
        raise DecodeError(reason, tok) from None
    if pos != n:
        raise DecodeError(f"{n - pos} trailing bytes after the value", pos)
    return value


def _ended(stack: list, items: list | None) -> str:
    if items is None:
        return "input ended in the middle of a value"
    return f"input ended inside {len(stack)} unterminated list, tuple or dict"


def _skip(data: bytes, pos: int) -> int:
    """The offset just after the (already validated) value starting at ``pos``."""
    depth = 0
    while True:
        c = data[pos]
        if c == _U or c == _S:
            colon = data.index(b":", pos)
            pos = colon + 1 + int(data[pos + 1 : colon])
        elif c == _I or c == _F:
            pos = data.index(b";", pos) + 1
        elif c == _B:
            pos += 2
        elif c == _N:
            pos += 1
        elif c == _SEMI:
            depth -= 1
            pos += 1
        else:  # d, l, t
            depth += 1
            pos += 1
            continue
        if depth == 0:
            return pos


def _bad_dict_key(data: bytes, start: int) -> None:
    """Raise the DecodeError for the first repeated or unhashable key of a dict.

    Called only on that error path: the dict's bytes are valid up to its end,
    so walking them again just to find the offending key's offset is cheap and
    keeps key offsets out of the hot loop.
    """
    seen: set = set()
    pos = start + 1
    while data[pos] != _SEMI:
        key_at = pos
        end = _skip(data, pos)
        key = loads(data[pos:end], max_depth=len(data))
        if type(key) is bytes:
            key = key.decode("ascii")
        try:
            repeated = key in seen
        except TypeError:
            raise DecodeError(f"dict key of type {type(key).__name__} is not hashable", key_at) from None
        if repeated:
            raise DecodeError(f"repeated dict key {key!r}", key_at)
        seen.add(key)
        pos = _skip(data, end)
    raise AssertionError("unreachable: the dict had no bad key")  # pragma: no cover
