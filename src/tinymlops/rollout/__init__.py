"""Staged rollout: plan (per-target cohorts), pure gates, a persisted controller, alias moves with history."""
