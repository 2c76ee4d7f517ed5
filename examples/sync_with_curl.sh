#!/usr/bin/env bash
# Launch a sync with curl over the Dagster webserver's GraphQL API (a launchRun mutation), poll
# runOrError { status } until it finishes, print its figures, and exit with the same codes as
# examples/sync_from_a_script.py:
#
#   examples/sync_with_curl.sh --job product_sync_job --config '{"batch_size": 500}'
#
# Needs bash, curl and jq. --config is JSON here (no YAML), --timeout whole seconds. A failed run
# that the daemon retries is followed to its last retry. When DAGSTER_AUTH_TOKEN is set, every
# request carries `Authorization: Bearer <it>` (the admin webserver's authenticating proxy).
#
# Exit codes: 0 the run succeeded; 1 it failed (and so did its retries); 2 bad arguments; 3 it
# was canceled; 4 no run, the launch was refused (run config, job or location); 5 no run, this
# webserver does not allow launching (read-only, or 401/403 from a proxy); 6 still running after
# --timeout (it goes on); 7 the webserver could not be reached or did not answer as Dagster's
# GraphQL API does.
set -uo pipefail

URL=http://127.0.0.1:3000 JOB="" CONFIG="{}" TIMEOUT=3600 LOCATION="" REPOSITORY=__repository__
POLL_S=2
# Reading a run goes on through errors (a webserver restarting) for up to 120 s; launching is never repeated.
READ_RETRIES=(--retry 60 --retry-delay "$POLL_S" --retry-max-time 120 --retry-connrefused)
RETRIES=()

usage() {
    echo "usage: $0 --job JOB [--url URL] [--config JSON] [--timeout SECONDS] [--location L] [--repository R]" >&2
    exit 2
}
while (($#)); do
    (($# >= 2)) || usage
    case $1 in
        --url) URL=${2%/} ;;
        --job) JOB=$2 ;;
        --config) CONFIG=$2 ;;
        --timeout) TIMEOUT=$2 ;;
        --location) LOCATION=$2 ;;
        --repository) REPOSITORY=$2 ;;
        *) usage ;;
    esac
    shift 2
done
[[ -n $JOB && $TIMEOUT =~ ^[0-9]+$ ]] || usage
if ! jq -e 'type == "object"' <<<"$CONFIG" >/dev/null 2>&1; then
    echo "--config must be a JSON object, like {\"batch_size\": 500}; not: $CONFIG" >&2
    exit 2
fi

# graphql QUERY VARIABLES: POST them, leave the answer in ANSWER. Dagster answers a PythonError
# with HTTP 500 and a GraphQL body, so the body is read whatever the HTTP status.
graphql() {
    local auth=() out code
    [[ -n ${DAGSTER_AUTH_TOKEN:-} ]] && auth=(-H "Authorization: Bearer $DAGSTER_AUTH_TOKEN")
    if ! out=$(jq -n --arg query "$1" --argjson variables "$2" '{query: $query, variables: $variables}' |
        curl -sS --max-time 60 "${RETRIES[@]}" -H "Content-Type: application/json" "${auth[@]}" --data-binary @- \
            -w '\n%{http_code}' "$URL/graphql"); then
        echo "no answer from the webserver at $URL" >&2
        exit 7
    fi
    code=${out##*$'\n'} ANSWER=${out%$'\n'*}
    if [[ $code == 401 || $code == 403 ]]; then
        echo "launch refused: this webserver does not allow launching runs (HTTP $code)" >&2
        exit 5
    fi
    if ! jq -e '.data' <<<"$ANSWER" >/dev/null 2>&1; then
        echo "no answer from the webserver: HTTP $code, ${ANSWER:0:300}" >&2
        exit 7
    fi
}

if [[ -z $LOCATION ]]; then # the one code location that has the job (etl_sync locally, etl-sync on Helm)
    graphql '{ repositoriesOrError { ... on RepositoryConnection {
        nodes { name location { name } pipelines { name } } } } }' '{}'
    found=$(jq -r --arg job "$JOB" '[.data.repositoriesOrError.nodes[]?
        | select(any(.pipelines[]; .name == $job)) | "\(.location.name) \(.name)"] | .[]' <<<"$ANSWER")
    case $(grep -c . <<<"$found") in
        1) ;;
        0) echo "launch refused: JobNotFoundError: no code location has a job named $JOB" >&2 && exit 4 ;;
        *) echo "launch refused: several code locations have a job named $JOB; give --location" >&2 && exit 4 ;;
    esac
    read -r LOCATION REPOSITORY <<<"$found"
fi

LAUNCH_RUN='mutation LaunchRun($executionParams: ExecutionParams!) {
  launchRun(executionParams: $executionParams) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on Error { message }
  }
}'
graphql "$LAUNCH_RUN" "$(jq -n --arg location "$LOCATION" --arg repository "$REPOSITORY" --arg job "$JOB" \
    --argjson config "$CONFIG" '{executionParams: {
        selector: {repositoryLocationName: $location, repositoryName: $repository, jobName: $job},
        runConfigData: $config}}')"
