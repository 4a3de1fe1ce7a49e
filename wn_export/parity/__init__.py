"""The parity harness: every artifact against the float64 reference, metrics as data, tolerances per
precision in one table (`metrics.TOLERANCES`). The metrics import without torch; the harness loads it."""

from wn_export.parity.metrics import TOLERANCES, Check, Tolerance, judge, logit_metrics


def __getattr__(name: str):
    if name in ("Report", "run_parity"):
        from wn_export.parity import harness

        return getattr(harness, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["TOLERANCES", "Tolerance", "Check", "Report", "judge", "logit_metrics", "run_parity"]
