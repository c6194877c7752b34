"""What a reviewer reads: the version page's markdown (per-board table, aliases with dates) and the release report.

The MLflow UI renders a version's description as markdown. Sections this module owns start with a fixed
``### `` heading and run to the next one, so refreshing them (after profiling, after a rollout) keeps the rest of
the description. The release report is one self-contained HTML file (charts inlined as PNG data URIs, no scripts)
logged on the pipeline run; MLflow's artifact viewer renders it.
"""

from __future__ import annotations

import base64
import html
import time
from collections.abc import Iterable
from typing import Any

from tinymlops import registry
from tinymlops.registry_types import AliasMove, VersionInfo

BOARDS_HEADING = "### Per-board figures"
ALIASES_HEADING = "### Boards it is candidate / canary / production for"
ALIAS_PREFIXES = ("candidate-", "canary-", "production-")
_FIGURE_LABELS = {"latency_ms": "latency", "energy_uj": "energy", "peak_ram_bytes": "RAM", "flash_bytes": "flash"}


def _fmt(v: Any, spec: str = ".4g") -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    return format(v, spec) if isinstance(v, int | float) else str(v)


def _date(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ms / 1000))


def set_section(description: str, heading: str, body: str) -> str:
    """Return ``description`` with the section under ``heading`` replaced by ``body`` (appended if absent)."""
    lines = (description or "").rstrip().splitlines()
    if heading in lines:
        i = lines.index(heading)
        j = next((k for k in range(i + 1, len(lines)) if lines[k].startswith("### ")), len(lines))
        lines = lines[:i] + lines[j:]
    head = "\n".join(lines).rstrip()
    return (head + "\n\n" if head else "") + f"{heading}\n\n{body.strip()}\n"


