"""One drift check: per model version x target x cohort over a time window, from the fleet store to MLflow.

Resolves the version, reads its package's reference profile, pulls the window's telemetry, merges sketches,
measures, decides (pure verdict), runs Evidently where devices shared samples or labels, and logs everything to
MLflow. Prefect is not imported here: ``flows/drift.py`` wraps these functions and starts retrains.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tinymlops import registry
from tinymlops.errors import RegistryError, UsageError
from tinymlops.ip.extraction import judge_reports
from tinymlops.metrics import target_metric
from tinymlops.monitor.config import DriftConfig
from tinymlops.monitor.drift import DeviceExpectation, DeviceReport, DriftFigures, compute_figures
from tinymlops.monitor.reference import ReferenceProfile
from tinymlops.monitor.verdict import Verdict, decide, render_markdown

_SEVERITY = {"suspected-extraction": 4, "retrain": 3, "warn": 2, "incompatible sketch": 1, "insufficient data": 1, "ok": 0}


@dataclass
class ModelContext:
    """What a drift check needs to know about one registered version."""

    model: str
    version: str
    reference: ReferenceProfile
    feature_names: list[str]
    tags: dict[str, str]
    train_run_id: str | None
    preprocessing: dict[str, Any] | None = None
    run_metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class GroupResult:
    """The outcome for one target x cohort."""

    target: str | None
    cohort: str | None
    verdict: Verdict
    figures: DriftFigures
    evidently: dict[str, Any] | None = None
    run_id: str | None = None
    markdown: str = ""


@dataclass
class CheckResult:
    """The outcome of one drift check over all version x target x cohort groups (``version``: the newest)."""

    model: str
    version: str
    since_unix_s: float
    until_unix_s: float
    groups: list[GroupResult] = field(default_factory=list)

    @property
    def level(self) -> str:
        return max((g.verdict.level for g in self.groups), key=_SEVERITY.__getitem__, default="insufficient data")

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-friendly summary (CLI --json, Prefect results)."""
        return {"model": self.model, "version": self.version, "level": self.level,
                "since_unix_s": self.since_unix_s, "until_unix_s": self.until_unix_s,
                "groups": [{"version": g.verdict.version, "target": g.target, "cohort": g.cohort,
                            "level": g.verdict.level,
                            "reasons": g.verdict.reasons, "drifted_features": g.verdict.drifted_features,
                            "summary": g.verdict.summary, "evidently": g.evidently, "mlflow_run_id": g.run_id}
                           for g in self.groups]}


# ---------------------------------------------------------------------------------------------------------------
# inputs: model version, reference, expectations, telemetry
# ---------------------------------------------------------------------------------------------------------------


def resolve_version(model: str, version: str | None = None, alias: str | None = None) -> str:
    """Return the version to check: explicit, else the alias's, else the latest registered."""
    if version:
        registry.get_version(model, version)
        return str(version)
    if alias:
        mv = registry.get_alias(model, alias)
        if mv is None:
            raise UsageError(f"alias {model}@{alias} is not set")
        return str(mv.version)
    versions = registry.list_versions(model)
    if not versions:
        raise RegistryError(f"registered model {model!r} has no versions")
    return str(versions[-1].version)


def load_context(model: str, version: str) -> ModelContext:
    """Download a version's manifest and read its reference profile."""
    mv = registry.get_version(model, version)
    with tempfile.TemporaryDirectory(prefix="tinymlops-drift-") as d:
        pkg = registry.download_package(model, version, d)
        manifest = registry.read_manifest(pkg)
    if "reference" not in manifest:
        raise RegistryError(f"{model}/{version}: package manifest has no reference profile")
    reference = ReferenceProfile.model_validate(manifest["reference"])
    names = list(manifest.get("preprocessing", {}).get("feature_names") or [f.name for f in reference.features])
    return ModelContext(model=model, version=str(version), reference=reference, feature_names=names,
                        tags=dict(mv.tags), train_run_id=mv.tags.get("train_run_id"),
                        preprocessing=manifest.get("preprocessing"),
                        run_metrics=dict(registry.get_run(mv.run_id).metrics) if mv.run_id else {})


