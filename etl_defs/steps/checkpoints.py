"""Checkpoints: how far an interrupted range step got, so that its retry goes on from there."""

import dagster as dg

from etl_defs.sync import KeyRange, SyncReport

#: The metadata key of the observation that records how far an interrupted sync got.
CHECKPOINT_KEY = "sync_checkpoint"
#: How many of the asset's latest observations a retry looks through for its range's checkpoint.
_CHECKPOINT_LOOKBACK = 200


def save_checkpoint(
    context: dg.OpExecutionContext, report: SyncReport, asset_key: dg.AssetKey, key_range: KeyRange
) -> None:
    """Record, as an observation of the synced asset in this run, the key through which
    every batch of `key_range` is written and the figures so far, so that the step's retry
    goes on from there instead of from the range's first key. A dry run wrote nothing and
    records nothing."""
    if report.dry_run or report.resume_after is None:
        return
    checkpoint = {**report.checkpoint(), "range": [key_range.low, key_range.high]}
    context.log_event(
        dg.AssetObservation(
            asset_key=asset_key,
            description=f"{report.pipeline} sync interrupted after key {report.resume_after!r}; retried from there",
            metadata={CHECKPOINT_KEY: dg.MetadataValue.json(checkpoint)},
        )
    )


def resumed_report(
    context: dg.OpExecutionContext, pipeline: str, dry_run: bool, asset_key: dg.AssetKey, key_range: KeyRange
) -> SyncReport | None:
    """On a retry of the step, the report its earlier attempt checkpointed for `key_range` in this run, if any."""
    if context.retry_number == 0 or dry_run:
        return None
    records = context.instance.fetch_observations(
        dg.AssetRecordsFilter(asset_key=asset_key), limit=_CHECKPOINT_LOOKBACK
    )
    for record in records.records:
        observation = record.asset_observation
        if record.run_id != context.run_id or observation is None or CHECKPOINT_KEY not in observation.metadata:
            continue
        checkpoint = observation.metadata[CHECKPOINT_KEY].value
        if checkpoint.get("range") != [key_range.low, key_range.high]:
            continue
        return SyncReport.from_checkpoint(pipeline, dry_run, checkpoint)
    return None