kind=$(jq -r '.data.launchRun.__typename' <<<"$ANSWER")
reason=$(jq -r '.data.launchRun | .message // ([.errors[]?.message] | join("; ")) | rtrimstr("\n")' <<<"$ANSWER")
case $kind in
    LaunchRunSuccess) ;;
    UnauthorizedError)
        echo "launch refused: this webserver does not allow launching runs ($kind: $reason)" >&2
        exit 5
        ;;
    *)
        echo "launch refused: $kind: $reason" >&2
        exit 4
        ;;
esac
RUN_ID=$(jq -r '.data.launchRun.run.runId' <<<"$ANSWER")
echo "launched $JOB run $RUN_ID"

RETRIES=("${READ_RETRIES[@]}")
RUN_STATUS='query RunStatus($runId: ID!) {
  runOrError(runId: $runId) { __typename ... on Run { status } ... on Error { message } }
}'
RUN_TAGS='query RunTags($runId: ID!) { runOrError(runId: $runId) { ... on Run { tags { key value } } } }'
deadline=$((SECONDS + TIMEOUT))

# wait_for_run: poll RUN_ID's status until it is SUCCESS, FAILURE or CANCELED, printing each new one.
wait_for_run() {
    local new_status
    status=""
    while true; do
        graphql "$RUN_STATUS" "$(jq -n --arg runId "$RUN_ID" '{runId: $runId}')"
        new_status=$(jq -r '.data.runOrError.status // empty' <<<"$ANSWER")
        if [[ -z $new_status ]]; then
            echo "cannot read the status of run $RUN_ID: $(jq -c '.data.runOrError' <<<"$ANSWER")" >&2
            exit 7
        fi
        if [[ $new_status != "$status" ]]; then
            status=$new_status
            echo "run $RUN_ID: $status"
        fi
        case $status in SUCCESS | FAILURE | CANCELED) return ;; esac
        if ((SECONDS >= deadline)); then
            echo "run $RUN_ID is still $status after ${TIMEOUT}s; it goes on (terminate it in the UI)" >&2
            exit 6
        fi
        sleep "$POLL_S"
    done
}

# retry_of: the run the daemon launched to retry failed run RUN_ID (dagster/auto_retry_run_id), or
# nothing when dagster/will_retry says it will not (or is still unset 10 s after the failure).
retry_of() {
    local will_retry_by=$((SECONDS + 10)) retry will_retry
    while true; do
        graphql "$RUN_TAGS" "$(jq -n --arg runId "$RUN_ID" '{runId: $runId}')"
        retry=$(jq -r '.data.runOrError.tags[]? | select(.key == "dagster/auto_retry_run_id") | .value' <<<"$ANSWER")
        will_retry=$(jq -r '.data.runOrError.tags[]? | select(.key == "dagster/will_retry") | .value' <<<"$ANSWER")
        if [[ -n $retry ]]; then
            echo "$retry"
            return 0
        fi
        if [[ $will_retry == false || (-z $will_retry && $SECONDS -gt $will_retry_by) ]]; then
            return 0
        fi
        if ((SECONDS >= deadline)); then
            echo "run $RUN_ID failed and is to be retried, but no retry started in time" >&2
            exit 6
        fi
        sleep "$POLL_S"
    done
}

# A real sync's figures are its materializations (one per target table); a dry run's, the output
# of its report step (it writes nothing, so it materializes nothing).
RUN_RESULT='query RunResult($runId: ID!) {
  runOrError(runId: $runId) {
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
  }
}
fragment Figure on MetadataEntry {
  label
  ... on IntMetadataEntry { intValue }
  ... on FloatMetadataEntry { floatValue }
  ... on BoolMetadataEntry { boolValue }
  ... on TextMetadataEntry { text }
}'
while true; do
    wait_for_run
    graphql "$RUN_RESULT" "$(jq -n --arg runId "$RUN_ID" '{runId: $runId}')"
    jq -r '.data.runOrError.eventConnection.events[] | select(.__typename == "ExecutionStepFailureEvent")
        | "step \(.stepKey) failed: \(.error.message | rtrimstr("\n"))"' <<<"$ANSWER" >&2
    [[ $status == FAILURE ]] || break
    retry=$(retry_of) || exit # retry_of's own exit code (6, 7), in its subshell
    [[ -n $retry ]] || break
    echo "run $RUN_ID failed; the daemon retries it as run $retry"
    RUN_ID=$retry
done
jq -r '
    def value: if .intValue != null then .intValue elif .floatValue != null then .floatValue
        elif .boolValue != null then .boolValue else .text end;
    def figures: [.metadataEntries[] | select(value != null) | "\(.label)=\(value)"] | join(" ");
    .data.runOrError as $run
    | if ($run.assetMaterializations | length) > 0
      then $run.assetMaterializations[] | "\(.assetKey.path | join("/")): \(figures)"
      else $run.eventConnection.events[]
        | select(.__typename == "ExecutionStepOutputEvent" and any(.metadataEntries[]; .label == "dry_run"))
        | "\(.stepKey) (no materialization): \(figures)"
      end' <<<"$ANSWER"

case $status in
    SUCCESS) exit 0 ;;
    FAILURE) exit 1 ;;
    CANCELED) exit 3 ;;
esac
