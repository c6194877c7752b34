"""Self-contained HTML reports at a quarter of their size: compressed in the file, unpacked by the browser.

Evidently's HTML reports embed their whole 3.5 MB JavaScript bundle plus the data of every plot written with 17
significant digits, so each drift report logged to MLflow was 4-6 MB. :func:`pack` keeps the report one offline file
(no CDN, no sibling artifact to link: MLflow's artifact viewer and a downloaded copy both work) and makes it ~4x
smaller: numbers in the report's data scripts are rounded to a display precision, the document is deflated, and a
~1 KB loader inflates it with the browser's own ``DecompressionStream`` and writes it into the page.

The payload is Base85 (25 % overhead, not Base64's 33 %) in an alphabet without ``<`` ``"`` ``\\``, so it can
never close or escape the ``<script>`` element that carries it. Browsers without ``DecompressionStream`` (before
Chrome 80, Firefox 113, Safari 16.4) show a one-line message instead of the report.
"""

from __future__ import annotations

import base64
import html as html_lib
import re
import zlib

#: significant digits kept in the report's data (its plots and tables show 3-4)
DATA_DIGITS = 4
#: Python's RFC 1924 Base85 alphabet with '<' swapped for '.' (unused by it): safe inside a JS string in <script>
_B85 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz!#$%&()*+-;.=>?@^_`{|}~"
_TO_SAFE = bytes.maketrans(b"<", b".")
_SCRIPT = re.compile(r"(<script\b[^>]*>)(.*?)(</script\s*>)", re.S | re.I)
_LONG_FLOAT = re.compile(r"(?<![\w.])-?\d+\.\d{" + str(DATA_DIGITS + 1) + r",}(?:[eE][-+]?\d+)?(?![\w.])")
_DATA_SCRIPT = re.compile(r"\s*var \w+ = [\[{]")  # Evidently's plot data: JSON assigned to a variable
_TITLE = re.compile(r"<title>(.*?)</title>", re.S | re.I)

_LOADER = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{title}</title></head>
<body><p id="tinymlops-unpack">Unpacking the report&hellip;</p>
<script>
(function () {{
  var A = "{alphabet}", N = {length}, D = "{payload}";
  var note = document.getElementById("tinymlops-unpack");
  if (typeof DecompressionStream === "undefined") {{
    note.textContent = "This report is compressed; open it in a browser with DecompressionStream " +
      "(Chrome 80+, Firefox 113+, Safari 16.4+).";
    return;
  }}
  var v = new Uint8Array(128);
  for (var i = 0; i < A.length; i++) v[A.charCodeAt(i)] = i;
  var out = new Uint8Array(D.length / 5 * 4), o = 0;
  for (var p = 0; p < D.length; p += 5) {{
    var x = v[D.charCodeAt(p)] * 52200625 + v[D.charCodeAt(p + 1)] * 614125 + v[D.charCodeAt(p + 2)] * 7225 +
            v[D.charCodeAt(p + 3)] * 85 + v[D.charCodeAt(p + 4)];
    out[o++] = x >>> 24; out[o++] = (x >>> 16) & 255; out[o++] = (x >>> 8) & 255; out[o++] = x & 255;
  }}
  var stream = new Blob([out.subarray(0, N)]).stream().pipeThrough(new DecompressionStream("deflate"));
  new Response(stream).text().then(function (page) {{
    document.open(); document.write(page); document.close();
  }}, function (err) {{ note.textContent = "This report could not be unpacked: " + err; }});
}})();
</script></body></html>
"""


def _round_data(script: str) -> str:
    return _LONG_FLOAT.sub(lambda m: f"{float(m.group(0)):.{DATA_DIGITS}g}", script)


def round_numbers(page: str) -> str:
    """Round long decimals in the page's inline data scripts (``var name = {...}``), never in library code."""

    def fix(m: re.Match[str]) -> str:
        body = m.group(2)
        return m.group(1) + (_round_data(body) if _DATA_SCRIPT.match(body) else body) + m.group(3)

    return _SCRIPT.sub(fix, page)


def pack(page: str, round_data: bool = True) -> str:
    """Return a self-contained page that unpacks ``page`` in the browser (see the module docstring)."""
    if round_data:
        page = round_numbers(page)
    raw = zlib.compress(page.encode("utf-8"), 9)
    padded = raw + b"\0" * (-len(raw) % 4)
    payload = base64.b85encode(padded).translate(_TO_SAFE).decode("ascii")
    title_m = _TITLE.search(page)
    title = html_lib.escape(html_lib.unescape(title_m.group(1).strip())) if title_m else "report"
    return _LOADER.format(title=title, alphabet=_B85, length=len(raw), payload=payload)


def unpack(packed: str) -> str:
    """Return the page inside a :func:`pack` result (tests, and reading a logged report without a browser)."""
    n = int(re.search(r"N = (\d+)", packed).group(1))  # type: ignore[union-attr]
    payload = re.search(r'D = "([^"]*)"', packed).group(1)  # type: ignore[union-attr]
    raw = base64.b85decode(payload.encode("ascii").translate(bytes.maketrans(b".", b"<")))[:n]
    return zlib.decompress(raw).decode("utf-8")
