"""msgpack with numpy arrays, in the same layout as openpi's `openpi_client.msgpack_numpy`.

An array travels as a msgpack map with binary keys
``{b"__ndarray__": True, b"data": raw bytes, b"dtype": dtype.str, b"shape": [dims]}`` and a numpy
scalar as ``{b"__npgeneric__": True, b"data": item, b"dtype": dtype.str}``, so openpi clients
and servers exchange messages with this module unchanged. No pickle: object, void (structured)
and complex dtypes are refused both ways, and a decoded array's byte count must match its
dtype and shape. Decoded arrays are read-only views of the message buffer.
"""

from __future__ import annotations

import math
from typing import Any

import msgpack
import numpy as np

ALLOWED_DTYPE_KINDS = frozenset("biufSU")
"""bool, signed and unsigned integers, floats, bytes and unicode strings."""


class ProtocolError(ValueError):
    """A message that is not valid msgpack-numpy, or holds something it must not."""


def _checked_dtype(dtype: Any) -> np.dtype:
    try:
        resolved = np.dtype(dtype)
    except TypeError as error:
        raise ProtocolError(f"unknown dtype {dtype!r}") from error
    if resolved.kind not in ALLOWED_DTYPE_KINDS:
        raise ProtocolError(f"dtype {resolved} is not allowed (only bool, int, float, str arrays)")
    return resolved


def _encode(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        _checked_dtype(obj.dtype)
        return {
            b"__ndarray__": True,
            b"data": np.ascontiguousarray(obj).tobytes(),
            b"dtype": obj.dtype.str,
            b"shape": obj.shape,
        }
    if isinstance(obj, np.generic):
        _checked_dtype(obj.dtype)
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"cannot encode an object of type {type(obj).__name__}")


def _decode(obj: dict[Any, Any]) -> Any:
    if b"__ndarray__" in obj:
        try:
            data, dtype_str, shape = obj[b"data"], obj[b"dtype"], obj[b"shape"]
        except KeyError as error:
            raise ProtocolError(f"array without {error.args[0]!r}") from None
        if not isinstance(data, bytes) or not isinstance(dtype_str, str):
            raise ProtocolError("array data must be binary and its dtype a string")
        if not isinstance(shape, (list, tuple)) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise ProtocolError(f"array shape must be a list of non-negative ints, got {shape!r}")
        dtype = _checked_dtype(dtype_str)
        if len(data) != math.prod(shape) * dtype.itemsize:
            raise ProtocolError(
                f"array of shape {tuple(shape)} and dtype {dtype} needs "
                f"{math.prod(shape) * dtype.itemsize} bytes, got {len(data)}"
            )
        return np.frombuffer(data, dtype=dtype).reshape(shape)
    if b"__npgeneric__" in obj:
        if b"dtype" not in obj or b"data" not in obj:
            raise ProtocolError("numpy scalar without data or dtype")
        dtype = _checked_dtype(obj[b"dtype"])
        try:
            return dtype.type(obj[b"data"])
        except (TypeError, ValueError, OverflowError) as error:
            raise ProtocolError(f"bad numpy scalar: {error}") from None
    return obj


def packb(obj: Any) -> bytes:
    """Encode `obj` (dicts, lists, str, bytes, numbers, numpy arrays and scalars) to bytes."""
    return msgpack.packb(obj, default=_encode, use_bin_type=True)


def unpackb(data: bytes) -> Any:
    """Decode bytes from `packb` (or openpi's packer); raise `ProtocolError` if malformed."""
    try:
        return msgpack.unpackb(data, object_hook=_decode, raw=False, strict_map_key=True)
    except ProtocolError:
        raise
    except (ValueError, TypeError, msgpack.UnpackException) as error:
        raise ProtocolError(
            f"not a valid msgpack message ({type(error).__name__}: {error})"
        ) from None
