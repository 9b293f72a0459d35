"""msgpack-numpy encoding: round trips, openpi byte layout, refused dtypes and bad arrays."""

from __future__ import annotations

import subprocess
import sys

import msgpack
import numpy as np
import pytest

from dexvla.serve.protocol import ProtocolError, packb, unpackb

from .conftest import openpi_encode


def test_round_trip_of_arrays_scalars_and_plain_values() -> None:
    message = {
        "image": np.arange(24, dtype=np.uint8).reshape(2, 4, 3),
        "state": np.array([1.5, -2.0], np.float32),
        "mask": np.array([True, False]),
        "step": np.int64(7),
        "gain": np.float32(0.25),
        "nested": {"list": [1, "two", None], "bytes": b"\x00\x01"},
    }
    decoded = unpackb(packb(message))
    for key in ("image", "state", "mask"):
        np.testing.assert_array_equal(decoded[key], message[key])
        assert decoded[key].dtype == message[key].dtype
    assert decoded["step"] == 7 and decoded["step"].dtype == np.int64
    assert decoded["gain"].dtype == np.float32
    assert decoded["nested"] == {"list": [1, "two", None], "bytes": b"\x00\x01"}


def test_bytes_match_the_openpi_layout_both_ways() -> None:
    message = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "s": np.int32(3), "t": "x"}
    theirs = msgpack.packb(message, default=openpi_encode, use_bin_type=True)
    assert packb(message) == theirs
    np.testing.assert_array_equal(unpackb(theirs)["a"], message["a"])


def test_non_contiguous_arrays_are_encoded_in_logical_order() -> None:
    array = np.arange(12, dtype=np.int16).reshape(3, 4).T
    np.testing.assert_array_equal(unpackb(packb(array)), array)


@pytest.mark.parametrize(
    "value", [np.array([object()], dtype=object), np.zeros(2, np.complex64), np.zeros(2, "V4")]
)
def test_object_void_and_complex_arrays_are_refused_on_encode(value: np.ndarray) -> None:
    with pytest.raises(ProtocolError):
        packb({"x": value})


def test_unknown_python_objects_are_refused_on_encode() -> None:
    with pytest.raises(TypeError):
        packb({"x": object()})


def raw_array(dtype: str, shape: list, data: bytes) -> bytes:
    return msgpack.packb(
        {"x": {b"__ndarray__": True, b"data": data, b"dtype": dtype, b"shape": shape}},
        use_bin_type=True,
    )


@pytest.mark.parametrize(
    ("message", "match"),
    [
        (raw_array("|O", [1], b"\x00" * 8), "not allowed"),
        (raw_array("<c8", [1], b"\x00" * 8), "not allowed"),
        (raw_array("<f4", [3], b"\x00" * 8), "needs 12 bytes"),
        (raw_array("<f4", [-1], b""), "non-negative"),
        (raw_array("no-such-dtype", [1], b"\x00"), "dtype"),
        (b"\xc1\x00\xff", "not a valid msgpack"),
        (msgpack.packb({1: 2}), "not a valid msgpack"),
        (msgpack.packb({"a": 1}) + b"\x01", "not a valid msgpack"),
    ],
)
def test_malformed_messages_raise_protocol_error(message: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        unpackb(message)


def test_the_client_imports_without_torch_or_the_model() -> None:
    code = (
        "import sys, dexvla.serve.client\n"
        "heavy = [m for m in ('torch', 'transformers', 'dexvla.policy') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr.decode()