def expectation_for(ctx: ModelContext, target: str | None) -> DeviceExpectation:
    """Return the profiled expectation of a version on a target.

    The profile stage logs ``<target>.latency_ms``, ``<target>.peak_ram_bytes`` and ``<target>.energy_uj`` on the
    version's run; version tags ``profile.<target>.<metric>`` override them (hand-entered lab measurements).
    """
    if not target:
        return DeviceExpectation()
    values: dict[str, float] = {}
    for metric in ("latency_ms", "peak_ram_bytes", "energy_uj"):
        v = ctx.run_metrics.get(target_metric(target, metric))
        tag = ctx.tags.get(f"profile.{target}.{metric}")
        if tag not in (None, ""):
            with contextlib.suppress(ValueError):
                v = float(tag)  # type: ignore[arg-type]
        if v is not None and np.isfinite(v) and v > 0:
            values[metric] = float(v)
    ram = values.get("peak_ram_bytes")
    return DeviceExpectation(target=target, latency_ms=values.get("latency_ms"),
                             peak_ram_bytes=int(ram) if ram else None, energy_uj=values.get("energy_uj"))


def reference_sample(ctx: ModelContext, max_rows: int) -> np.ndarray | None:
    """Return model-input reference rows: the train stage's logged sample, else rebuilt from its dataset config."""
    if not ctx.train_run_id:
        return None
    import pandas as pd

    for name in ("reference/sample.parquet", "reference/sample.csv"):
        try:
            with tempfile.TemporaryDirectory(prefix="tinymlops-ref-") as d:
                path = registry.download(ctx.train_run_id, name, d)
                df = pd.read_parquet(path) if name.endswith(".parquet") else pd.read_csv(path)
        except Exception:  # artifact missing in this store: try the next source
            continue
        cols = [c for c in ctx.feature_names if c in df.columns]
        if len(cols) == len(ctx.feature_names):
            return df[cols].to_numpy(dtype=np.float64)[:max_rows]
    return _sample_from_dataset_config(ctx, max_rows)


def _sample_from_dataset_config(ctx: ModelContext, max_rows: int) -> np.ndarray | None:
    """Rebuild the train split from the train run's logged pipeline config and the manifest's pre-processing."""
    if ctx.preprocessing is None or not ctx.train_run_id:
        return None
    try:
        with tempfile.TemporaryDirectory(prefix="tinymlops-ref-") as d:
            path = registry.download(ctx.train_run_id, "config/pipeline.json", d)
            raw = json.loads(Path(path).read_text())
    except Exception:  # no logged config: nothing to rebuild from
        return None
    from tinymlops import preprocessing
    from tinymlops.config import PipelineConfig
    from tinymlops.data import load_splits

    cfg = PipelineConfig.model_validate(raw)
    train = load_splits(cfg.dataset)["train"]
    spec = preprocessing.FittedPreprocessing.model_validate(ctx.preprocessing)
    rng = np.random.default_rng(0)
    idx = np.sort(rng.choice(len(train.y), size=min(max_rows, len(train.y)), replace=False))
    return preprocessing.transform(spec, train.X[idx]).astype(np.float64)


def reports_from_fleet(records: Sequence[Any], known_versions: set[str]) -> list[DeviceReport]:
    """Turn fleet-store telemetry records into device reports (unknown versions stay, to be rejected)."""
    out = []
    for r in records:
        samples = np.asarray(r.samples, dtype=np.float64) if r.samples else None
        ft = fp = None
        if r.feedback:
            ft = np.asarray([f["label"] for f in r.feedback], dtype=np.int64)
            fp = np.asarray([f["prediction"] for f in r.feedback], dtype=np.int64)
        version = str(r.model_version)
        out.append(DeviceReport(device=r.device_id, sketch=r.sketch, version=version, target=r.target,
                                cohort=r.cohort, samples=samples, feedback_true=ft, feedback_pred=fp,
                                extra={"known_version": version in known_versions}))
    return out


def fleet_reports(model: str, since: float, until: float, target: str | None = None, cohort: str | None = None,
                  store_url: str | None = None) -> list[DeviceReport]:
    """Read the window's telemetry of every version of a model from the fleet store."""
    from tinymlops.fleet.store import open_store, telemetry_window

    store = open_store(store_url)
    try:
        records = telemetry_window(store, model, None, target=target, cohort=cohort, since=since, until=until)
    finally:
        store.dispose()
    return reports_from_fleet(records, registered_versions(model))


