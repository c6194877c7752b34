"""Self-contained HTML reports at a quarter to a seventh of their size: compressed in the file, unpacked by the browser.

Evidently's HTML reports embed their whole 3.5 MB JavaScript bundle plus the data of every plot written with 17
significant digits, so each drift report logged to MLflow was 4-8 MB. :func:`pack` keeps the report one offline file
(no CDN, no sibling artifact to link: MLflow's artifact viewer and a downloaded copy both work) and brings it under
1.5 MB (drift reports up to ~235 features; ``benchmarks/report_size.py``): numbers in the report's data scripts are rounded to a display precision, the document is compressed with
xz (LZMA2, ~22 % smaller than deflate on Evidently's bundle), and a loader decodes it in the browser with the
vendored ``xz-decompress`` (xz-embedded compiled to WebAssembly, 20 KB; see ``_vendor/README.md``) and writes it
into the page.

The compressed bytes travel as a JavaScript string in a "7-bit text" encoding (the idea of Base122): every 7 bits
become one ASCII character, except the six values that are unsafe in a ``"..."`` string inside ``<script>``
(NUL, LF, CR, ``"``, ``<``, ``\\``), which are sent with the next 7 bits as one two-byte UTF-8 character
(U+0100-U+047F). That is 8/7 of the binary size (Base85: 5/4, Base64: 4/3), always valid UTF-8, and the string can
never close or escape its ``<script>`` element. Browsers without WebAssembly or ES2022 (before Chrome 80,
Firefox 75, Safari 14.1) show a one-line message instead of the report.
"""

from __future__ import annotations

import html as html_lib
import lzma
import re
from functools import lru_cache
from importlib import resources

import numpy as np

#: significant digits kept in the report's data (its plots and tables show 3-4)
DATA_DIGITS = 4
#: 7-bit values that cannot stand for themselves in a JS "..." string in <script>, in escape order:
#: NUL (the HTML parser turns it into U+FFFD), LF and CR (end the string; CR is also rewritten to LF), '"', '<', '\'
_UNSAFE = (0x00, 0x0A, 0x0D, 0x22, 0x3C, 0x5C)
#: high bits (code point >> 7) of the two-byte character carrying each unsafe value and the 7 bits after it; blocks
#: of Latin Extended, IPA, Greek and Cyrillic letters: no combining marks (Unicode normalisation never touches them)
_HIGH = (2, 3, 4, 5, 7, 8)
_UNSAFE_BY_HIGH = np.zeros(max(_HIGH) + 1, np.int64)
_UNSAFE_BY_HIGH[list(_HIGH)] = _UNSAFE
_HIGH_BY_VALUE = np.zeros(128, np.int64)
_HIGH_BY_VALUE[list(_UNSAFE)] = _HIGH
_WEIGHTS = 1 << np.arange(6, -1, -1)

_SCRIPT = re.compile(r"(<script\b[^>]*>)(.*?)(</script\s*>)", re.S | re.I)
_LONG_FLOAT = re.compile(r"(?<![\w.])-?\d+\.\d{" + str(DATA_DIGITS + 1) + r",}(?:[eE][-+]?\d+)?(?![\w.])")
_DATA_SCRIPT = re.compile(r"\s*var \w+ = [\[{]")  # Evidently's plot data: JSON assigned to a variable
_TITLE = re.compile(r"<title>(.*?)</title>", re.S | re.I)

_HEAD = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{title}</title></head>
<body><p id="tinymlops-unpack">Unpacking the report&hellip;</p>
<script>
"""
_LOADER = """</script>
<script>
(function () {{
  var N = {length}, S = "{payload}", HIGH = {unsafe_by_high};
  var note = document.getElementById("tinymlops-unpack");
  var xz = window["xz-decompress"];
  if (!xz || typeof WebAssembly === "undefined") {{
    note.textContent = "This report is compressed; open it in a browser with WebAssembly and ES2022 " +
      "(Chrome 80+, Firefox 75+, Safari 14.1+).";
    return;
  }}
  performance.mark("tinymlops-unpack-start");
  var out = new Uint8Array(N), o = 0, acc = 0, bits = 0;
  for (var i = 0; i < S.length; i++) {{
    var c = S.charCodeAt(i);
    if (c > 127) {{  // an unsafe 7-bit value and the 7 bits after it
      acc = (acc << 7) | HIGH[c >> 7]; bits += 7;
      if (bits >= 8) {{ bits -= 8; out[o++] = acc >> bits; acc &= (1 << bits) - 1; }}
      c &= 127;
    }}
    acc = (acc << 7) | c; bits += 7;
    if (bits >= 8) {{ bits -= 8; out[o++] = acc >> bits; acc &= (1 << bits) - 1; }}
  }}
  new Response(new xz.XzReadableStream(new Blob([out]).stream())).text().then(function (page) {{
    performance.measure("tinymlops-unpack", "tinymlops-unpack-start");
    document.open(); document.write(page); document.close();
  }}, function (err) {{ note.textContent = "This report could not be unpacked: " + err; }});
}})();
</script></body></html>
"""


@lru_cache(maxsize=1)
def _xz_decoder_js() -> str:
    js = (resources.files("tinymlops") / "_vendor" / "xz-decompress.min.js").read_text(encoding="utf-8")
    if re.search(r"</script|<!--", js, re.I):  # would end (or confuse) the <script> that carries it
        raise RuntimeError("the vendored xz-decompress.min.js cannot be inlined in a <script>")
    return js


def _round_data(script: str) -> str:
    return _LONG_FLOAT.sub(lambda m: f"{float(m.group(0)):.{DATA_DIGITS}g}", script)


def round_numbers(page: str) -> str:
    """Round long decimals in the page's inline data scripts (``var name = {...}``), never in library code."""

    def fix(m: re.Match[str]) -> str:
        body = m.group(2)
        return m.group(1) + (_round_data(body) if _DATA_SCRIPT.match(body) else body) + m.group(3)

    return _SCRIPT.sub(fix, page)


