"""Run one sync job in this process with every MongoDB command counted; write the counts as JSON.

    python -m benchmarks.monitored_job cart_sync_job '{"user_id": "..."}' counts.json

The listener is registered globally before any client exists, so it sees the job's
clients; the job runs through the public API (`execute_in_process`) on the instance named
by DAGSTER_HOME, with the run config the CLI would take.
"""

from __future__ import annotations

import json
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import bson
import dagster as dg
from pymongo import monitoring

from etl_defs import defs

#: The write commands, with the field of the command that holds their operations.
WRITE_OPS_FIELD = {"insert": "documents", "update": "updates", "delete": "deletes"}
CURSOR_COMMANDS = ("find", "getMore", "aggregate")


class MongoCommandCounter(monitoring.CommandListener):
    """Counts commands by name, documents returned by cursors and write operations, per namespace."""

    def __init__(self) -> None:
        self.commands: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        self.documents_returned: Counter[str] = Counter()
        self.write_commands: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self.write_ops: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self._namespaces: dict[int, str] = {}

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        name, command = event.command_name, event.command
        self.commands[name] += 1
        collection = command.get("collection") if name == "getMore" else command.get(name)
        namespace = f"{event.database_name}.{collection}"
        if name in CURSOR_COMMANDS:
            self._namespaces[event.request_id] = namespace
        if name in WRITE_OPS_FIELD:
            self.write_commands[namespace][name] += 1
            self.write_ops[namespace][name] += len(command.get(WRITE_OPS_FIELD[name], ()))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        namespace = self._namespaces.pop(event.request_id, None)
        cursor = event.reply.get("cursor") if namespace else None
        if cursor:
            batch = cursor.get("firstBatch", cursor.get("nextBatch", ()))
            # A raw-batch cursor (the product sync's) gets its batch as one BSON byte string.
            self.documents_returned[namespace] += sum(
                len(bson.decode_all(item)) if isinstance(item, bytes) else 1 for item in batch
            )

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        self._namespaces.pop(event.request_id, None)
        self.failed[event.command_name] += 1

    def counts(self) -> dict[str, Any]:
        """Everything counted, as plain dicts."""
        return {
            "commands": dict(self.commands),
            "failed_commands": dict(self.failed),
            "documents_returned": dict(self.documents_returned),
            "write_commands": {ns: dict(counts) for ns, counts in self.write_commands.items()},
            "write_ops": {ns: dict(counts) for ns, counts in self.write_ops.items()},
        }


def main(job_name: str, run_config: dict[str, Any], out: Path) -> int:
    counter = MongoCommandCounter()
    monitoring.register(counter)  # before the job's clients exist: they pick it up when created
    job = defs().get_job_def(job_name)
    result = job.execute_in_process(run_config=run_config, instance=dg.DagsterInstance.get(), raise_on_error=False)
    out.write_text(json.dumps({"success": result.success, **counter.counts()}, indent=2))
    return 0 if result.success else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], json.loads(sys.argv[2]), Path(sys.argv[3])))