def registered_versions(model: str) -> set[str]:
    """Return the registered versions of a model (empty if the model is unknown)."""
    try:
        return {str(v.version) for v in registry.list_versions(model)}
    except RegistryError:
        return set()


def group_reports(reports: Sequence[DeviceReport]) -> dict[tuple[str | None, str | None], list[DeviceReport]]:
    """Group reports by (target, cohort)."""
    groups: dict[tuple[str | None, str | None], list[DeviceReport]] = defaultdict(list)
    for r in reports:
        groups[(r.target, r.cohort)].append(r)
    return dict(sorted(groups.items(), key=lambda kv: (str(kv[0][0]), str(kv[0][1]))))


# ---------------------------------------------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------------------------------------------


def evidently_section(ctx: ModelContext, reports: Sequence[DeviceReport], cfg: DriftConfig,
                      reference_rows: np.ndarray | None, html_dir: Path | None) -> dict[str, Any] | None:
    """Run Evidently on opt-in samples and labelled feedback of compatible reports; None when nothing to do."""
    if not cfg.evidently.enabled:
        return None
    from tinymlops.monitor import evidently_report

    ok = [r for r in reports if r.version == ctx.version]
    out: dict[str, Any] = {}
    samples = [r.samples for r in ok if r.samples is not None and r.samples.ndim == 2
               and r.samples.shape[1] == len(ctx.feature_names)]
    n_samples = int(sum(len(s) for s in samples))
    if n_samples >= cfg.evidently.min_samples and reference_rows is not None:
        alpha = cfg.thresholds.features.alpha / (len(ctx.feature_names) + 2)
        threshold = cfg.evidently.threshold or (alpha if cfg.evidently.method in _P_VALUE_TESTS else None)
        res = evidently_report.data_drift(reference_rows, np.concatenate(samples), ctx.feature_names,
                                          cfg.evidently.method, threshold, html=html_dir is not None)
        out["data_drift"] = {"method": res.method, "threshold": threshold, "n_current": res.n_current,
                             "n_reference": res.n_reference, "drifted_share": res.drifted_share,
                             "drifted": res.drifted}
        if html_dir is not None:
            (html_dir / "evidently_data_drift.html").write_text(res.html, encoding="utf-8")
    elif n_samples:
        out["data_drift"] = {"skipped": f"{n_samples} opt-in samples < {cfg.evidently.min_samples}"
                             if reference_rows is not None else "no reference sample logged by the train stage"}
    labelled = [r for r in ok if r.feedback_true is not None and r.feedback_pred is not None]
    n_fb = sum(len(r.feedback_true) for r in labelled if r.feedback_true is not None)
    if n_fb >= cfg.thresholds.performance.min_feedback:
        res_c = evidently_report.classification(
            np.concatenate([r.feedback_true for r in labelled]),  # type: ignore[misc]
            np.concatenate([r.feedback_pred for r in labelled]),  # type: ignore[misc]
            ctx.reference.class_names, html=html_dir is not None)
        out["classification"] = {"n": res_c.n, "accuracy": res_c.accuracy, "macro_f1": res_c.macro_f1}
        if html_dir is not None:
            (html_dir / "evidently_classification.html").write_text(res_c.html, encoding="utf-8")
    return out or None


#: Evidently tests whose score is a p-value (drift when below the threshold).
_P_VALUE_TESTS = {"ks", "chisquare", "z", "anderson", "cramer_von_mises", "mannw", "t_test", "es", "fisher_exact",
                  "g_test", "epps_singleton"}


