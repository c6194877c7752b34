"""Profile every registered version of a model on every target, pick per-target recommendations, log to MLflow.

``run_profile`` is the stage's one entry point (``flows/profile.py`` wraps it; ``tinymlops profile MODEL
--no-prefect`` calls it). Per version x target it records feasibility and figures; per target the recommended version (highest accuracy among feasible, ties to lower
energy) and the accuracy/latency Pareto front. MLflow gets: metrics ``<target>.<figure>`` and tags
``fits.<target>`` on each version's run, version tags ``fits.<target>``, alias ``candidate-<target>`` on the
recommended version, and a ``profile`` run with the CSV matrix, the PNG chart and the JSON summary.
"""

from __future__ import annotations

import csv
import io
import logging
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tinymlops import registry
from tinymlops.errors import RegistryError, TinyMLOpsError
from tinymlops.hygiene import INCOMPLETE_TAG
from tinymlops.metrics import PROFILE_FIGURES, fits_key, profile_metrics
from tinymlops.profile.profiler import HOST_RUNTIME, RUNTIME_FORMATS, ProfileCache, profile_model
from tinymlops.profile.select import pareto_front, recommend
from tinymlops.profile.targets import TargetConfig, resolve_targets

log = logging.getLogger(__name__)

CSV_COLUMNS = ["target", "version", "variant", "format", "accuracy", "fits", "latency_ms", "energy_uj",
               "peak_ram_bytes", "flash_bytes", "macs", "params", "latency_source", "pareto", "recommended",
               "reasons"]


