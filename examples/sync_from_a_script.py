#!/usr/bin/env python3
"""Launch a sync on the Dagster webserver, wait for it, print its figures; exit with the code a CI job wants.

    python examples/sync_from_a_script.py --job product_sync_job --config '{"batch_size": 500}'

Needs only the standard library and `dagster-graphql` (installed with dagster-webserver, which
also brings PyYAML). A failed run that the daemon retries is followed to its last retry. When
DAGSTER_AUTH_TOKEN is set, every request carries `Authorization: Bearer <it>` (the admin
webserver's authenticating proxy). Exit codes: EXIT_CODES; examples/sync_with_curl.sh does the same with curl.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

import yaml
from dagster_graphql import DagsterGraphQLClient, DagsterGraphQLClientError

SUCCESS, FAILURE, USAGE, CANCELED, LAUNCH_REFUSED, NOT_ALLOWED, TIMED_OUT, NO_ANSWER = range(8)
EXIT_CODES = {
    SUCCESS: "the run succeeded",
    FAILURE: "the run failed (and so did its retries, if the daemon retried it)",
    USAGE: "bad arguments, or --config is not a JSON/YAML mapping",
    CANCELED: "the run was canceled (terminated)",
    LAUNCH_REFUSED: "no run: the webserver refused the launch (run config, job or location)",
    NOT_ALLOWED: "no run: this webserver does not allow launching (read-only, or 401/403 from a proxy)",
    TIMED_OUT: "the run did not finish within --timeout; it goes on",
    NO_ANSWER: "the webserver could not be reached, or did not answer as Dagster's GraphQL API does",
}
FINISHED = {"SUCCESS": SUCCESS, "FAILURE": FAILURE, "CANCELED": CANCELED}
POLL_S = 2.0
#: How long polling goes on through errors (a webserver restarting) before giving up with NO_ANSWER.
POLL_ERRORS_S = 120.0
#: Dagster's tags on a failed run: whether the daemon retries it, and the id of the retry once launched.
WILL_RETRY_TAG, RETRY_RUN_TAG = "dagster/will_retry", "dagster/auto_retry_run_id"
#: How long after FAILURE the run's tags may take to say whether it will be retried.
WILL_RETRY_WAIT_S = 10.0

RUN_TAGS = "query RunTags($runId: ID!) { runOrError(runId: $runId) { ... on Run { tags { key value } } } }"
#: A finished run's materializations (a real sync's figures, one per target table), and the
#: step outputs (a dry run's figures: it materializes nothing) and step failures of its events.
RUN_RESULT = """
query RunResult($runId: ID!) {
  runOrError(runId: $runId) {
    __typename
    ... on Run {
      assetMaterializations { assetKey { path } metadataEntries { ...Figure } }
      eventConnection {
        events {
          __typename
          ... on ExecutionStepOutputEvent { stepKey metadataEntries { ...Figure } }
          ... on ExecutionStepFailureEvent { stepKey error { message } }
        }
      }
    }
    ... on Error { message }
  }
}
fragment Figure on MetadataEntry {
  label
  ... on IntMetadataEntry { intValue }
  ... on FloatMetadataEntry { floatValue }
  ... on BoolMetadataEntry { boolValue }
  ... on TextMetadataEntry { text }
}"""


class Exit(Exception):
    """Stop with this exit code and message."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def run_config(text: str) -> dict[str, Any]:
    """--config: run config as JSON or YAML text, or `@path` to a file of it."""
    try:
        if text.startswith("@"):
            with open(text[1:], encoding="utf-8") as file:
                text = file.read()
        config = yaml.safe_load(text)
    except (OSError, yaml.YAMLError) as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise argparse.ArgumentTypeError(f"run config must be a mapping, like {{batch_size: 500}}; not {config!r}")
    return config


