"""Version-page markdown, readable per-board charts and the self-contained release report (no TensorFlow)."""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

import pytest

from tinymlops import registry, report
from tinymlops.registry_types import AliasMove, VersionInfo


def _rows(target: str = "nucleo", n: int = 9) -> list[dict[str, Any]]:
    # crowded on purpose: nine versions within a few percent of latency and accuracy (the demo's int8 cluster)
    rows = [{"target": target, "version": str(i + 1), "variant": f"variant-{i + 1}", "fits": i % 3 != 0,
             "accuracy": 0.95 + 0.001 * (i % 4), "latency_ms": 2.0 * (1 + 0.01 * i), "energy_uj": 40.0 + i,
             "peak_ram_bytes": 20000 + i, "flash_bytes": 60000, "pareto": i in (1, 5), "recommended": i == 5,
             "reasons": [] if i % 3 else ["peak RAM 300 KB > 256 KB"],
             "sources": {"latency_ms": "device-measured", "peak_ram_bytes": "tflm-measured arena"}}
            for i in range(n)]
    if n > 3:  # one far-away version stretches the axes, so the cluster is a few pixels across (as in the demo)
        rows[-1].update(latency_ms=300.0, accuracy=0.5)
    return rows


def test_sections_are_replaced_not_appended_again() -> None:
    text = "**demo: float32 mlp**\n\n- **dataset**: x"
    once = report.set_section(text, report.BOARDS_HEADING, "| a |")
    twice = report.set_section(once, report.BOARDS_HEADING, "| b |")
    assert twice.count(report.BOARDS_HEADING) == 1 and "| b |" in twice and "| a |" not in twice
    both = report.set_section(twice, report.ALIASES_HEADING, "- candidate")
    again = report.set_section(both, report.BOARDS_HEADING, "| c |")
    assert again.startswith(text) and "- candidate" in again and "| c |" in again and "| b |" not in again


def test_board_table_says_how_each_figure_was_obtained() -> None:
    md = report.board_table(_rows(n=2))
    lines = md.splitlines()
    assert lines[0].startswith("| board | fits | latency (ms) | energy (µJ) | peak RAM (bytes) | flash (bytes) |")
    assert len(lines) == 4 and all(line.count("|") == lines[0].count("|") for line in lines)
    assert "latency: device-measured" in md and "RAM: tflm-measured arena" in md
    assert "no — peak RAM 300 KB > 256 KB" in lines[2]  # version 1 does not fit, and the reason is given
    assert "| 20000 |" in lines[2]


def test_alias_lines_name_role_board_and_date() -> None:
    v = VersionInfo("m", "3", "r", "s", aliases=["candidate-raspberry-pi-4", "production-nucleo", "other"])
    moves = [AliasMove(1764720000000, "candidate-raspberry-pi-4", "3", "", "", ""),
             AliasMove(1764723600000, "production-nucleo", "2", "", "", ""),
             AliasMove(1764727200000, "production-nucleo", "3", "2", "", "")]
    lines = report.alias_lines(v, moves).splitlines()
    assert lines == ["- **candidate** for `raspberry-pi-4` since 2025-12-03 00:00 UTC",
                     "- **production** for `nucleo` since 2025-12-03 02:00 UTC"]
    assert "none" in report.alias_lines(VersionInfo("m", "1", "r", "s"), moves)


def _boxes(fig: Any) -> list[Any]:
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    ax = fig.axes[0]
    from matplotlib.text import Text

    return [Text.get_window_extent(t, r) for t in ax.texts if t.get_text().startswith("v") and ":" not in t.get_text()]


def test_board_figure_is_1600_px_wide_with_no_overlapping_labels() -> None:
    from tinymlops.profile.plots import DPI, board_figure

    fig = board_figure(_rows(), "nucleo", latency_slo_ms=5.0)
    assert round(fig.get_figwidth() * DPI) == 1600
    boxes = _boxes(fig)
    assert len(boxes) >= 7  # almost every crowded point keeps a label
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not a.overlaps(b), (a, b)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and "log scale" in ax.get_xlabel() and "ms" in ax.get_xlabel()


def test_the_old_annotation_overlapped() -> None:
    """The regression the placement fixes: every point annotated at the same offset overlaps on crowded data."""
    from tinymlops.profile.plots import board_figure

    fig = board_figure(_rows(), "nucleo")
    ax = fig.axes[0]
    for t in list(ax.texts):
        if t.get_text().startswith("v") and ":" not in t.get_text():
            t.remove()
    for r in _rows():
        ax.annotate(f"v{r['version']}", (r["latency_ms"], r["accuracy"]), fontsize=9)
    boxes = _boxes(fig)
    assert any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])


