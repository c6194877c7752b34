"""The ``personalise`` retrain strategy: a drift verdict switches its cohorts' on-device personalisation on.

Instead of training a new version, the drifted cohorts' agents adapt the fleet's model on the device
(:mod:`tinymlops.personalise`; their samples and heads never leave it). Started by the drift flow's retrain trigger
when ``configs/drift.yaml`` says ``retrain: {strategy: personalise}``, under the same cooldown; operators do the same
with ``tinymlops fleet personalise COHORT``. The next drift checks show the effect per cohort (fleet-model vs
personalised accuracy on later labelled inferences).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger


@flow(name="personalise", log_prints=True)
def personalise_flow(model: str, cohorts: list[str], store_url: str | None = None) -> dict[str, Any]:
    """Switch personalisation on for the cohorts whose drift verdict for ``model`` was retrain."""
    from tinymlops.fleet.personal_switch import set_personalise
    from tinymlops.fleet.store import open_store

    logger = get_run_logger()
    if not cohorts:
        logger.warning("no cohort named in the retrain verdict: nothing to personalise")
        return {"model": model, "cohorts": []}
    st = open_store(store_url or None)
    try:
        done = [set_personalise(st, c, True, reason=f"drift verdict retrain for {model}") for c in cohorts]
    finally:
        st.dispose()
    for d in done:
        logger.info("cohort %s: on-device personalisation on (%d devices)", d["cohort"], d["devices"])
    return {"model": model, "cohorts": done}


@flow(name="personalise-follow-up", log_prints=True)
def demo_follow_up_flow(pipeline_config: str, store_url: str, monitored: dict[str, Any],
                        parent_run_id: str | None = None, min_scored: int = 100, max_s: float = 120.0,
                        targets_dir: str | None = None) -> dict[str, Any]:
    """The demo after a personalise verdict: run the monitored cohorts again, then check their drift again.

    ``monitored`` is what the rollout demo ran (``{"target", "cohorts"}``). The devices restart from their state on
    a restarted fleet service and personalise where their cohort's switch (set by the verdict) says so, until each
    has ``min_scored`` later labelled inferences scored (or ``max_s``). A report-only drift check of the monitored
    target over that stretch then gives each cohort's fleet-model vs personalised accuracy.
    """
    from flows.drift import pipeline_drift_stage
    from tinymlops.config import load_pipeline
    from tinymlops.sim.demo import run_monitored
    from tinymlops.sim.simulator import CohortSpec

    cfg = load_pipeline(pipeline_config)
    cohorts = [CohortSpec.model_validate(c) for c in monitored["cohorts"]]
    ran = run_monitored(cfg.mlflow.registered_model, store_url, cohorts, min_scored=min_scored, max_s=max_s,
                        targets_dir=Path(targets_dir) if targets_dir else None)
    get_run_logger().info("monitored cohorts ran %.0f s again (personalising: %s)", ran["seconds"],
                          ", ".join(ran["personalising"]) or "none")
    until = time.time()  # the check covers this stretch only: the devices after the switch, nothing before
    window = f"{math.ceil(until - ran['since_unix_s'])}s"
    check = pipeline_drift_stage(pipeline_config, until=until, store_url=store_url, parent_run_id=parent_run_id,
                                 target=monitored["target"], window=window, allow_retrain=False)
    return {**ran, "target": monitored["target"], "window": window, "check": check}
