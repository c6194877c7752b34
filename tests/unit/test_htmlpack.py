"""Packed HTML reports: the page comes back exactly (data rounded), the payload cannot break out of its script."""

from __future__ import annotations

import hashlib
import lzma
import os
import random
import re
from pathlib import Path

import pytest

from tinymlops import htmlpack

PAGE = """<!DOCTYPE html><html><head><title>Drift &amp; quality</title></head><body>
<script>var metric_x = {"values": [0.123456789, -1.5e-07, 12345.678901, 3, 0.5], "name": "a</b>"};</script>
<script>var lib=function(){return 0.1234567891234*2};</script></body></html>"""
VENDOR = Path(htmlpack.__file__).parent / "_vendor"
UNSAFE = set('\0\n\r"<\\')


def _payload(packed: str) -> str:
    return re.search(r'var N = \d+, S = "([^"]*)"', packed).group(1)  # type: ignore[union-attr]


def test_pack_round_trips_and_rounds_only_data_scripts() -> None:
    packed = htmlpack.pack(PAGE)
    page = htmlpack.unpack(packed)
    assert "0.1235" in page and "1.235e+04" in page and "-1.5e-07" in page and ", 3, 0.5]" in page
    assert "0.1234567891234*2" in page  # library code keeps its constants
    assert page == htmlpack.round_numbers(PAGE)
    assert htmlpack.unpack(htmlpack.pack(PAGE, round_data=False)) == PAGE
    assert "<title>Drift &amp; quality</title>" in packed


@pytest.mark.parametrize("data", [
    b"", b"\0", bytes(64), b"\xff" * 64, bytes(range(256)) * 3, b'\n\r"<\\' * 40,
    bytes(random.Random(1).getrandbits(8) for _ in range(5000)),  # every 7-bit value at every bit offset
    bytes(6),  # 7 NUL values: the last escape has no partner inside the data
])
def test_7bit_text_round_trips_hostile_bytes_and_stays_script_safe(data: bytes) -> None:
    text = htmlpack.encode_7bit(data)
    assert htmlpack.decode_7bit(text, len(data)) == data
    assert not set(text) & UNSAFE
    assert all(ord(c) < 128 or 0x100 <= ord(c) < 0x480 for c in text)  # one UTF-8 byte, or two
    assert not any(0x300 <= ord(c) < 0x380 for c in text)  # no combining marks (Unicode normalisation)
    assert len(text.encode("utf-8")) <= -(-len(data) * 8 // 7) + 2  # 8/7 of the input, whatever the bytes


def test_7bit_text_is_denser_than_base85_on_random_bytes() -> None:
    data = os.urandom(100_000)
    size = len(htmlpack.encode_7bit(data).encode("utf-8"))
    assert size < 1.15 * len(data) and htmlpack.decode_7bit(htmlpack.encode_7bit(data), len(data)) == data


def test_payload_never_closes_its_script_and_compresses() -> None:
    rng = random.Random(0)
    noise = "".join(rng.choice("<>/!-\"'\\script\r\n\0é€") for _ in range(200_000))  # hostile, little redundancy
    page = f"<html><body><script>var metric_y = {{\"s\": \"{noise}\"}};</script></body></html>"
    packed = htmlpack.pack(page)
    assert not set(_payload(packed)) & UNSAFE
    # the vendored decoder's script and the loader's: nothing in the payload ends a script or opens a comment
    assert len(re.findall(r"</script", packed, re.I)) == 2 and "<!--" not in packed
    assert htmlpack.unpack(packed) == page
    big = PAGE.replace("<body>", "<body>" + "<p>same row of a table</p>" * 20_000)
    assert len(htmlpack.pack(big).encode()) < len(big) / 20


def test_garbage_is_refused_with_a_clear_error() -> None:
    with pytest.raises(ValueError, match="not a packed report"):
        htmlpack.unpack("<html>an ordinary page</html>")
    with pytest.raises(ValueError, match="outside the encoding's alphabet"):
        htmlpack.decode_7bit("ab\u0300c", 3)
    with pytest.raises(ValueError, match="expected 99"):
        htmlpack.decode_7bit("abc", 99)
    packed = htmlpack.pack(PAGE)
    payload = _payload(packed)
    mid = len(payload) // 2
    damaged = payload[:mid] + ("a" if payload[mid] != "a" else "b") + payload[mid + 1:]
    with pytest.raises(lzma.LZMAError):  # xz's check: a damaged report is refused, never shown garbled
        htmlpack.unpack(packed.replace(payload, damaged))


def test_vendored_decoder_is_the_recorded_file() -> None:
    js = (VENDOR / "xz-decompress.min.js").read_bytes()
    readme = (VENDOR / "README.md").read_text()
    assert f"`{hashlib.sha256(js).hexdigest()}`" in readme and "0.2.3" in readme
    assert (VENDOR / "LICENSE.xz-decompress").is_file()
    assert js.decode("utf-8") in htmlpack.pack(PAGE)  # inlined whole: the report needs nothing beside it
