"""Drift configuration (``configs/drift.yaml``, kind ``drift``): window, thresholds, Evidently and retrain settings.

Thresholds combine a significance gate with an effect-size gate. Binned divergences are biased upwards by
sampling noise (PSI of two samples from the same distribution is about ``(bins - 1) * (1/n_ref + 1/n_cur)``,
~0.02 for 500 inferences on 10 bins), so a feature only counts as drifted when its histogram differs
significantly from the reference (chi-square homogeneity test, Bonferroni-corrected over all features and the
prediction/confidence histograms, which bounds the per-window false-alarm rate at ``alpha``) *and* the
difference is large enough to matter (PSI or normalised Wasserstein above the warn/retrain levels).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from tinymlops.config import Strict

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration_s(text: str | float | int) -> float:
    """Parse ``90``, ``90s``, ``15m``, ``1h``, ``2d`` or ``1w`` into seconds."""
    if isinstance(text, int | float):
        return float(text)
    m = _DURATION.match(str(text))
    if not m:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"not a duration: {text!r} (use e.g. 30m, 1h, 2d)") from None
    return float(m.group(1)) * _UNIT_S[m.group(2)]


class FeatureThresholds(Strict):
    """When an input feature (or the prediction/confidence histogram) has drifted."""

    alpha: float = Field(0.05, gt=0, lt=1, description="family-wise false-alarm rate per window (Bonferroni)")
    psi_warn: float = Field(0.1, gt=0, description="PSI at or above which a significant shift warns")
    psi_retrain: float = Field(0.25, gt=0, description="PSI at or above which a significant shift asks to retrain")
    wasserstein_warn: float = Field(0.15, gt=0, description="Wasserstein / reference std that warns")
    wasserstein_retrain: float = Field(0.3, gt=0, description="Wasserstein / reference std that asks to retrain")
    nonfinite_warn: float = Field(0.01, ge=0, le=1, description="share of NaN/inf values that warns")

    @model_validator(mode="after")
    def _ordered(self) -> FeatureThresholds:
        if self.psi_retrain < self.psi_warn or self.wasserstein_retrain < self.wasserstein_warn:
            raise ValueError("retrain thresholds must be at least the warn thresholds")
        return self


class OverallThresholds(Strict):
    """How per-feature verdicts combine into the window's verdict."""

    min_inferences: int = Field(200, ge=1, description="fewer inferences in the window: insufficient data")
    warn_features: int = Field(1, ge=1, description="features at warn or worse that make the window warn")
    retrain_feature_share: float = Field(0.25, gt=0, le=1,
                                         description="share of features at retrain that asks to retrain")
    prediction_drift_retrain: bool = Field(True, description="a retrain-level prediction shift asks to retrain")


class PerformanceThresholds(Strict):
    """Labelled feedback against the reference figures."""

    min_feedback: int = Field(50, ge=1, description="fewer labelled samples: performance not judged")
    accuracy_drop_warn: float = Field(0.05, ge=0, le=1)
    accuracy_drop_retrain: float = Field(0.10, ge=0, le=1)
    macro_f1_drop_warn: float = Field(0.05, ge=0, le=1)
    macro_f1_drop_retrain: float = Field(0.10, ge=0, le=1)


class DeviceThresholds(Strict):
    """Device metrics against the profiled expectation of their target (ratios observed / expected)."""

    latency_p95_ratio_warn: float = Field(
        1.5, gt=1, description="p95 latency / expected; the sketch's log histogram resolves ~1.33x, keep above")
    peak_memory_ratio_warn: float = Field(1.10, gt=1)
    energy_ratio_warn: float = Field(1.5, gt=1, description="mean energy per inference / expected")
    error_rate_warn: float = Field(0.01, ge=0, le=1, description="(errors + rejections) / inferences")


class Thresholds(Strict):
    features: FeatureThresholds = Field(default_factory=FeatureThresholds)
    overall: OverallThresholds = Field(default_factory=OverallThresholds)
    performance: PerformanceThresholds = Field(default_factory=PerformanceThresholds)
    device: DeviceThresholds = Field(default_factory=DeviceThresholds)


class EvidentlySection(Strict):
    """Raw-sample drift with Evidently, on inputs devices opted in to share."""

    enabled: bool = True
    min_samples: int = Field(100, ge=10, description="fewer opt-in samples: no Evidently report")
    method: str = Field("ks", description="Evidently per-column drift method (see its stattests)")
    threshold: float | None = Field(
        None, gt=0, description="Evidently per-column threshold; default: the verdict's alpha / (features + 2)")
    reference_rows: int = Field(2000, ge=50, le=100000)


