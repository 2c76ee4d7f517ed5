"""A sync's last step: the range steps' reports summed into the run's one report and materialization."""

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import dagster as dg

from etl_defs.steps.range_sync import RangeResult
from etl_defs.sync import SCOPE_METADATA_KEY, Change, SyncReport, SyncScope
from etl_defs.tags import OLDEST_CHANGE_TAG


def report_metadata(report: SyncReport, scope: SyncScope) -> dict[str, Any]:
    """Numeric figures (same keys every run, so the UI plots them) plus the scope and sample keys."""
    metadata: dict[str, Any] = dict(report.figures())
    metadata["dry_run"] = report.dry_run
    metadata[SCOPE_METADATA_KEY] = scope.kind
    if scope.keys is not None:
        metadata["keys"] = len(scope.keys)
    metadata["sample_keys"] = dg.MetadataValue.json(
        {change.value: report.samples[change] for change in Change if report.samples[change]}
    )
    metadata["rejections"] = dg.MetadataValue.json([{"key": r.key, "reason": r.reason} for r in report.rejections])
    return metadata


def report_sync_op(
    context: dg.OpExecutionContext,
    *,
    pipeline: str,
    dry_run: bool,
    scope: SyncScope,
    results: Sequence[RangeResult],
    asset_key: dg.AssetKey,
) -> dg.Output[dict[str, Any]]:
    """Sum the range steps' reports into the run's one report and, unless a dry run, one materialization."""
    ordered = sorted(results, key=lambda result: (result.key_range.low is not None, result.key_range.low or ""))
    report = SyncReport.merged(pipeline, dry_run, [result.report for result in ordered])
    if len(ordered) == 1:
        report.duration_s = ordered[0].report.duration_s  # the sync's own run time, as before the split
    else:  # the wall time from the first range's start to the last one's end
        report.duration_s = max(r.finished_at for r in ordered) - min(r.started_at for r in ordered)
    if len(ordered) > 1:
        context.log.info(f"{len(ordered)} ranges, summed: {report.summary()}")
    metadata = report_metadata(report, scope)
    metadata["parallelism"] = len(ordered)
    metadata["ranges"] = dg.MetadataValue.json([result.figures() for result in ordered])
    if not dry_run:
        lag = change_lag_s(context)
        if lag is not None:
            metadata["change_lag_s"] = round(lag, 3)
            context.log.info(
                f"repaired {report.inserted + report.updated} of {len(scope.keys or ())} changed keys; "
                f"{lag:.1f}s from the oldest change to this commit"
            )
        context.log_event(dg.AssetMaterialization(asset_key=asset_key, metadata=metadata))
    return dg.Output(report.figures(), metadata=metadata)


def change_lag_s(context: dg.OpExecutionContext) -> float | None:
    """Seconds from the oldest change a change sensor requested this run for, to now (None: no such tag)."""
    oldest = context.run.tags.get(OLDEST_CHANGE_TAG)
    if oldest is None:
        return None
    try:
        return (datetime.now(UTC) - datetime.fromisoformat(oldest)).total_seconds()
    except ValueError:
        context.log.warning(f"tag {OLDEST_CHANGE_TAG}={oldest!r} is not an ISO timestamp: no lag recorded")
        return None