def evaluate_group(ctx: ModelContext, reports: Sequence[DeviceReport], cfg: DriftConfig, target: str | None,
                   cohort: str | None, expected: DeviceExpectation | None = None,
                   reference_rows: np.ndarray | None = None, html_dir: Path | None = None) -> GroupResult:
    """Measure and judge one target x cohort (no MLflow, no Prefect)."""
    figures = compute_figures(ctx.reference, ctx.model, ctx.version, reports,
                              expected or expectation_for(ctx, target), target=target, cohort=cohort,
                              estimate_options=cfg.estimate)
    verdict = decide(figures, cfg.thresholds)
    # a device probing the model outranks drift (tinymlops.ip), judged against the model's natural figures
    verdict = judge_reports(verdict, reports, baseline=ctx.reference.queries)
    ev = evidently_section(ctx, reports, cfg, reference_rows, html_dir) if verdict.level not in (
        "incompatible sketch",) else None
    md = render_markdown(verdict) + personal_summary(verdict, reports)
    if ev and "data_drift" in ev and "drifted" in ev["data_drift"]:
        d = ev["data_drift"]
        md += (f"\nEvidently ({d['method']}, threshold {d['threshold']}) on {d['n_current']} opt-in samples: "
               f"{len(d['drifted'])} drifted column(s)\n")
    if ev and "classification" in ev:
        c = ev["classification"]
        md += f"\nEvidently classification on {c['n']} labelled: accuracy {c['accuracy']:.3f}, " \
              f"macro-F1 {c['macro_f1']:.3f}\n"
    return GroupResult(target=target, cohort=cohort, verdict=verdict, figures=figures, evidently=ev, markdown=md)


def personal_summary(verdict: Verdict, reports: Sequence[DeviceReport]) -> str:
    """Add the cohort's on-device personalisation counts to the verdict's summary; return a markdown line."""
    figs = [(r.device, r.sketch.personal) for r in reports if r.sketch is not None and r.sketch.personal is not None]
    if not figs:
        return ""
    n = sum(p.evaluated for _, p in figs)
    devices = len({d for d, p in figs if p.kind != "none"})
    verdict.summary["personalised_devices"] = devices
    for kind in sorted({p.kind for _, p in figs} - {"none"}):  # e.g. personal_devices_calibration (a count)
        verdict.summary[f"personal_devices_{kind.replace('+', '_')}"] = len({d for d, p in figs if p.kind == kind})
    verdict.summary["personal_labelled_n"] = n
    if not n:
        return f"\nOn-device personalisation: {devices} device(s) personalised, not yet scored on later labels\n"
    base, personal = sum(p.correct_base for _, p in figs) / n, sum(p.correct_personal for _, p in figs) / n
    verdict.summary["personal_base_accuracy"], verdict.summary["personal_accuracy"] = base, personal
    return (f"\nOn-device personalisation: {devices} device(s) personalised; on {n} later labelled inferences "
            f"the fleet's model was right {base:.3f}, the personalised one {personal:.3f}\n")


def log_group(result: GroupResult, cfg: DriftConfig, since: float, until: float,
              html_dir: Path | None = None, parent_run_id: str | None = None,
              experiment: str | None = None) -> str:
    """Log one group's verdict, figures, markdown and Evidently HTML to an MLflow run; return its id.

    The run nests under ``parent_run_id`` in ``experiment`` (a pipeline run), else under the day's
    ``drift checks <date>`` run of the drift config's experiment (scheduled checks).
    """
    v = result.verdict
    name = f"drift v{v.version} {result.target or 'any'}/{result.cohort or 'any'}"
    exp = experiment or cfg.experiment
    if parent_run_id is None:
        day = time.strftime("%Y-%m-%d", time.gmtime(until))
        parent_run_id = registry.day_run(exp, f"drift checks {day}", {"tinymlops.stage": "drift-day", "day": day})
    tags = {"tinymlops.stage": "drift", "model": v.model, "version": v.version, "target": result.target or "",
            "cohort": result.cohort or "", "verdict": v.level, "reasons": "; ".join(v.reasons)[:4900]}
    with registry.run(exp, name, parent_run_id, tags=tags) as r:
        registry.log_params(r.run_id, {"window_s": until - since, "since_unix_s": since, "until_unix_s": until,
                                       "thresholds": cfg.thresholds.model_dump(mode="json")})
        metrics: dict[str, float] = {k: float(x) for k, x in v.summary.items()
                                     if isinstance(x, int | float) and np.isfinite(x)}
        metrics["verdict_level"] = float({"ok": 0, "warn": 1, "retrain": 2}.get(v.level, -1))
        for c in v.features:
            for k in ("psi", "js_distance", "wasserstein_norm"):
                val = c.figures.get(k)
                if isinstance(val, int | float) and np.isfinite(val):
                    metrics[f"feature.{c.name}.{k}"] = float(val)
        if result.evidently and "data_drift" in result.evidently and "drifted_share" in result.evidently[
                "data_drift"]:
            metrics["evidently_drifted_share"] = float(result.evidently["data_drift"]["drifted_share"])
        if result.evidently and "classification" in result.evidently:
            metrics["evidently_accuracy"] = float(result.evidently["classification"]["accuracy"])
            metrics["evidently_macro_f1"] = float(result.evidently["classification"]["macro_f1"])
        registry.log_metrics(r.run_id, metrics)
        registry.log_dict(r.run_id, json.loads(v.model_dump_json()), "drift/verdict.json")
        registry.log_dict(r.run_id, json.loads(result.figures.model_dump_json()), "drift/figures.json")
        if result.evidently:
            registry.log_dict(r.run_id, result.evidently, "drift/evidently.json")
        registry.log_text(r.run_id, result.markdown, "drift/verdict.md")
        if html_dir is not None:
            for f in sorted(html_dir.glob("*.html")):
                registry.log_artifact(r.run_id, f, "drift")
    return r.run_id


