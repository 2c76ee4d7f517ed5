"""What every sync step does around the shared core, one concern per module: retries while a database is
away (`retries`), the preflight (`preflight`), the split into key ranges (`split`), one range's sync
(`range_sync`), the summed report (`report`), checkpoints for retries (`checkpoints`) and termination
(`termination`). The ops themselves are built from each pipeline's record in `etl_defs.pipeline`."""