def auth_headers() -> dict[str, str]:
    token = os.environ.get("DAGSTER_AUTH_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


def client_for(url: str) -> DagsterGraphQLClient:
    parts = urlsplit(url)
    return DagsterGraphQLClient(
        parts.hostname or "127.0.0.1",
        port_number=parts.port,
        use_https=parts.scheme == "https",
        path_prefix=parts.path.rstrip("/"),
        headers=auth_headers(),
        timeout=60,
    )


def graphql(url: str, query: str, **variables: Any) -> dict[str, Any]:
    """One query with the standard library (the client has no public method for any query)."""
    body = json.dumps({"query": query, "variables": variables}).encode()
    headers = {"Content-Type": "application/json", **auth_headers()}
    request = urllib.request.Request(f"{url.rstrip('/')}/graphql", data=body, headers=headers)
    try:
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                answer = json.loads(response.read())
        except urllib.error.HTTPError as error:  # Dagster answers a PythonError with HTTP 500 and a GraphQL body
            answer = json.loads(error.read() or b"{}")
    except (OSError, ValueError) as error:
        raise Exit(NO_ANSWER, f"no answer from the webserver: {error}") from None
    if "data" not in answer:
        raise Exit(NO_ANSWER, f"no answer from the webserver: {answer.get('errors', answer)}")
    return answer["data"]


def launch(client: DagsterGraphQLClient, args: argparse.Namespace) -> str:
    """Launch the run; its id, or Exit with why the webserver created none.

    The client raises a GraphQL answer as (its type, message or errors), without a cause; a
    request that got no GraphQL answer (connection refused, HTTP error) with the transport's error as cause.
    """
    try:
        return client.submit_job_execution(
            args.job,
            repository_location_name=args.location,
            repository_name=args.repository if args.location else None,
            run_config=args.config,
        )
    except DagsterGraphQLClientError as error:
        kind, cause = error.args[0] if error.args else "", error.__cause__
        http_status = getattr(cause, "code", None)
        if kind == "UnauthorizedError" or http_status in (401, 403):
            reason = f"HTTP {http_status}" if cause else f"{kind}: {error.args[1]}"
            raise Exit(
                NOT_ALLOWED, f"launch refused: this webserver does not allow launching runs ({reason})"
            ) from None
        if cause is not None:
            raise Exit(NO_ANSWER, f"no answer from the webserver: {cause}") from None
        detail = error.args[1] if len(error.args) > 1 else ""
        if isinstance(detail, list):  # RunConfigValidationInvalid: one entry per problem
            detail = "; ".join(problem["message"] for problem in detail)
        raise Exit(LAUNCH_REFUSED, f"launch refused: {kind}: {str(detail).strip()}") from None


def finished_status(client: DagsterGraphQLClient, run_id: str, deadline: float, timeout: float) -> str:
    """Poll the run's status until it is SUCCESS, FAILURE or CANCELED, printing each new one."""
    status, failing_since = None, None
    while True:
        try:
            new_status = client.get_run_status(run_id).value
            failing_since = None
        except DagsterGraphQLClientError as error:
            failing_since = failing_since or time.monotonic()
            if time.monotonic() - failing_since > POLL_ERRORS_S:
                raise Exit(NO_ANSWER, f"cannot read the status of run {run_id}: {error}") from None
            time.sleep(POLL_S)
            continue
        if new_status != status:
            status = new_status
            print(f"run {run_id}: {status}", flush=True)
        if status in FINISHED:
            return status
        if time.monotonic() >= deadline:
            raise Exit(
                TIMED_OUT, f"run {run_id} is still {status} after {timeout:g}s; it goes on (terminate it in the UI)"
            )
        time.sleep(POLL_S)


def retry_of(url: str, run_id: str, deadline: float) -> str | None:
    """The run the daemon launched to retry failed run `run_id`; None when it will not retry it."""
    will_retry_by = time.monotonic() + WILL_RETRY_WAIT_S
    while True:
        tags = graphql(url, RUN_TAGS, runId=run_id)["runOrError"].get("tags") or []
        tag = {entry["key"]: entry["value"] for entry in tags}
        if tag.get(RETRY_RUN_TAG):
            return tag[RETRY_RUN_TAG]
        will_retry = tag.get(WILL_RETRY_TAG)  # set with the failure, or by the daemon soon after it
        if will_retry == "false" or (will_retry is None and time.monotonic() > will_retry_by):
            return None
        if time.monotonic() >= deadline:
            raise Exit(TIMED_OUT, f"run {run_id} failed and is to be retried, but no retry started in time")
        time.sleep(POLL_S)


def shown(entry: dict[str, Any]) -> str | None:
    """A metadata entry as `label=value`; None for the JSON ones (sample keys, rejections, ranges)."""
    for field in ("intValue", "floatValue", "boolValue", "text"):
        value = entry.get(field)
        if value is not None:
            if isinstance(value, bool):
                value = str(value).lower()
            elif isinstance(value, float) and value.is_integer():
                value = int(value)
            return f"{entry['label']}={value}"
    return None


def figure_lines(run: dict[str, Any]) -> list[str]:
    """One line per target table a real sync materialized; for a dry run, its report step's output."""
    lines = []
    for materialization in run["assetMaterializations"]:
        figures = " ".join(filter(None, map(shown, materialization["metadataEntries"])))
        lines.append(f"{'/'.join(materialization['assetKey']['path'])}: {figures}")
    if not lines:
        for event in run["eventConnection"]["events"]:
            entries = event.get("metadataEntries") or []
            if event["__typename"] == "ExecutionStepOutputEvent" and any(e["label"] == "dry_run" for e in entries):
                lines.append(f"{event['stepKey']} (no materialization): {' '.join(filter(None, map(shown, entries)))}")
    return lines


def sync(args: argparse.Namespace) -> int:
    client = client_for(args.url)
    run_id = launch(client, args)
    print(f"launched {args.job} run {run_id}", flush=True)
    deadline = time.monotonic() + args.timeout
    while True:
        status = finished_status(client, run_id, deadline, args.timeout)
        run = graphql(args.url, RUN_RESULT, runId=run_id)["runOrError"]
        if run["__typename"] != "Run":
            raise Exit(NO_ANSWER, f"run {run_id} is {status}, but reading it answered {run}")
        for event in run["eventConnection"]["events"]:
            if event["__typename"] == "ExecutionStepFailureEvent":
                print(f"step {event['stepKey']} failed: {event['error']['message'].strip()}", file=sys.stderr)
        retry_id = retry_of(args.url, run_id, deadline) if status == "FAILURE" else None
        if retry_id is None:
            break
        print(f"run {run_id} failed; the daemon retries it as run {retry_id}", flush=True)
        run_id = retry_id
    for line in figure_lines(run):
        print(line)
    return FINISHED[status]


def parser() -> argparse.ArgumentParser:
    codes = "\n".join(f"  {code}  {meaning}" for code, meaning in EXIT_CODES.items())
    result = argparse.ArgumentParser(
        description="Launch a sync job on the Dagster webserver, wait for it and print its figures.",
        epilog=f"exit codes:\n{codes}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    result.add_argument("--url", default="http://127.0.0.1:3000", help="the webserver (default: %(default)s)")
    result.add_argument("--job", required=True, help="product_sync_job, cart_sync_job, full_sync_job, ...")
    result.add_argument(
        "--config",
        type=run_config,
        default={},
        help="the job's run config as JSON or YAML, or @file: '{\"batch_size\": 500}', '{\"dry_run\": true}'",
    )
    result.add_argument(
        "--timeout", type=float, default=3600, help="seconds to wait for the run and its retries (default: %(default)s)"
    )
    result.add_argument(
        "--location", help="code location (default: the one that has the job; etl_sync locally, etl-sync on Helm)"
    )
    result.add_argument("--repository", default="__repository__", help="with --location (default: %(default)s)")
    return result


def main() -> int:
    args = parser().parse_args()
    try:
        return sync(args)
    except Exit as stop:
        print(stop, file=sys.stderr)
        return stop.code


if __name__ == "__main__":
    sys.exit(main())
