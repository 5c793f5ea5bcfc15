"""protocol.bpickle: the spec's vectors, strictness, and properties."""

from __future__ import annotations

import ast
import enum
import json
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.bpickle import DEFAULT_MAX_LENGTH, DecodeError, EncodeError, dumps, loads

DATA = Path(__file__).parent / "data"
VECTORS = json.loads((DATA / "bpickle-vectors.json").read_text())
MALFORMED = json.loads((DATA / "bpickle-malformed.json").read_text())["malformed_hex"]


def _same(a, b) -> bool:
    """Equality that also compares types (True == 1 and 1 == 1.0 in Python) and NaN."""
    if type(a) is not type(b):
        return False
    if type(a) is float:
        return a == b or (math.isnan(a) and math.isnan(b))
    if type(a) in (list, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if type(a) is dict:
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


# --- the spec's vectors ---------------------------------------------------------------


@pytest.mark.parametrize("vector", VECTORS, ids=[v["ascii"][:30] for v in VECTORS])
def test_vector_encodes_byte_for_byte(vector):
    assert dumps(ast.literal_eval(vector["value"])) == bytes.fromhex(vector["hex"])


@pytest.mark.parametrize("vector", VECTORS, ids=[v["ascii"][:30] for v in VECTORS])
def test_vector_decodes(vector):
    decoded = loads(bytes.fromhex(vector["hex"]))
    assert _same(decoded, ast.literal_eval(vector["decodes_to"]))
    # ... and re-encodes to the very same bytes.
    assert dumps(decoded) == bytes.fromhex(vector["hex"])


@pytest.mark.parametrize("hex_input", MALFORMED)
def test_malformed_vector_raises_decode_error(hex_input):
    with pytest.raises(DecodeError):
        loads(bytes.fromhex(hex_input))


def test_spec_worked_examples():
    assert dumps({"b": 1, "a": None}) == b"du1:anu1:bi1;;"
    assert dumps({"messages": True}) == b"du8:messagesb1;"
    assert dumps({"type": "set-id", "id": b"abc", "insecure-id": 5}) == (
        b"du2:ids3:abcu11:insecure-idi5;u4:typeu6:set-id;"
    )
    message = {
        "type": "operation-result",
        "operation-id": 7,
        "status": 6,
        "result-text": "ok\n",
        "api": b"3.3",
        "timestamp": 1700000000,
    }
    wire = (
        b"du3:apis3:3.3u12:operation-idi7;u11:result-textu3:ok\nu6:statusi6;"
        b"u9:timestampi1700000000;u4:typeu16:operation-result;"
    )
    assert dumps(message) == wire
    assert loads(wire) == message
    assert dumps("héllo") == b"u6:h\xc3\xa9llo"
    assert dumps(True) == b"b1" and dumps(1) == b"i1;"  # bool is not taken for int


# --- what the real client sends is accepted ---------------------------------------------


def test_bytes_dict_keys_decode_to_str():
    assert loads(b"ds1:ai1;;") == {"a": 1}
    assert loads(b"du1:ai1;;") == {"a": 1}
    # Only keys: bytes values stay bytes, also inside nested dicts.
    assert loads(b"ds10:server-apis3:3.2;") == {"server-api": b"3.2"}
    assert loads(b"ds1:ads1:bs1:c;;") == {"a": {"b": b"c"}}


def test_unsorted_keys_and_leading_zeros_are_accepted():
    assert loads(b"du1:bi1;u1:ai2;;") == {"a": 2, "b": 1}
    assert loads(b"i007;") == 7
    assert loads(b"i-007;") == -7
    assert loads(b"u03:abc") == "abc"
    assert loads(b"s002:ab") == b"ab"


def test_memoryview_and_bytearray_input():
    assert loads(memoryview(b"li1;;")) == [1]
    assert loads(bytearray(b"n")) is None


def test_non_bytes_input_is_a_programming_error():
    with pytest.raises(TypeError):
        loads("i1;")  # type: ignore[arg-type]


# --- strictness: each case of the issue ---------------------------------------------------


def _offset_of(data: bytes, **kwargs) -> int:
    with pytest.raises(DecodeError) as info:
        loads(data, **kwargs)
    assert isinstance(info.value, ValueError)
    assert str(info.value).startswith(f"invalid bpickle at byte {info.value.offset}: ")
    return info.value.offset


def test_empty_input():
    assert _offset_of(b"") == 0


def test_unknown_type_letter():
    assert _offset_of(b"q") == 0
    assert _offset_of(b"li1;x;") == 4


def test_missing_terminator():
    assert _offset_of(b"i12") == 0
    assert _offset_of(b"f1.5") == 0
    assert _offset_of(b"li1;") == 4  # the list is never closed
    assert _offset_of(b"du1:ai1;") == 8
    assert _offset_of(b"u12") == 0  # the length has no ':'


def test_negative_or_non_digit_length():
    assert _offset_of(b"s-1:") == 0
    assert _offset_of(b"u-1:a") == 0
    assert _offset_of(b"u+1:a") == 0
    assert _offset_of(b"u 1:a") == 0
    assert _offset_of(b"u:a") == 0


def test_length_past_the_end():
    assert _offset_of(b"s5:abc") == 0
    assert _offset_of(b"lu9:abc;") == 1


def test_truncated_value():
    for data in (b"b", b"u", b"u3", b"i", b"d", b"lli1;", b"du1:a"):
        _offset_of(data)


def test_trailing_bytes():
    assert _offset_of(b"i1;trailing") == 3
    assert _offset_of(b"nn") == 1
    assert _offset_of(b"l;;") == 2


def test_invalid_utf8():
    assert _offset_of(b"u2:\xc3") == 0
    assert _offset_of(b"li1;u1:\xff;") == 4
    assert _offset_of(b"u2:\xed\xa0") == 0  # a surrogate is not valid UTF-8


def test_bool_other_than_b0_b1():
    assert _offset_of(b"b2") == 0
    assert _offset_of(b"b7") == 0
    assert _offset_of(b"bx") == 0
    assert loads(b"b0") is False and loads(b"b1") is True


@pytest.mark.parametrize(
    "data", [b"i+5;", b"i 5;", b"i5 ;", b"i;", b"i-;", b"i--5;", b"i1_000;", b"i0x10;", b"i\xd9\xa1;", b"i1.5;"]
)
def test_bad_int_text(data):
    assert _offset_of(data) == 0


def test_bad_float_text():
    for data in (b"f;", b"f 1.5;", b"f1_0.5;", b"finfinity;", b"f+1.0;", b"f1.5x;", b"fNaN;"):
        assert _offset_of(data) == 0
    assert loads(b"f1e+20;") == 1e20
    assert loads(b"f-inf;") == -math.inf
    assert math.isnan(loads(b"fnan;"))


def test_repeated_dict_key_names_its_offset():
    assert _offset_of(b"du1:ai1;u1:ai2;;") == 8
    # The same key once as str and once as bytes is still the same key.
    assert _offset_of(b"du1:ai1;s1:ai2;;") == 8
    # 1 and True are the same dict key in Python.
    assert _offset_of(b"di1;nb1n;") == 5


def test_unhashable_or_odd_dict_keys():
    assert _offset_of(b"dli1;;i1;;") == 1
    assert _offset_of(b"du1:a;") == 5  # a key without a value


def test_non_ascii_bytes_key():
    assert _offset_of(b"ds2:\xc3\xa9i1;;") == 1
    # As a value, non-ASCII bytes are fine.
    assert loads(b"du1:as1:\xff;") == {"a": b"\xff"}


def test_nesting_limit():
    assert loads(b"l" * 64 + b";" * 64) is not None
    assert _offset_of(b"l" * 65 + b";" * 65) == 64
    assert _offset_of(b"llli1;;;;", max_depth=2) == 2
    assert loads(b"lli1;;;", max_depth=2) == [[1]]
    # Far beyond Python's recursion limit: still only DecodeError.
    assert _offset_of(b"l" * 100_000) == 64
    assert _offset_of(b"l" * 100_000, max_depth=200_000) == 100_000


def test_length_limit():
    assert _offset_of(b"u5:hello", max_length=7) == 7
    assert loads(b"u5:hello", max_length=8) == "hello"
    assert DEFAULT_MAX_LENGTH >= 16 * 1024 * 1024


def test_huge_digit_strings_are_decode_errors():
    assert _offset_of(b"i" + b"9" * 5000 + b";") == 0
    assert _offset_of(b"u" + b"9" * 5000 + b":") == 0


def test_semicolon_outside_a_container():
    assert _offset_of(b";") == 0


# --- encoding -----------------------------------------------------------------------------


class _Color(enum.IntEnum):
    RED = 1


class _MyStr(str):
    pass


@pytest.mark.parametrize("value", [_Color.RED, _MyStr("x"), {1, 2}, frozenset(), object(), 1j, bytearray(b"x")])
def test_unsupported_types_are_refused_by_name(value):
    with pytest.raises(EncodeError) as info:
        dumps(value)
    assert type(value).__qualname__ in str(info.value)
    assert isinstance(info.value, TypeError) and isinstance(info.value, ValueError)


def test_unsupported_type_nested_in_a_dict():
    with pytest.raises(EncodeError, match="IntEnum|_Color"):
        dumps({"status": [_Color.RED]})


def test_unsortable_keys_are_refused():
    with pytest.raises(EncodeError):
        dumps({"a": 1, b"b": 2})
    with pytest.raises(EncodeError):
        dumps({"a": 1, 2: 2})


def test_unencodable_str_is_refused():
    with pytest.raises(EncodeError):
        dumps("\udc80")


def test_circular_structure_is_refused():
    loop: list = []
    loop.append(loop)
    with pytest.raises(EncodeError, match="circular"):
        dumps(loop)


# --- properties ---------------------------------------------------------------------------

_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.binary(max_size=40)
    | st.text(max_size=40)
)
_keys = st.text(max_size=12) | st.integers()
_values = st.recursive(
    _scalars,
    lambda children: (
        st.lists(children, max_size=6)
        | st.lists(children, max_size=6).map(tuple)
        | st.dictionaries(st.text(max_size=12), children, max_size=6)
        | st.dictionaries(st.integers(), children, max_size=6)
    ),
    max_leaves=40,
)