def _summary() -> dict[str, Any]:
    rows = _rows("nucleo") + _rows("raspberry-pi-4")
    rec = {"recommended_version": "6", "variant": "variant-6", "accuracy": 0.951, "latency_ms": 2.1,
           "energy_uj": 45.0, "peak_ram_bytes": 20005, "latency_source": "device-measured", "reasons": []}
    return {
        "project": "demo", "pipeline_run_id": "abc",
        "train": {"model_uri": "models:/demo-model/1", "metrics": {"test_accuracy": 0.97}},
        "compress": {"variants": [{"variant": "ptq-int8", "version": "2", "format": "tflite", "size_bytes": 9000,
                                   "accuracy": 0.965, "accuracy_delta": -0.005, "status": "registered"}]},
        "profile": {"targets": {"nucleo": rec, "raspberry-pi-4": rec}, "rows": rows},
        "rollout": {"table": {"columns": ["target", "version", "stages", "decision", "reason"],
                              "rows": [["raspberry-pi-4", "v6 (variant-6)", "3/3", "promoted to production", ""]]}},
        "drift": {"groups": [{"target": "nucleo", "cohort": "line-b", "version": "6", "level": "retrain",
                              "reasons": ["<script>x</script> drifted"], "mlflow_run_id": "r123"}]},
    }


def test_release_report_is_self_contained_html() -> None:
    moves = [AliasMove(2_000_000_000_000, "production-raspberry-pi-4", "6", "", "gates passed", "")]
    text = report.release_report_html(_summary(), "7", 1_999_999_999_000, {"nucleo": 5.0}, moves)
    assert "<script" not in text.lower()  # escaped: a drift reason cannot inject markup
    assert "&lt;script&gt;x&lt;/script&gt;" in text
    assert not re.search(r"""(src|href)=["'](https?:)?//""", text)  # nothing fetched from elsewhere
    imgs = re.findall(r'src="data:image/png;base64,([^"]+)"', text)
    assert len(imgs) == 2 and all(base64.b64decode(i).startswith(b"\x89PNG") for i in imgs)  # one per board
    for needle in ("ptq-int8", "promoted to production", "production-raspberry-pi-4", "retrain",
                   'href="/#/experiments/7/runs/r123/artifacts"', "Recommendation per board"):
        assert needle in text


def test_release_report_of_a_train_only_pipeline() -> None:
    s = {"project": "p", "train": {"model_uri": "models:/m/1", "metrics": {"test_accuracy": 0.5}}}
    text = report.release_report_html(s, "1", 0)
    assert text.count("not run") == 4


def test_version_pages_get_board_table_and_aliases(tm_home: Path, tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "manifest.json").write_text('{"file": "m.tflite"}')
    with registry.run("report-unit", "train mlp") as r:
        registry.log_artifact(r.run_id, pkg, registry.PACKAGE_DIR)
    v1 = registry.register_version("rep-model", r.run_id, {"variant": "float32"}, "**float32 mlp**")
    v2 = registry.register_version("rep-model", r.run_id, {"variant": "ptq-int8"}, "**ptq-int8**")
    registry.set_alias("rep-model", "candidate-nucleo", v2, "best")
    rows = [{**x, "version": v} for x, v in zip(_rows(n=2), (v1, v2), strict=True)]
    report.refresh_version_pages("rep-model", rows)
    report.refresh_version_pages("rep-model", rows)  # idempotent
    d2 = registry.get_version("rep-model", v2).description
    assert d2.startswith("**ptq-int8**") and d2.count(report.BOARDS_HEADING) == 1
    assert "| nucleo | yes |" in d2 and "- **candidate** for `nucleo` since" in d2
    assert "none" in registry.get_version("rep-model", v1).description.split(report.ALIASES_HEADING)[1]


def test_day_run_is_created_once(tm_home: Path) -> None:
    a = registry.day_run("report-drift", "drift checks 2026-12-03", {"tinymlops.stage": "drift-day", "day": "d1"})
    b = registry.day_run("report-drift", "drift checks 2026-12-03", {"tinymlops.stage": "drift-day", "day": "d1"})
    c = registry.day_run("report-drift", "drift checks 2026-12-04", {"tinymlops.stage": "drift-day", "day": "d2"})
    assert a == b != c
    assert registry.get_run(a).status == "FINISHED" and registry.get_run(a).name == "drift checks 2026-12-03"


@pytest.mark.parametrize("n", [1, 11])
def test_overview_keeps_1600_px(n: int) -> None:
    from types import SimpleNamespace

    from tinymlops.profile.plots import DPI, overview_figure

    rows = [r for i in range(n) for r in _rows(f"b{i}", 3)]
    fig = overview_figure(rows, [SimpleNamespace(name=f"b{i}") for i in range(n)])
    assert round(fig.get_figwidth() * DPI) == 1600 and len([a for a in fig.axes if a.has_data()]) == n
