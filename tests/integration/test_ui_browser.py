"""Review in a real browser: Debian's chromium, driven by Playwright, on `tinymlops ui` and a Prefect server UI.

One small pipeline (train → compress 2 variants → profile on 2 boards) runs through the CLI against a Prefect server
the test starts; then `tinymlops ui` serves the store and the test reads the rendered pages as a reviewer would:
the experiment opens on the runs table (not MLflow's GenAI view), the pipeline run's nested runs are all there,
a version page shows the per-board table and the signature, the release report renders in the artifact viewer,
and the Prefect UI lists the pipeline's artifacts. Screenshots go to ``<home>/screenshots/`` and to
``$TINYMLOPS_SCREENSHOTS`` (default: the repository's ``.tinymlops/screenshots``, kept as CI artifacts).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = [pytest.mark.integration, pytest.mark.browser]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]
MODEL = "ui-vibration"
EXPERIMENT = "ui-review"
BOARDS = ["raspberry-pi-4", "nucleo-l4r5zi"]
CONFIG = {
    "kind": "pipeline", "project": "ui-review",
    "mlflow": {"experiment": EXPERIMENT, "registered_model": MODEL},
    "dataset": {"name": "vibration", "seed": 3, "vibration": {"windows_per_class": 60}},
    "preprocessing": {"features": "spectral", "bands": 8},
    "model": {"arch": "mlp", "params": {"hidden": [16]}},
    "train": {"epochs": 4, "early_stopping_patience": 0},
    "compress": {"variants": [{"technique": "ptq-int8", "representative_samples": 50}, {"technique": "fp16"}]},
    "profile": {"targets": BOARDS},
    "stages": ["train", "compress", "profile"],
}
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
               "--disable-sync", "--no-first-run"]

if not Path(CHROMIUM).exists():
    pytest.skip("Debian's chromium is not installed (.ci/run installs it)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the dev extra)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_http(url: str, proc: subprocess.Popen[bytes], timeout_s: float, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args} exited {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=3) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer in {timeout_s} s: {log.read_text()[-2000:]}")


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Run the small pipeline through `tinymlops run` on a Prefect server, then serve the store with `tinymlops ui`."""
    home = tmp_path_factory.mktemp("ui-home")
    cfg_path = home / "pipeline.yaml"
    cfg_path.write_text(yaml.safe_dump(CONFIG))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_"))}
    env.update(TINYMLOPS_HOME=str(home), PREFECT_HOME=str(home / "prefect"), TF_USE_LEGACY_KERAS="1",
               PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_LOGGING_LEVEL="WARNING")
    p_port, m_port = _free_port(), _free_port()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        plog = home / "prefect-server.log"
        prefect_url = f"http://127.0.0.1:{p_port}"
        # the UI's own API address defaults to port 4200: point it at this server
        procs.append(subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port",
                                       str(p_port)], env={**env, "PREFECT_UI_API_URL": f"{prefect_url}/api"},
                                      stdout=plog.open("wb"), stderr=subprocess.STDOUT))
        _wait_http(f"{prefect_url}/api/health", procs[0], 120, plog)
        env["PREFECT_API_URL"] = f"{prefect_url}/api"
        t0 = time.monotonic()
        res = subprocess.run([str(BIN / "tinymlops"), "run", "--config", str(cfg_path), "--json"], env=env,
                             capture_output=True, text=True, timeout=900, cwd=REPO)
        assert res.returncode == 0, res.stderr[-3000:]
        out = json.loads(res.stdout)
        pipeline_s = time.monotonic() - t0
        ulog = home / "mlflow-ui.log"
        procs.append(subprocess.Popen([str(BIN / "tinymlops"), "ui", "--port", str(m_port)], env=env,
                                      stdout=ulog.open("wb"), stderr=subprocess.STDOUT))
        mlflow_url = f"http://127.0.0.1:{m_port}"
        _wait_http(f"{mlflow_url}/health", procs[1], 300, ulog)
        exp = _get_json(f"{mlflow_url}/api/2.0/mlflow/experiments/get-by-name?experiment_name={EXPERIMENT}")
        # the link `tinymlops ui` prints for the experiment (what a reviewer clicks)
        links = [line.split(": ", 1)[1].strip() for line in ulog.read_text().splitlines()
                 if line.strip().startswith(f"{EXPERIMENT}: ")]
        # kept after the run (CI artifacts): $TINYMLOPS_SCREENSHOTS, else the repository's .tinymlops/screenshots
        shots = [home / "screenshots", Path(os.environ.get("TINYMLOPS_SCREENSHOTS") or REPO / ".tinymlops" / "screenshots")]
        for d in shots:
            d.mkdir(parents=True, exist_ok=True)
        yield {"out": out, "mlflow": mlflow_url, "prefect": prefect_url, "shots": shots, "links": links,
               "experiment_id": exp["experiment"]["experiment_id"], "pipeline_s": pipeline_s}
    finally:
        for p in reversed(procs):
            _stop(p)