def board_table(rows: Iterable[dict[str, Any]]) -> str:
    """Return the markdown table of one version's profile rows: figures per board and how each was obtained."""
    out = ["| board | fits | latency (ms) | energy (µJ) | peak RAM (bytes) | flash (bytes) | how obtained |",
           "|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: str(r["target"])):
        src = r.get("sources") or {}
        how = "; ".join(f"{_FIGURE_LABELS.get(k, k)}: {v}" for k, v in src.items()) or "static estimate"
        why = "" if r.get("fits") else " — " + "; ".join(r.get("reasons") or [])[:160]
        out.append(f"| {r['target']} | {_fmt(bool(r.get('fits')))}{why} | {_fmt(r.get('latency_ms'))} | "
                   f"{_fmt(r.get('energy_uj'))} | {_fmt(r.get('peak_ram_bytes'), 'd')} | "
                   f"{_fmt(r.get('flash_bytes'), 'd')} | {how.replace('|', '/')} |")
    return "\n".join(out)


def alias_lines(version: VersionInfo, moves: list[AliasMove]) -> str:
    """Return one bullet per alias pointing at ``version``: role, board and since when (from the alias history)."""
    out = []
    for alias in sorted(a for a in version.aliases if a.startswith(ALIAS_PREFIXES)):
        role, board = alias.split("-", 1)
        since = [m.time_ms for m in moves if m.alias == alias and m.version == version.version]
        when = f" since {_date(max(since))}" if since else ""
        out.append(f"- **{role}** for `{board}`{when}")
    return "\n".join(out) or "- none (no candidate, canary or production alias points here)"


def refresh_version_pages(model_name: str, rows: list[dict[str, Any]] | None = None) -> None:
    """Rewrite each version's per-board section (from profile ``rows``) and its alias section."""
    by_version: dict[str, list[dict[str, Any]]] = {}
    for r in rows or []:
        by_version.setdefault(str(r["version"]), []).append(r)
    moves = registry.alias_history(model_name)
    for v in registry.list_versions(model_name):
        text = v.description or ""
        if v.version in by_version:
            text = set_section(text, BOARDS_HEADING, board_table(by_version[v.version]))
        text = set_section(text, ALIASES_HEADING, alias_lines(v, moves))
        if text != v.description:
            registry.set_version_description(model_name, v.version, text)


# ---------------------------------------------------------------------------------------------------------------
# release report: one self-contained HTML artifact on the pipeline run
# ---------------------------------------------------------------------------------------------------------------

_CSS = ("body{font:15px/1.45 system-ui,sans-serif;max-width:1640px;margin:1.5em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:.6em 0 1.4em}td,th{border:1px solid #ccc;padding:3px 8px;"
        "text-align:left;vertical-align:top}th{background:#f2f2f2}img{max-width:100%;border:1px solid #ddd}"
        "h2{border-bottom:2px solid #ddd;margin-top:1.6em}.ok{color:#176117}.warn{color:#8a5a00}"
        ".retrain,.bad{color:#a11}")


class _Raw(str):
    """HTML that is already escaped (a link, a span)."""


def _table(columns: list[str], rows: Iterable[Iterable[Any]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{c if isinstance(c, _Raw) else html.escape(_fmt(c))}</td>" for c in r)
                   + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _variants_section(compress: dict[str, Any] | None) -> str:
    if not compress:
        return "<p>compress stage not run.</p>"
    rows = [[v["variant"], v.get("version"), v.get("format"), v.get("size_bytes"),
             None if v.get("accuracy") is None else f"{100 * v['accuracy']:.2f} %",
             None if v.get("accuracy_delta") is None else f"{100 * v['accuracy_delta']:+.2f}", v["status"]]
            for v in compress.get("variants", [])]
    return _table(["variant", "version", "format", "size (bytes)", "accuracy", "Δ pts vs float", "status"], rows)


def _profile_section(profile: dict[str, Any] | None, targets_slo: dict[str, float | None]) -> str:
    if not profile:
        return "<p>profile stage not run.</p>"
    from tinymlops.profile.plots import board_figure, png_bytes

    recs = [[t, r["recommended_version"], r["variant"], r["accuracy"], r["latency_ms"], r["energy_uj"],
             None if r["peak_ram_bytes"] is None else int(r["peak_ram_bytes"]), r.get("latency_source"),
             "; ".join(r.get("reasons", [])[:2])]
            for t, r in profile["targets"].items()]
    out = [_table(["board", "recommended version", "variant", "accuracy", "latency (ms)", "energy (µJ)",
                   "peak RAM (bytes)", "latency from", "why none"], recs)]
    rows = profile.get("rows") or []
    for t in profile["targets"]:
        if any(r["target"] == t for r in rows):
            out.append(f"<h3>{html.escape(t)}</h3>" + _img(png_bytes(board_figure(rows, t, targets_slo.get(t))),
                                                         f"accuracy vs latency on {t}"))
    return "".join(out)


def _drift_section(drift: dict[str, Any] | None, experiment_id: str) -> str:
    if not drift:
        return "<p>drift stage not run.</p>"
    rows = []
    for g in drift.get("groups", []):
        run_id = g.get("mlflow_run_id")
        link = (_Raw(f'<a target="_top" href="/#/experiments/{experiment_id}/runs/{run_id}/artifacts">'
                     "verdict and Evidently reports</a>") if run_id else "")
        rows.append([g.get("target"), g.get("cohort"), g.get("version"),
                     _Raw(f'<span class="{html.escape(g["level"])}">{html.escape(g["level"])}</span>'),
                     "; ".join(g.get("reasons", [])[:2])[:200], link])
    return _table(["board", "cohort", "version", "verdict", "reasons", "MLflow run"], rows)


def _rollout_section(rollout: dict[str, Any] | None, moves: list[AliasMove], since_ms: int) -> str:
    if not rollout or "table" not in rollout:
        return f"<p>rollout stage {'skipped: ' + html.escape(str(rollout.get('skipped'))) if rollout else 'not run'}.</p>"
    tbl = rollout["table"]
    timeline = [[_date(m.time_ms), m.alias, m.version or "(removed)", m.previous_version, m.reason[:160]]
                for m in moves if m.time_ms >= since_ms and m.alias.startswith(("canary-", "production-"))]
    return (_table(list(tbl["columns"]), tbl["rows"]) + "<h3>timeline of alias moves</h3>"
            + _table(["time", "alias", "version", "previous", "reason"], timeline))


def release_report_html(summary: dict[str, Any], experiment_id: str, started_ms: int,
                        targets_slo: dict[str, float | None] | None = None,
                        moves: list[AliasMove] | None = None) -> str:
    """Return the release report of one pipeline run (its summary dict) as one self-contained HTML page."""
    t = summary["train"]
    model = str(t["model_uri"]).split("/")[1] if "/" in str(t["model_uri"]) else ""
    head = (f"<h1>Release report: {html.escape(summary['project'])}</h1><p>pipeline run "
            f"<code>{html.escape(summary.get('pipeline_run_id', ''))}</code> started {_date(started_ms)}; "
            f"{'started from' if t.get('skipped') else 'trained'} <code>{html.escape(t['model_uri'])}</code> "
            f"(test accuracy {100 * t['metrics']['test_accuracy']:.2f} %).</p>")
    parts = [head, "<h2>Variants</h2>", _variants_section(summary.get("compress")),
             "<h2>Recommendation per board</h2>", _profile_section(summary.get("profile"), targets_slo or {}),
             "<h2>Rollout</h2>", _rollout_section(summary.get("rollout"), moves or [], started_ms),
             "<h2>Drift verdicts</h2>", _drift_section(summary.get("drift"), experiment_id)]
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>release report {html.escape(model)}</title>"
            f"<style>{_CSS}</style></head><body>{''.join(parts)}</body></html>")


def _rows_from_csv(text: str) -> list[dict[str, Any]]:
    """Parse the profile run's ``profile/matrix.csv`` back into typed rows (what the charts need)."""
    import csv
    import io

    def num(v: str) -> float | None:
        try:
            return float(v)
        except ValueError:
            return None

    return [{**r, "accuracy": num(r["accuracy"]), "latency_ms": num(r["latency_ms"]),
             "energy_uj": num(r["energy_uj"]), "fits": r["fits"] == "True", "pareto": r["pareto"] == "True",
             "recommended": r["recommended"] == "True"} for r in csv.DictReader(io.StringIO(text))]


def log_release_report(summary: dict[str, Any], run_id: str, experiment_id: str, started_ms: int,
                       targets_dir: str | None = None) -> int:
    """Build the pipeline run's release report and log it as ``release_report.html``; return its size in bytes."""
    import tempfile
    from pathlib import Path

    from tinymlops.profile.targets import resolve_targets

    summary = dict(summary)
    slo: dict[str, float | None] = {}
    profile = summary.get("profile")
    if profile and profile.get("profile_run_id"):
        with tempfile.TemporaryDirectory(prefix="tinymlops-report-") as d:
            csv_path = registry.download(profile["profile_run_id"], "profile/matrix.csv", Path(d))
            summary["profile"] = {**profile, "rows": _rows_from_csv(csv_path.read_text())}
        names = list(profile["targets"])
        found = resolve_targets(names, targets_dir) if targets_dir else resolve_targets(names)
        slo = {t.name: t.latency_slo_ms for t in found}
    model = str(summary["train"]["model_uri"]).split("/")[1]
    text = release_report_html(summary, experiment_id, started_ms, slo, registry.alias_history(model))
    registry.log_text(run_id, text, "release_report.html")
    return len(text.encode())