def load_drift_config(path: str | Path) -> DriftConfig:
    """Load a drift config file (``kind: drift``)."""
    from tinymlops.config import load

    cfg = load(path, "drift")
    assert isinstance(cfg, DriftConfig)
    return cfg


def run_drift_check(model: str, config: str | Path | DriftConfig, version: str | None = None,
                    target: str | None = None, cohort: str | None = None, until: float | None = None,
                    window_s: float | None = None, reports: Sequence[DeviceReport] | None = None,
                    store_url: str | None = None, log: bool = True, parent_run_id: str | None = None,
                    experiment: str | None = None) -> CheckResult:
    """Run a drift check over the window ending at ``until`` (now): every version x target x cohort.

    THE drift entry point (``flows/drift.py`` wraps it; ``tinymlops drift --no-prefect`` calls it). Without
    ``version`` (or the config's alias) every registered version that reported in the window is checked; reports
    for versions the registry does not know join the newest version's groups and are rejected there as
    incompatible sketches (never merged). ``config`` is a drift config file or a loaded one. Runs nest under
    ``parent_run_id`` in ``experiment`` (the pipeline's run), else under the day's drift-checks run.
    """
    cfg = config if isinstance(config, DriftConfig) else load_drift_config(config)
    known = registered_versions(model)
    if not known:
        raise RegistryError(f"registered model {model!r} does not exist or has no versions")
    until = time.time() if until is None else until
    since = until - (window_s if window_s is not None else cfg.window_s)
    if reports is None:
        reports = fleet_reports(model, since, until, target, cohort, store_url)
    if version or cfg.alias:
        versions = [resolve_version(model, version, cfg.alias)]
    else:
        versions = sorted({r.version for r in reports if r.version in known}, key=_version_key) or [
            resolve_version(model)]
    result = CheckResult(model=model, version=versions[-1], since_unix_s=since, until_unix_s=until)
    for v in versions:
        ctx = load_context(model, v)
        mine = [r for r in reports if r.version == v or (r.version not in known and v == versions[-1])]
        groups = group_reports(mine) or {(target, cohort): []}
        has_samples = any(r.samples is not None for r in mine)
        ref_rows = reference_sample(ctx, cfg.evidently.reference_rows) if has_samples and cfg.evidently.enabled \
            else None
        for (t, c), reps in groups.items():
            with tempfile.TemporaryDirectory(prefix="tinymlops-evidently-") as d:
                html_dir = Path(d) if log else None
                g = evaluate_group(ctx, reps, cfg, t, c, reference_rows=ref_rows, html_dir=html_dir)
                if log:
                    g.run_id = log_group(g, cfg, since, until, html_dir, parent_run_id, experiment)
            result.groups.append(g)
    return result


def _version_key(v: str) -> tuple[int, str]:
    return (int(v), v) if v.isdigit() else (1 << 62, v)