@settings(max_examples=500)
@given(_values)
def test_round_trip(value):
    encoded = dumps(value)
    decoded = loads(encoded)
    assert _same(decoded, value)
    assert dumps(decoded) == encoded


@settings(max_examples=3000)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_decode_error(data):
    try:
        loads(data)
    except DecodeError as e:
        assert 0 <= e.offset <= len(data)


_letters = st.sampled_from([b"i", b"u", b"s", b"d", b"l", b"t", b"b", b"n", b"f", b";", b":", b"0", b"1", b"-", b"9"])


@settings(max_examples=3000)
@given(st.lists(_letters | st.binary(max_size=3), max_size=40).map(b"".join))
def test_bpickle_like_bytes_raise_only_decode_error(data):
    # Arbitrary bytes rarely look like bpickle; these mostly do, so they reach
    # deep into the decoder.
    try:
        loads(data)
    except DecodeError as e:
        assert 0 <= e.offset <= len(data)


@settings(max_examples=1000)
@given(_values, st.data())
def test_every_truncation_of_a_valid_value_is_a_decode_error(value, data):
    encoded = dumps(value)
    cut = data.draw(st.integers(min_value=0, max_value=len(encoded) - 1))
    with pytest.raises(DecodeError):
        loads(encoded[:cut])