def encode_7bit(data: bytes) -> str:
    """Return ``data`` as 7-bit text: safe in a JS ``"..."`` string inside ``<script>``, 8/7 of its size in UTF-8."""
    bits = np.unpackbits(np.frombuffer(data, np.uint8))
    bits = np.concatenate([bits, np.zeros(-len(bits) % 7, np.uint8)])
    chunks = bits.reshape(-1, 7).astype(np.int64) @ _WEIGHTS
    escapes: list[int] = []
    partner = -1
    for i in np.flatnonzero(np.isin(chunks, _UNSAFE)).tolist():
        if i != partner:  # an unsafe value that is the partner of the escape before it needs no escape of its own
            escapes.append(i)
            partner = i + 1
    if escapes and escapes[-1] == len(chunks) - 1:
        chunks = np.append(chunks, 0)  # the last escape's partner: bits past the end, ignored by the decoder
    codes = chunks.copy()
    at = np.asarray(escapes, np.int64)
    codes[at] = (_HIGH_BY_VALUE[chunks[at]] << 7) | chunks[at + 1]
    keep = np.ones(len(codes), bool)
    keep[at + 1] = False
    return codes[keep].astype("<u4").tobytes().decode("utf-32-le")


def decode_7bit(text: str, length: int) -> bytes:
    """Return the first ``length`` bytes that :func:`encode_7bit` wrote as ``text``."""
    codes = np.frombuffer(text.encode("utf-32-le"), "<u4").astype(np.int64)
    escaped = codes > 127
    high = codes >> 7
    if (high >= len(_UNSAFE_BY_HIGH)).any() or not np.isin(high[escaped], _HIGH).all():
        raise ValueError("not 7-bit text: a character outside the encoding's alphabet")
    at = np.cumsum(1 + escaped) - (1 + escaped)  # where each character's first 7-bit value goes
    chunks = np.empty(len(codes) + int(escaped.sum()), np.int64)
    chunks[at] = np.where(escaped, _UNSAFE_BY_HIGH[high], codes)
    chunks[at[escaped] + 1] = codes[escaped] & 127
    bits = ((chunks[:, None] >> np.arange(6, -1, -1)) & 1).astype(np.uint8).ravel()
    out = np.packbits(bits).tobytes()
    if len(out) < length:
        raise ValueError(f"7-bit text holds {len(out)} bytes, expected {length}")
    return out[:length]


def pack(page: str, round_data: bool = True) -> str:
    """Return a self-contained page that unpacks ``page`` in the browser (see the module docstring)."""
    if round_data:
        page = round_numbers(page)
    # preset 6: an 8 MiB dictionary (what the decoder allocates); 9e saves 0.3 % for ~30 % more CPU.
    # CRC32: checked by the decoder, so a damaged file says so instead of showing a garbled page
    raw = lzma.compress(page.encode("utf-8"), format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32, preset=6)
    title_m = _TITLE.search(page)
    title = html_lib.escape(html_lib.unescape(title_m.group(1).strip())) if title_m else "report"
    return (_HEAD.format(title=title) + _xz_decoder_js() +
            _LOADER.format(length=len(raw), payload=encode_7bit(raw),
                           unsafe_by_high=str(_UNSAFE_BY_HIGH.tolist()).replace(" ", "")))


def unpack(packed: str) -> str:
    """Return the page inside a :func:`pack` result (tests, and reading a logged report without a browser)."""
    n = re.search(r"var N = (\d+), S = \"([^\"]*)\"", packed)
    if n is None:
        raise ValueError("not a packed report: no payload found")
    return lzma.decompress(decode_7bit(n.group(2), int(n.group(1))), format=lzma.FORMAT_XZ).decode("utf-8")