@pytest.fixture(scope="module")
def browser(served: dict[str, Any]) -> Iterator[Any]:
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    ctx = browser.new_context(viewport={"width": 1600, "height": 1000})
    pg = ctx.new_page()
    pg.set_default_timeout(60_000)
    try:
        yield pg
    finally:
        ctx.close()


def _shot(served: dict[str, Any], page: Any, name: str) -> None:
    close = page.get_by_role("button", name="Close")  # MLflow's assistant side panel hides a third of the page
    if close.count():
        close.first.click()
        page.wait_for_timeout(500)
    for d in served["shots"]:
        page.screenshot(path=str(d / f"{name}.png"))


def _run_names(served: dict[str, Any]) -> dict[str, str]:
    """Return run name -> parent run id (or "") of the pipeline's experiment, through the REST API."""
    body = json.dumps({"experiment_ids": [served["experiment_id"]], "max_results": 1000}).encode()
    req = urllib.request.Request(f"{served['mlflow']}/api/2.0/mlflow/runs/search", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        runs = json.loads(r.read()).get("runs", [])
    out = {}
    for run in runs:
        tags = {t["key"]: t["value"] for t in run["data"].get("tags", [])}
        out[run["info"]["run_name"]] = tags.get("mlflow.parentRunId", "")
    return out


def test_experiment_opens_on_the_runs_table_with_the_nested_runs(served: dict[str, Any], page: Any) -> None:
    out = served["out"]
    pipeline_id = out["pipeline_run_id"]
    names = _run_names(served)
    compress_id = out["compress"]["compress_run_id"]
    expected_children = {"train mlp": pipeline_id, "compress": pipeline_id, "ptq-int8": compress_id,
                         "fp16": compress_id, "profile 3 versions x 2 boards": pipeline_id}
    assert {k: names.get(k) for k in expected_children} == expected_children
    link = f"{served['mlflow']}/#/experiments/{served['experiment_id']}?workflowType=machine_learning"
    assert served["links"] == [link]  # `tinymlops ui` prints the experiment's runs-table link
    page.goto(link)
    page.get_by_role("link", name="pipeline", exact=True).wait_for()
    # the runs table, not the GenAI view: no traces overview, no "Detect Issues" prompt
    body = page.inner_text("body")
    assert "Detect Issues" not in body and "Token Usage" not in body
    assert "/runs" in page.url and "workflowType=machine_learning" in page.url
    expanders = "button[data-component-id$='runnamecellrenderer.tsx_46']"  # the +/- beside a parent run's name
    for parent in ("pipeline", "compress"):  # the pipeline run's children, then the compress run's variants
        cell = page.get_by_role("link", name=parent, exact=True).locator("xpath=ancestor::*[@role='gridcell'][1]")
        cell.locator(expanders).click()
    for name in ("pipeline", *expected_children):
        page.get_by_role("link", name=name, exact=True).wait_for()
    _shot(served, page, "runs-table")


def test_version_page_shows_per_board_table_and_signature(served: dict[str, Any], page: Any) -> None:
    version = next(v["version"] for v in served["out"]["compress"]["variants"] if v["variant"] == "ptq-int8")
    page.goto(f"{served['mlflow']}/#/models/{MODEL}/versions/{version}")
    page.get_by_text("Per-board figures").first.wait_for()
    body = page.inner_text("body")
    for board in BOARDS:
        assert board in body, board
    assert "how obtained" in body and "peak RAM (bytes)" in body
    table = page.locator("table", has_text="how obtained").first
    assert table.locator("tr").count() == 1 + len(BOARDS)  # rendered as a table, not as raw markdown
    assert "Boards it is candidate / canary / production for" in body
    # signature: the schema shows the package's input and output tensors, not "Inputs (0) / Outputs (0)"
    assert "Inputs (1)" in body and "Outputs (1)" in body and "Inputs (0)" not in body
    _shot(served, page, "version-page")


def test_release_report_renders_in_the_artifact_viewer(served: dict[str, Any], page: Any) -> None:
    run_id = served["out"]["pipeline_run_id"]
    page.goto(f"{served['mlflow']}/#/experiments/{served['experiment_id']}/runs/{run_id}/artifacts/"
              "release_report.html?workflowType=machine_learning")
    frame_el = page.locator("iframe").first
    frame_el.wait_for()
    frame = frame_el.content_frame
    frame.get_by_text("Release report").first.wait_for()
    text = frame.locator("body").inner_text()
    for needle in ("Variants", "ptq-int8", "fp16", "Recommendation per board", *BOARDS):
        assert needle in text, needle
    imgs = frame.locator("img")
    assert imgs.count() == len(BOARDS)
    assert all(imgs.nth(i).evaluate("i => i.complete && i.naturalWidth") == 1600 for i in range(imgs.count()))
    _shot(served, page, "release-report")


def test_prefect_ui_shows_the_pipeline_artifacts(served: dict[str, Any], page: Any) -> None:
    page.goto(f"{served['prefect']}/artifacts")
    page.get_by_text("3 Artifacts").wait_for()
    for key in ("pipeline-summary", "compress-variants", "profile-recommendations"):
        page.get_by_text(key, exact=True).first.wait_for()
    assert "Can't connect to Server API" not in page.inner_text("body")
    _shot(served, page, "prefect-artifacts")


def test_packed_evidently_report_renders_in_the_artifact_viewer(served: dict[str, Any], page: Any,
                                                                 tmp_path: Path) -> None:
    """A drift report as the drift check logs it: packed (tinymlops.htmlpack), unpacked by the viewer's iframe."""
    import mlflow
    import numpy as np

    from tinymlops.htmlpack import unpack
    from tinymlops.monitor.evidently_report import data_drift

    rng = np.random.default_rng(0)
    names = [f"x_band{i}_log_energy" for i in range(12)]
    res = data_drift(rng.normal(size=(1000, 12)), rng.normal(0.4, 1.2, size=(500, 12)), names)
    report = tmp_path / "data_drift.html"
    report.write_text(res.html, encoding="utf-8")
    size = report.stat().st_size
    # issue 15's bar; the page inside (data already rounded, Evidently's 3.5 MB script bundle) is ~3.8x larger
    assert size <= 1_500_000 and len(unpack(res.html).encode()) > 3.3 * size, size
    run_id = served["out"]["pipeline_run_id"]
    mlflow.MlflowClient(served["mlflow"]).log_artifact(run_id, str(report), "evidently")
    errors: list[str] = []
    # the report's own errors: not MLflow's UI requests to its server (it asks for a few optional endpoints that 404)
    page.on("console", lambda m: errors.append(f"{m.text} ({m.location.get('url')})") if m.type == "error" and
            not str(m.location.get("url", "")).startswith(served["mlflow"]) else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{served['mlflow']}/#/experiments/{served['experiment_id']}/runs/{run_id}/artifacts/"
              "evidently/data_drift.html?workflowType=machine_learning")
    frame_el = page.locator("iframe").first
    frame_el.wait_for()
    frame = frame_el.content_frame
    frame.get_by_text("Share of Drifted Columns").first.wait_for()  # drawn by Evidently's script, after unpacking
    text = frame.locator("body").inner_text()
    assert "Unpacking the report" not in text and "could not be unpacked" not in text
    assert "12\nColumns" in text.replace("\n\n", "\n") and any(n in text for n in names)  # its table, paged
    # plots drawn from the unpacked data: each table row's reference and current histograms (canvas, with ink), and
    # a row's detail panel (a Plotly chart of the column's current values)
    drawn = frame.locator("body").evaluate("""() => [...document.querySelectorAll('canvas')].filter(c => {
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        for (let i = 3; i < d.length; i += 4) if (d[i]) return true;
        return false; }).length""")
    assert drawn >= 2 * 10, drawn  # the table's first page: 10 columns x 2 histograms
    frame.get_by_role("button", name="Detail panel visibility toggle").first.click()
    plot = frame.locator(".js-plotly-plot").first
    plot.locator(".main-svg").first.wait_for()
    box = plot.bounding_box()
    assert box and box["width"] > 600 and box["height"] > 200, box
    unpack_ms = frame.locator("body").evaluate("() => performance.getEntriesByName('tinymlops-unpack')[0].duration")
    print(f"packed report {size / 1e6:.3f} MB, unpacked in the artifact viewer in {unpack_ms:.0f} ms")
    assert not errors, errors[:5]  # no console errors from the page or the report in its frame
    _shot(served, page, "evidently-report")


def test_packed_page_with_hostile_text_unpacks_exactly_in_chromium(page: Any, tmp_path: Path) -> None:
    """Every 7-bit escape case and multi-byte text through the in-page decoder (7-bit text -> bytes -> xz)."""
    import html as html_lib
    import random

    from tinymlops.htmlpack import pack

    rng = random.Random(7)
    noise = "".join(rng.choice("<>/!-\"'\\&;script\t é€😀\u2028") for _ in range(150_000))
    title = "</title><script>alert(1)</script>"
    source = (f"<html><head><meta charset='utf-8'><title>{html_lib.escape(title)}</title></head>"
              f"<body><p id='n'>{html_lib.escape(noise)}</p></body></html>")
    path = tmp_path / "hostile.html"
    path.write_text(pack(source), encoding="utf-8")
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(path.as_uri())
    page.locator("#n").wait_for(state="attached")
    assert page.evaluate("document.getElementById('n').textContent") == noise
    assert page.title() == title and not errors
