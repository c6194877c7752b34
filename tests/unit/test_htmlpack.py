"""Packed HTML reports: the page comes back exactly (data rounded), the payload cannot break out of its script."""

from __future__ import annotations

import random
import re

from tinymlops import htmlpack

PAGE = """<!DOCTYPE html><html><head><title>Drift &amp; quality</title></head><body>
<script>var metric_x = {"values": [0.123456789, -1.5e-07, 12345.678901, 3, 0.5], "name": "a</b>"};</script>
<script>var lib=function(){return 0.1234567891234*2};</script></body></html>"""


def test_pack_round_trips_and_rounds_only_data_scripts() -> None:
    packed = htmlpack.pack(PAGE)
    page = htmlpack.unpack(packed)
    assert "0.1235" in page and "1.235e+04" in page and "-1.5e-07" in page and ", 3, 0.5]" in page
    assert "0.1234567891234*2" in page  # library code keeps its constants
    assert page == htmlpack.round_numbers(PAGE)
    assert htmlpack.unpack(htmlpack.pack(PAGE, round_data=False)) == PAGE
    assert "<title>Drift &amp; quality</title>" in packed


def test_payload_never_closes_its_script_and_compresses() -> None:
    rng = random.Random(0)
    noise = "".join(rng.choice("<>/!-\"'\\script") for _ in range(200_000))  # hostile characters, little redundancy
    page = f"<html><body><script>var metric_y = {{\"s\": \"{noise}\"}};</script></body></html>"
    packed = htmlpack.pack(page)
    payload = re.search(r'D = "([^"]*)"', packed).group(1)  # type: ignore[union-attr]
    assert not set(payload) & set("<\"\\")
    assert packed.count("</script>") == 1 and htmlpack.unpack(packed) == page
    big = PAGE.replace("<body>", "<body>" + "<p>same row of a table</p>" * 20_000)
    assert len(htmlpack.pack(big)) < len(big) / 20