def fetch_versions(model_name: str, work_dir: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Download every version that has a package; return (versions, skipped notes)."""
    versions, skipped = [], []
    for mv in registry.list_versions(model_name):
        if INCOMPLETE_TAG in mv.tags:  # registered by a stage that was interrupted or crashed (tinymlops doctor)
            skipped.append(f"version {mv.version}: incomplete ({mv.tags[INCOMPLETE_TAG]}), not a candidate")
            continue
        try:
            pkg = registry.download_package(model_name, mv.version, work_dir / f"v{mv.version}")
            manifest = registry.read_manifest(pkg)
            model_file = pkg / manifest["file"]
            if not model_file.is_file():
                raise FileNotFoundError(model_file)
        except (TinyMLOpsError, OSError, KeyError, ValueError) as exc:
            skipped.append(f"version {mv.version}: no usable package ({type(exc).__name__}: {exc})"[:300])
            continue
        except Exception as exc:  # MLflow raises its own types for missing artifacts
            skipped.append(f"version {mv.version}: no usable package ({type(exc).__name__})")
            continue
        accuracy = (manifest.get("metrics") or {}).get("accuracy")
        if accuracy is None:
            try:
                accuracy = registry.get_run(mv.run_id).metrics.get("accuracy")
            except RegistryError:
                accuracy = None
        versions.append({"version": str(mv.version), "run_id": mv.run_id, "path": model_file,
                         "variant": mv.tags.get("variant", manifest.get("variant", "")),
                         "format": mv.tags.get("format", manifest.get("format", "")),
                         "accuracy": None if accuracy is None else float(accuracy)})
    return versions, skipped


def profile_matrix(versions: list[dict[str, Any]], targets: list[TargetConfig],
                   cache: ProfileCache | None = None) -> list[dict[str, Any]]:
    """Profile each version on each target; return flat rows (one per version x target)."""
    cache = cache or ProfileCache()
    # one host worker for all host measurements (one TensorFlow import), before the per-target loop
    host_items = [(v["path"], HOST_RUNTIME[t.runtime]) for t in targets if t.host and t.runtime in HOST_RUNTIME
                  for v in versions if v["path"].suffix.lstrip(".") in RUNTIME_FORMATS[t.runtime]]
    cache.prefetch_host(list(dict.fromkeys(host_items)))
    return [_profile_row(v, v["path"], t, cache) for v in versions for t in targets]


def _profile_row(v: dict[str, Any], path: Path, t: TargetConfig, cache: ProfileCache) -> dict[str, Any]:
    """Profile one version on one target; a failure is a row that does not fit, with the reason."""
    try:
        r = profile_model(path, t, cache)
    except TinyMLOpsError as exc:
        r = {"target": t.name, "fits": False, "reasons": [str(exc)], "latency_ms": float("nan"),
             "energy_uj": float("nan"), "peak_ram_bytes": 0, "flash_bytes": 0, "macs": 0, "params": 0,
             "sources": {}}
    return {**r, "version": v["version"], "variant": v["variant"], "run_id": v["run_id"],
            "accuracy": v["accuracy"], "format": v["format"] or r.get("format", "")}


# --- the same stage as fan-out steps (flows/profile.py maps profile_cell on a Dask cluster) -----------------------
_cell_state: dict[str, Any] = {}  # per worker process: one package directory and one profile cache


@dataclass(frozen=True)
class ProfilePlan:
    """What the cells of one profile run need: data and identifiers only (any worker can run any cell)."""

    model: str
    versions: list[dict[str, Any]]  # version, run_id, variant, format, accuracy (no local paths)
    targets: list[dict[str, Any]]  # the resolved target configs
    skipped: list[str]
    started: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def target_configs(self) -> list[TargetConfig]:
        return [TargetConfig.model_validate(t) for t in self.targets]


def _open(model_name: str, targets_dir: str | Path | None, targets: list[str] | str, work_dir: Path,
          ) -> tuple[ProfilePlan, list[dict[str, Any]]]:
    t0 = time.time()
    tlist = resolve_targets(targets, targets_dir) if targets_dir else resolve_targets(targets)
    versions, skipped = fetch_versions(model_name, work_dir)
    if not versions:
        raise RegistryError(f"registered model {model_name!r} has no version with a package to profile"
                            + (f" ({'; '.join(skipped)})" if skipped else ""))
    plan = ProfilePlan(model_name, [{k: v for k, v in x.items() if k != "path"} for x in versions],
                       [t.model_dump(mode="json") for t in tlist], skipped, t0)
    return plan, versions


def open_profile(model_name: str, targets_dir: str | Path | None = None, targets: list[str] | str = "all",
                 ) -> ProfilePlan:
    """Resolve the targets and list the versions with a usable package (raises like :func:`run_profile`)."""
    with tempfile.TemporaryDirectory(prefix="tinymlops-profile-") as tmp:
        return _open(model_name, targets_dir, targets, Path(tmp))[0]


def profile_cell(plan: ProfilePlan | dict[str, Any], version: dict[str, Any], target: str) -> dict[str, Any]:
    """Profile one (version, target) cell in this process: download the package once per process, profile it."""
    plan = plan if isinstance(plan, ProfilePlan) else ProfilePlan(**plan)
    if "dir" not in _cell_state:
        _cell_state["dir"] = Path(tempfile.mkdtemp(prefix="tinymlops-profile-cells-"))
        _cell_state["cache"] = ProfileCache()
    packages: dict[tuple[str, str], Path] = _cell_state.setdefault("packages", {})
    key = (plan.model, str(version["version"]))
    if key not in packages:
        packages[key] = registry.download_package(*key, _cell_state["dir"] / plan.model / f"v{key[1]}")
    path = packages[key] / registry.read_manifest(packages[key])["file"]
    t = next(t for t in plan.target_configs() if t.name == target)
    return _profile_row(version, path, t, _cell_state["cache"])


def close_profile(plan: ProfilePlan | dict[str, Any], rows: list[dict[str, Any]], experiment: str | None = None,
                  parent_run_id: str | None = None) -> ProfileResult:
    """Select per target, log to MLflow, move candidate aliases: the end of the stage, whoever ran the cells."""
    plan = plan if isinstance(plan, ProfilePlan) else ProfilePlan(**plan)
    tlist = plan.target_configs()
    per_target = select_per_target(rows, tlist)
    summary: dict[str, Any] = {
        "model": plan.model, "versions": [v["version"] for v in plan.versions], "skipped": plan.skipped,
        "targets": per_target, "seconds": round(time.time() - plan.started, 2),
    }
    run_id = log_results(plan.model, rows, per_target, tlist, experiment or f"{plan.model}/profile", summary,
                         parent_run_id)
    return ProfileResult(plan.model, summary["versions"], plan.skipped, per_target,
                         round(time.time() - plan.started, 2), run_id,
                         [{k: r.get(k) for k in CSV_COLUMNS} for r in rows])


def select_per_target(rows: list[dict[str, Any]], targets: list[TargetConfig]) -> dict[str, dict[str, Any]]:
    """Return per target: recommended row summary, Pareto front versions, counts."""
    out = {}
    for t in targets:
        trow = [r for r in rows if r["target"] == t.name]
        best = recommend(trow)
        front = pareto_front(trow)
        for r in trow:
            r["pareto"] = any(r is f for f in front)
            r["recommended"] = best is r
        out[t.name] = {
            "recommended_version": best["version"] if best else None,
            "variant": best["variant"] if best else None,
            "accuracy": best["accuracy"] if best else None,
            "latency_ms": best["latency_ms"] if best else None,
            "energy_uj": best["energy_uj"] if best else None,
            "peak_ram_bytes": best["peak_ram_bytes"] if best else None,
            "flash_bytes": best["flash_bytes"] if best else None,
            "fits": best is not None,
            "latency_source": (best.get("sources") or {}).get("latency_ms") if best else None,
            # emulated targets (tinymlops.export.emulated): flash, RAM and instructions of the linked firmware
            "firmware": (best.get("measured") or {}).get("emulated") if best else None,
            "pareto_versions": [f["version"] for f in front],
            "feasible_versions": [r["version"] for r in trow if r.get("fits")],
            "reasons": [] if best else sorted({f"v{r['version']}: {x}" for r in trow for x in r["reasons"]})[:20],
        }
    return out


def matrix_csv(rows: list[dict[str, Any]]) -> str:
    """Render rows as CSV text."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({**r, "latency_source": (r.get("sources") or {}).get("latency_ms", ""),
                    "reasons": "; ".join(r.get("reasons", []))})
    return buf.getvalue()


