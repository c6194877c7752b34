"""The ``personalise`` retrain strategy: a drift verdict switches its cohorts' on-device personalisation on.

Instead of training a new version, the drifted cohorts' agents adapt the fleet's model on the device
(:mod:`tinymlops.personalise`; their samples and heads never leave it). Started by the drift flow's retrain trigger
when ``configs/drift.yaml`` says ``retrain: {strategy: personalise}``, under the same cooldown; operators do the same
with ``tinymlops fleet personalise COHORT``. The next drift checks show the effect per cohort (fleet-model vs
personalised accuracy on later labelled inferences).
"""

from __future__ import annotations

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
