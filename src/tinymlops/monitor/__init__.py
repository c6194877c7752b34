"""Monitoring: reference profiles, mergeable sketches, drift metrics and verdicts."""
