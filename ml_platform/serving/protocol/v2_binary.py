"""The Open Inference Protocol's binary tensor data extension (KServe, Triton) over HTTP: the framing.

A request may carry tensors as raw bytes after its JSON. The request header
``Inference-Header-Content-Length: N`` says that the first N bytes of the body are the JSON; every input
sent that way has no ``data`` but ``parameters.binary_data_size`` (its byte count), and the inputs'
bytes follow the JSON back to back in input order, each tensor row-major and little-endian. An answer
uses the same framing for outputs asked for in binary: its JSON, with ``parameters.binary_data_size`` on
each such output, then their bytes, and the response header ``Inference-Header-Content-Length``.

This module splits a body into its JSON and its binary part and renders a binary answer; which tensor
takes which bytes, and what the values mean, is the protocol module's business.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from ml_platform.serving.protocol.common import encode_json
from ml_platform.serving.schemas import ApiError

HEADER = "inference-header-content-length"
_HEADER_BYTES = HEADER.encode()

# The numeric datatypes and their little-endian numpy types (the extension's byte order).
NUMPY_TYPES: dict[str, np.dtype] = {
    name: np.dtype(code)
    for name, code in (
        ("FP64", "<f8"),
        ("FP32", "<f4"),
        ("FP16", "<f2"),
        ("INT64", "<i8"),
        ("INT32", "<i4"),
        ("INT16", "<i2"),
        ("INT8", "i1"),
        ("UINT64", "<u8"),
        ("UINT32", "<u4"),
        ("UINT16", "<u2"),
        ("UINT8", "u1"),
    )
}

# A JSON header longer than any body this server takes has more digits than this.
_MAX_DIGITS = 18


def header_sent(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Whether the raw (ASGI, lower-case) request headers hold the JSON header's length (binary data follows)."""
    return any(key == _HEADER_BYTES for key, _ in headers)


def header_length(headers: Iterable[tuple[bytes, bytes]]) -> int | None:
    """The JSON header's length from the raw (ASGI, lower-case) request headers; None without the header."""
    values = [value for key, value in headers if key == _HEADER_BYTES]
    if not values:
        return None
    if len(values) > 1:
        raise ApiError(400, f"{HEADER}: the header was sent {len(values)} times; send it once", HEADER)
    raw = values[0].strip()
    if not raw.isdigit() or len(raw) > _MAX_DIGITS:  # bytes.isdigit: ASCII digits only, so no sign, no "_"
        shown = raw.decode("latin-1")
        raise ApiError(
            400,
            f"{HEADER}: expected the length in bytes of the body's JSON part (a non-negative integer), got {shown!r}",
            HEADER,
        )
    return int(raw)


def split_body(body: bytes, length: int | None) -> tuple[bytes, memoryview | None]:
    """The body's JSON part and its binary part (None when the request has no binary part)."""
    if length is None:
        return body, None
    if length > len(body):
        raise ApiError(
            400, f"{HEADER}: says the JSON part is {length} bytes, but the whole body is {len(body)} bytes", HEADER
        )
    return body[:length], memoryview(body)[length:]


def tensor_bytes(datatype: str, shape: list[int]) -> int:
    """How many bytes a tensor of ``datatype`` and ``shape`` takes in the binary part."""
    size = NUMPY_TYPES[datatype].itemsize
    for dim in shape:
        size *= dim
    return size


def decode(buffer: memoryview, datatype: str) -> np.ndarray:
    """A tensor's bytes as a flat read-only array of its datatype (no copy)."""
    return np.frombuffer(buffer, dtype=NUMPY_TYPES[datatype])


def encode_answer(header: dict, tensors: list[bytes]) -> tuple[bytes, int]:
    """A binary answer: the JSON header, then the outputs' bytes; and the JSON header's length."""
    head = encode_json(header)
    return head + b"".join(tensors), len(head)