class EstimateSection(Strict):
    """Label-free performance estimates (CBPE) from the sketches of a calibrated model."""

    enabled: bool = Field(True, description="estimate accuracy/macro-F1 when the reference carries a calibration")
    class_prior: bool = Field(
        True, description="assume a cohort keeps the training class mix (no label shift); exposes models that are "
                          "confidently wrong under a sensor shift. Turn off where the class mix itself moves")
    interval: float = Field(0.95, gt=0.5, lt=1, description="confidence level of the estimate's interval")


#: what a retrain verdict may start (``retrain.strategy``); see :func:`tinymlops.monitor.retrain.plan`
RETRAIN_STRATEGIES = ("central", "federated", "personalise")


class FieldDataSection(Strict):
    """Consented field data in a ``central`` retrain: how much, how weighted, which share is held out."""

    enabled: bool = Field(False, description="train on the configured dataset plus consented field samples (opt-in: "
                                            "needs consented devices; configs/drift.yaml turns it on)")
    weight: float = Field(2.0, gt=0, le=100, description="weight of a field sample relative to a configured one "
                                                         "(integer part repeats it, the fraction samples a copy)")
    test_share: float = Field(0.3, gt=0, lt=1, description="share of field samples held out as the field test split")
    min_samples: int = Field(40, ge=2, description="fewer consented samples: retrain on the configured dataset only")
    cohort: str | None = Field(None, description="only this cohort's samples (default: every cohort)")
    since: str | None = Field(None, description="only samples received within this duration (e.g. 7d)")
    min_gain: float = Field(0.0, ge=0, le=1, description="accuracy the new version must gain on the field test split")
    candidate_alias: str = Field("candidate", pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,63}$",
                                 description="alias set on the new version only when it beats the old one")
    seed: int = 0

    @field_validator("since")
    @classmethod
    def _since(cls, v: str | None) -> str | None:
        if v is not None and parse_duration_s(v) <= 0:
            raise ValueError("since must be a positive duration")
        return v


class RetrainSection(Strict):
    """Closing the loop: a retrain verdict starts the pipeline, at most once per cooldown."""

    enabled: bool = False
    strategy: str = Field("central", description="central (pipeline + consented field data) | federated | "
                                                 "personalise (switch the cohort's on-device personalisation on)")
    field_data: FieldDataSection = Field(default_factory=FieldDataSection)
    federated: dict[str, object] = Field(
        default_factory=dict, description="federated: options of `tinymlops federate` (rounds, clients, "
                                          "clients_per_round, strategy, proximal_mu, dp_epsilon, ...; see docs/learning.md)")
    cooldown: str = Field("24h", description="minimum time between two triggered retrains of one model")
    pipeline_config: str = Field("configs/pipeline.yaml", description="config passed to the pipeline flow")
    deployment: str | None = Field("pipeline/pipeline-weekly",
                                   description="Prefect deployment (flow/deployment) to run when it exists")
    entrypoint: str = Field("flows.pipeline:pipeline_flow", description="flow started when no deployment exists")
    mode: Literal["auto", "deployment", "subprocess", "inline"] = "auto"

    @field_validator("strategy")
    @classmethod
    def _strategy(cls, v: str) -> str:
        if v not in RETRAIN_STRATEGIES:
            raise ValueError(f"unknown strategy {v!r}; expected one of {', '.join(RETRAIN_STRATEGIES)}")
        return v

    @field_validator("federated")
    @classmethod
    def _federated(cls, v: dict[str, object]) -> dict[str, object]:
        from tinymlops.learn.fedplan import FederatedOptions

        FederatedOptions.model_validate(v)  # a bad key or value fails when the drift config loads
        return v

    @field_validator("cooldown")
    @classmethod
    def _duration(cls, v: str) -> str:
        parse_duration_s(v)
        return v

    @property
    def cooldown_s(self) -> float:
        return parse_duration_s(self.cooldown)


class DriftConfig(Strict):
    """What a drift check looks at and how it decides."""

    kind: Literal["drift"] = "drift"
    window: str = Field("1h", description="time window of telemetry evaluated by one check")
    alias: str | None = Field(None, description="evaluate the version this alias points at (default: latest)")
    thresholds: Thresholds = Field(default_factory=Thresholds)
    evidently: EvidentlySection = Field(default_factory=EvidentlySection)
    estimate: EstimateSection = Field(default_factory=EstimateSection)
    retrain: RetrainSection = Field(default_factory=RetrainSection)
    experiment: str = Field("tinymlops-drift", description="MLflow experiment holding drift-check runs")

    @field_validator("window")
    @classmethod
    def _window(cls, v: str) -> str:
        if parse_duration_s(v) <= 0:
            raise ValueError("window must be positive")
        return v

    @property
    def window_s(self) -> float:
        return parse_duration_s(self.window)
