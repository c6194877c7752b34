"""Accuracy-vs-latency charts readable at 1,600 px: one figure per board, point labels that never overlap.

Every version is labelled ``v<N>`` beside its point; a label goes to the first candidate offset whose box meets no
other label or point marker (measured in display pixels); a point with no free offset stays unlabelled rather than
overlap. The list version -> variant beside the axes keeps labels short.
"""

from __future__ import annotations

import io
from typing import Any

#: 10 x 6 inches at 160 dpi = 1,600 x 960 px
FIGSIZE = (10.0, 6.0)
DPI = 160
#: label offsets in points, nearest first: a ring of 8 directions at growing distance
_OFFSETS = [(round(d * dx) - (14 if dx < 0 else 0), round(d * dy) - 4) for d in (9, 18, 28, 40, 54)
            for dx, dy in ((1, 0.6), (1, -0.6), (-1, 0.6), (-1, -0.6), (0, 1), (0, -1.1), (1.3, 0), (-1.3, 0))]


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plottable(rows: list[dict[str, Any]], target: str) -> list[dict[str, Any]]:
    return [r for r in rows if r["target"] == target and r.get("accuracy") is not None
            and r.get("latency_ms") is not None and r["latency_ms"] == r["latency_ms"] and r["latency_ms"] > 0]


def place_labels(ax: Any, points: list[tuple[float, float, str]]) -> list[Any]:
    """Annotate points with their text at the first offset free of other labels and markers; return the labels."""
    from matplotlib.text import Text

    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    taken = []
    for x, y, _ in points:  # the markers themselves (about 10 px across)
        px, py = ax.transData.transform((x, y))
        taken.append((px - 6, py - 6, px + 6, py + 6))
    placed = []
    for x, y, text in points:
        for dx, dy in _OFFSETS:
            ann = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=9,
                              arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "0.45", "shrinkA": 0, "shrinkB": 3})
            ann.update_positions(renderer)
            bb = Text.get_window_extent(ann, renderer)  # the text alone (Annotation's box includes its leader line)
            box = (bb.x0 - 1, bb.y0 - 1, bb.x1 + 1, bb.y1 + 1)
            if not any(box[0] < t[2] and t[0] < box[2] and box[1] < t[3] and t[1] < box[3] for t in taken):
                taken.append(box)
                placed.append(ann)
                break
            ann.remove()
    return placed


def board_figure(rows: list[dict[str, Any]], target: str, latency_slo_ms: float | None = None) -> Any:
    """Plot one board: accuracy vs latency (log axis), fits / does not fit, Pareto front, recommended version."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=FIGSIZE, dpi=DPI)
    trow = sorted(_plottable(rows, target), key=lambda r: (r["latency_ms"], -r["accuracy"]))
    for fits, marker, color, label in ((True, "o", "tab:blue", "fits"), (False, "x", "tab:gray", "does not fit")):
        pts = [r for r in trow if bool(r.get("fits")) is fits]
        if pts:
            ax.scatter([r["latency_ms"] for r in pts], [r["accuracy"] for r in pts], marker=marker, c=color, s=40,
                       label=label, zorder=3)
    front = sorted((r for r in trow if r.get("pareto")), key=lambda r: r["latency_ms"])
    if front:
        ax.plot([r["latency_ms"] for r in front], [r["accuracy"] for r in front], "-", c="tab:orange", lw=1.5,
                label="Pareto front", zorder=2)
    for r in trow:
        if r.get("recommended"):
            ax.scatter([r["latency_ms"]], [r["accuracy"]], marker="*", s=320, c="tab:red", zorder=4,
                       label=f"recommended: v{r['version']} {r['variant']}")
    if latency_slo_ms:
        ax.axvline(latency_slo_ms, ls="--", c="tab:red", lw=1, label=f"latency SLO {latency_slo_ms:g} ms")
    ax.set_xscale("log")
    ax.set_title(f"{target}: accuracy vs latency per version", fontsize=13)
    ax.set_xlabel("latency per inference (ms, log scale)", fontsize=11)
    ax.set_ylabel("test accuracy", fontsize=11)
    ax.grid(True, which="both", alpha=0.3)
    ax.margins(x=0.15, y=0.12)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 0.42), fontsize=9)  # outside: never over a point
    versions = "\n".join(f"v{r['version']:<3} {r['variant'][:18]:<18} {r['latency_ms']:>8.3g} ms {r['accuracy']:6.1%}"
                         for r in sorted(trow, key=lambda r: int(r["version"])))
    if versions:
        ax.text(1.01, 1.0, versions, transform=ax.transAxes, va="top", fontsize=9, family="monospace")
    fig.tight_layout()
    place_labels(ax, [(r["latency_ms"], r["accuracy"], f"v{r['version']}") for r in trow])
    return fig


def overview_figure(rows: list[dict[str, Any]], targets: list[Any]) -> Any:
    """Plot every board small (3 per row, 1,600 px wide); only the recommended version is labelled."""
    plt = _plt()
    n = max(len(targets), 1)
    cols = min(3, n)
    nrows = (n + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(FIGSIZE[0], 3.0 * nrows), dpi=DPI, squeeze=False)
    for ax, t in zip(axes.flat, targets, strict=False):
        trow = _plottable(rows, t.name)
        for fits, marker, color in ((True, "o", "tab:blue"), (False, "x", "tab:gray")):
            pts = [r for r in trow if bool(r.get("fits")) is fits]
            ax.scatter([r["latency_ms"] for r in pts], [r["accuracy"] for r in pts], marker=marker, c=color, s=18)
        for r in trow:
            if r.get("recommended"):
                ax.scatter([r["latency_ms"]], [r["accuracy"]], marker="*", s=160, c="tab:red", zorder=4)
                ax.annotate(f"v{r['version']}", (r["latency_ms"], r["accuracy"]), xytext=(6, 4),
                            textcoords="offset points", fontsize=8)
        ax.set_xscale("log")
        ax.set_title(t.name, fontsize=9)
        ax.set_xlabel("latency (ms, log)", fontsize=8)
        ax.set_ylabel("accuracy", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def png_bytes(fig: Any) -> bytes:
    """Render a figure to PNG bytes (and close it)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    _plt().close(fig)
    return buf.getvalue()