def chart(rows: list[dict[str, Any]], targets: list[TargetConfig]) -> Any:
    """Plot accuracy vs latency of every board small (the overview; one readable figure per board in plots.py)."""
    from tinymlops.profile.plots import overview_figure

    return overview_figure(rows, targets)


def log_results(model_name: str, rows: list[dict[str, Any]], per_target: dict[str, dict[str, Any]],
                targets: list[TargetConfig], experiment: str, summary: dict[str, Any],
                parent_run_id: str | None = None) -> str:
    """Log per-version metrics/tags, move candidate aliases, and record a profile run with artifacts.

    Each version's page gets its per-board table and the boards it is candidate for (``report.py``).
    """
    by_version: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_version.setdefault(r["version"], []).append(r)
    for version, vrows in by_version.items():
        run_id = vrows[0]["run_id"]
        metrics, tags = {}, {}
        for r in vrows:
            tags[fits_key(r["target"])] = str(bool(r["fits"])).lower()
            computed = r["latency_ms"] == r["latency_ms"]  # NaN: profiling failed, only ``fits`` is logged
            metrics.update(profile_metrics(r["target"], r if computed else {}, bool(r["fits"])))
        registry.log_metrics(run_id, metrics)
        registry.set_tags(run_id, tags)
        registry.set_version_tags(model_name, version, tags)
    for t in targets:
        alias = f"candidate-{t.name}"
        rec = per_target[t.name]
        current = registry.get_alias(model_name, alias)
        current_v = current.version if current is not None else None
        if rec["recommended_version"] is None:
            if current_v is not None:
                registry.set_alias(model_name, alias, None, f"no registered version fits {t.name}")
            continue
        if str(current_v) != rec["recommended_version"]:
            reason = (f"profile: highest accuracy among feasible versions on {t.name} "
                      f"({rec['variant']}, {rec['latency_ms']:.4g} ms, {rec['energy_uj']:.4g} uJ)")
            figures = {k: float(rec[k]) for k in PROFILE_FIGURES}
            if rec["accuracy"] is not None:
                figures["accuracy"] = float(rec["accuracy"])
            registry.set_alias(model_name, alias, rec["recommended_version"], reason, figures)
    from tinymlops import report

    report.refresh_version_pages(model_name, rows)
    name = f"profile {len(by_version)} versions x {len(targets)} boards"
    with registry.run(experiment, name, parent_run_id, tags={"stage": "profile", "model": model_name}) as pr:
        registry.log_params(pr.run_id, {"targets": ",".join(t.name for t in targets),
                                        "versions": ",".join(by_version)})
        registry.log_text(pr.run_id, matrix_csv(rows), "profile/matrix.csv")
        registry.log_dict(pr.run_id, summary, "profile/summary.json")
        _log_figures(pr.run_id, rows, targets)
        return pr.run_id


def _log_figures(run_id: str, rows: list[dict[str, Any]], targets: list[TargetConfig]) -> None:
    """Log the overview and one 1,600 px figure per board (``profile/boards/<board>.png``)."""
    import matplotlib.pyplot as plt

    from tinymlops.profile.plots import board_figure

    fig = chart(rows, targets)
    registry.log_figure(run_id, fig, "profile/accuracy_vs_latency.png")
    plt.close(fig)
    for t in targets:
        fig = board_figure(rows, t.name, t.latency_slo_ms)
        registry.log_figure(run_id, fig, f"profile/boards/{t.name}.png")
        plt.close(fig)


@dataclass(frozen=True)
class ProfileResult:
    """What the profile stage hands on: per target the recommended version (alias ``candidate-<target>``)."""

    model: str
    versions: list[str]
    skipped: list[str]
    targets: dict[str, dict[str, Any]]
    seconds: float
    profile_run_id: str
    rows: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self, rows: bool = True) -> dict[str, Any]:
        """Return a JSON-friendly dict (``rows``: include the version x target matrix)."""
        out = asdict(self)
        if not rows:
            out.pop("rows")
        return out


def run_profile(model_name: str, targets_dir: str | Path | None = None, targets: list[str] | str = "all",
                experiment: str | None = None, work_dir: str | Path | None = None,
                parent_run_id: str | None = None) -> ProfileResult:
    """Profile all packaged versions of a registered model on targets; log to MLflow (THE profile entry point).

    Args:
        targets_dir: the target catalogue (default: the catalogue's default search path).
        targets: catalogue names or target YAML paths, or ``"all"``.
        experiment: MLflow experiment of the profile run (default ``<model>/profile``).
        parent_run_id: nest the profile run under this run of ``experiment`` (the pipeline run).
    """
    tmp = tempfile.TemporaryDirectory(prefix="tinymlops-profile-") if work_dir is None else None
    wdir = Path(tmp.name) if tmp else Path(str(work_dir))
    try:
        plan, versions = _open(model_name, targets_dir, targets, wdir)
        return close_profile(plan, profile_matrix(versions, plan.target_configs()), experiment, parent_run_id)
    finally:
        if tmp is not None:
            tmp.cleanup()
