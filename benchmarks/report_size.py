"""Size of the Evidently HTML reports tinymlops logs, packed (tinymlops.htmlpack), and their unpack time in Chromium.

Bar (issue 15): every packed report <= 1.5 MB, one offline self-contained file. Builds drift reports with 12, 36 and
100 features (1,000 reference and 500 current samples, the demo's window), one with 36 features and a 5,000-sample
window, and a classification report on 500 labelled predictions; prints per report the page (data already
rounded), what the previous packing (deflate + Base85) made of it, the packed size now, CPU seconds to pack, and, when
Debian's chromium and Playwright are installed, the in-page unpack time (``performance`` measure
``tinymlops-unpack``: 7-bit text -> bytes -> xz) and the time until the report's first heading is visible, packed vs
the plain page. Exits 1 if a report misses the bar.

    .venv/bin/python benchmarks/report_size.py [--quick]     # --quick: the 12-feature and classification reports
"""

from __future__ import annotations

import argparse
import base64
import shutil
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

from tinymlops import htmlpack
from tinymlops.monitor import evidently_report

BAR_BYTES = 1_500_000
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def _reports(quick: bool) -> list[tuple[str, str, str]]:
    """Return (name, page with rounded data, text to wait for) per report."""
    rng = np.random.default_rng(0)
    shapes = [(12, 500)] if quick else [(12, 500), (36, 500), (100, 500), (36, 5000)]
    out = []
    for n, current in shapes:
        names = [f"x_band{i}_log_energy" for i in range(n)]
        res = evidently_report.data_drift(rng.normal(size=(1000, n)), rng.normal(0.4, 1.2, size=(current, n)), names)
        out.append((f"drift {n} features, {current} current", htmlpack.unpack(res.html), "Share of Drifted Columns"))
    y = rng.integers(0, 4, 500)
    pred = np.where(rng.random(500) < 0.9, y, rng.integers(0, 4, 500))
    res_c = evidently_report.classification(y, pred, ["healthy", "imbalance", "misalignment", "bearing"])
    out.append(("classification, 500 labelled", htmlpack.unpack(res_c.html), "Accuracy"))
    return out


def _browser_times(files: list[tuple[Path, Path, str]]) -> list[tuple[float, float, float]]:
    """Return (unpack ms, packed visible s, plain visible s) per (packed file, plain file, text), or [] without chromium."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return []
    if not Path(CHROMIUM).exists():
        return []
    out = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            warm = browser.new_page()  # the first page of a fresh browser pays its start-up: not counted
            warm.goto(files[0][1].as_uri())
            warm.get_by_text(files[0][2]).first.wait_for(timeout=180_000)
            warm.close()
            for packed, plain, text in files:
                row = []
                for path in (packed, plain):
                    page = browser.new_page(viewport={"width": 1600, "height": 1000})
                    errors: list[str] = []
                    page.on("pageerror", lambda e, errors=errors: errors.append(str(e)))
                    t0 = time.perf_counter()
                    page.goto(path.as_uri())
                    page.get_by_text(text).first.wait_for(timeout=180_000)
                    row.append(time.perf_counter() - t0)
                    if path == packed:
                        ms = page.evaluate("performance.getEntriesByName('tinymlops-unpack')[0].duration")
                    if errors:
                        raise SystemExit(f"{path.name}: page errors {errors[:3]}")
                    page.close()
                out.append((float(ms), row[0], row[1]))
        finally:
            browser.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="only the 12-feature drift and the classification report")
    args = ap.parse_args()
    t0 = time.perf_counter()
    reports = _reports(args.quick)
    print(f"built {len(reports)} Evidently reports in {time.perf_counter() - t0:.0f} s")
    ok = True
    rows = []
    with tempfile.TemporaryDirectory(prefix="report-size-") as tmp:
        files = []
        for i, (name, page, text) in enumerate(reports):
            raw = page.encode("utf-8")
            old = len(base64.b85encode(zlib.compress(raw, 9))) + 1_500  # + its loader
            c0 = time.process_time()
            packed = htmlpack.pack(page, round_data=False)
            pack_s = time.process_time() - c0
            size = len(packed.encode("utf-8"))
            ok &= size <= BAR_BYTES
            rows.append((name, len(raw), old, size, pack_s))
            files.append((Path(tmp) / f"{i}.packed.html", Path(tmp) / f"{i}.html", text))
            files[-1][0].write_text(packed, encoding="utf-8")
            files[-1][1].write_text(page, encoding="utf-8")
        times = _browser_times(files)
    print("| report | page (data rounded) | deflate + Base85 (before) | xz + 7-bit text (now) | page / packed | "
          "pack CPU s | unpack in Chromium | visible: packed / plain page |")
    print("|---|---|---|---|---|---|---|---|")
    for k, (name, raw_n, old, size, pack_s) in enumerate(rows):
        browser = (f"{times[k][0]:.0f} ms | {times[k][1]:.1f} s / {times[k][2]:.1f} s" if times
                   else "(no chromium) | ")
        print(f"| {name} | {raw_n / 1e6:.2f} MB | {old / 1e6:.2f} MB | **{size / 1e6:.3f} MB** | "
              f"{raw_n / size:.1f}x | {pack_s:.1f} | {browser} |")
    js = len(htmlpack._xz_decoder_js().encode())
    print(f"vendored xz decoder inlined in each report: {js / 1e3:.1f} KB; bar: every report <= {BAR_BYTES / 1e6} MB: "
          f"{'met' if ok else 'MISSED'}")
    if not args.quick:
        per_feature = (rows[2][3] - rows[0][3]) / (100 - 12)
        print(f"each further feature adds {per_feature / 1e3:.2f} KB (500-sample window): the bar holds up to "
              f"~{12 + (BAR_BYTES - rows[0][3]) / per_feature:.0f} features")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
