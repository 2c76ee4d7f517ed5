"""Validate helm-values.yaml the way Helm does, offline, and check the deployment choices.

Helm validates the chart's values.schema.json against the chart defaults with the user file
merged over them, so that is what these tests validate too. The schema's remote `$ref`s (into
the Kubernetes JSON schemas) are answered offline with an accept-anything schema, as described
in ../shared/vendor/dagster-helm/README.md.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from tests.helpers import yaml_strings

REPO_ROOT = Path(__file__).resolve().parents[2]
VENDOR_DIR = REPO_ROOT / ".." / "shared" / "vendor" / "dagster-helm"
VALUES_FILE = REPO_ROOT / "helm-values.yaml"

SECRET_NAME = "etl-sync-secrets"
SECRET_VARIABLES = (
    "PRODUCT_SERVICE_MONGODB_URL",
    "ORDER_SERVICE_MONGODB_URL",
    "CART_DB_URL",
    "CART_DB_WRITE_URL",
    "MONGO_USER",
    "MONGO_PASSWORD",
    "ALERT_WEBHOOK_URL",
)
EXPECTED_INLINE_ENV = {
    "SYNC_CRON_SCHEDULE": "*/30 * * * *",
    "CART_SYNC_CRON_SCHEDULE": "*/10 * * * *",
    "HEALTH_CHECK_CRON_SCHEDULE": "*/5 * * * *",
    "ENABLE_SCHEDULER": "true",
    "SYNC_BATCH_SIZE": "1000",
    "CART_SYNC_BATCH_SIZE": "1000",
    "TIMEZONE": "UTC",
    "SYNC_EXECUTOR": "k8s",
    "SYNC_RANGE_STEP_CPU": "1",
    "SYNC_RANGE_STEP_MEMORY": "1Gi",
    "DAGSTER_UI_URL": "https://dagster-admin.example.internal",
}
PIPELINE_TAG = "etl-sync/pipeline"
# scheme://user:password@host: credentials written into a URL.
URL_WITH_CREDENTIALS = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@", re.IGNORECASE)


class _AcceptAnything(dict):  # type: ignore[type-arg]
    """An empty schema in which every JSON pointer resolves to another empty schema."""

    def __missing__(self, key: str) -> _AcceptAnything:
        return _AcceptAnything()


def _retrieve_offline(uri: str) -> Resource[Any]:
    """Answer a remote `$ref` (Kubernetes object schemas) without the network."""
    return Resource.from_contents(_AcceptAnything(), default_specification=DRAFT202012)


def helm_merge(defaults: Any, overrides: Any) -> Any:
    """Merge `overrides` over `defaults` like Helm merges a values file over chart defaults.

    Maps merge recursively, every other value (lists included) is replaced, and a `null`
    override removes the key.
    """
    if not (isinstance(defaults, dict) and isinstance(overrides, dict)):
        return copy.deepcopy(overrides)
    merged = copy.deepcopy(defaults)
    for key, value in overrides.items():
        if value is None:
            merged.pop(key, None)
        elif key in merged:
            merged[key] = helm_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _load_yaml(path: Path) -> dict[str, Any]:
    """Load one YAML mapping, failing with the path when it is missing or not a mapping."""
    assert path.is_file(), f"missing {path}"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), f"{path} is not a YAML mapping"
    return data


def _error_lines(validator: Draft202012Validator, instance: dict[str, Any]) -> list[str]:
    """All schema errors as `path: message` lines (empty when the instance is valid)."""
    errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path))
    return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors]


def _env_names(env: Any) -> set[str]:
    """Variable names set inline by a chart `env` value (a map or a list of EnvVar)."""
    if not env:
        return set()
    if isinstance(env, dict):
        return set(env)
    return {item["name"] for item in env}


@pytest.fixture(scope="module")
def validator() -> Draft202012Validator:
    """Draft 2020-12 validator for the vendored chart schema, remote refs stubbed offline."""
    schema_path = VENDOR_DIR / "values.schema.json"
    assert schema_path.is_file(), f"vendored chart schema not found at {schema_path.resolve()}"
    schema = json.loads(schema_path.read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, registry=Registry(retrieve=_retrieve_offline))


@pytest.fixture(scope="module")
def chart_defaults() -> dict[str, Any]:
    """The chart's own values.yaml."""
    return _load_yaml(VENDOR_DIR / "values.yaml")


@pytest.fixture(scope="module")
def user_values() -> dict[str, Any]:
    """Our helm-values.yaml, as written."""
    return _load_yaml(VALUES_FILE)


@pytest.fixture(scope="module")
def values(chart_defaults: dict[str, Any], user_values: dict[str, Any]) -> dict[str, Any]:
    """What Helm validates and renders: chart defaults with helm-values.yaml merged over them."""
    return helm_merge(chart_defaults, user_values)


@pytest.fixture(scope="module")
def deployment(values: dict[str, Any]) -> dict[str, Any]:
    """The single user code deployment."""
    deployments = values["dagster-user-deployments"]["deployments"]
    assert [d["name"] for d in deployments] == ["etl-sync"]
    return deployments[0]


def test_helm_merge_follows_helm_rules() -> None:
    """Maps merge recursively, lists are replaced, null deletes a default key."""
    defaults = {"a": {"b": 1, "c": [1, 2]}, "d": 1, "e": "x"}
    overrides = {"a": {"c": [3]}, "d": None, "f": {"g": True}}
    assert helm_merge(defaults, overrides) == {"a": {"b": 1, "c": [3]}, "e": "x", "f": {"g": True}}
    assert defaults == {"a": {"b": 1, "c": [1, 2]}, "d": 1, "e": "x"}


def test_chart_defaults_are_valid(validator: Draft202012Validator, chart_defaults: dict[str, Any]) -> None:
    """The offline setup accepts the chart's own defaults (a check of the harness itself)."""
    assert _error_lines(validator, chart_defaults) == []


def test_merged_values_match_chart_schema(validator: Draft202012Validator, values: dict[str, Any]) -> None:
    """helm-values.yaml merged over the chart defaults passes the chart's schema."""
    assert _error_lines(validator, values) == []


def test_user_deployment_runs_etl_defs(deployment: dict[str, Any]) -> None:
    """The code server serves the `etl_defs` module on port 3030 and shares config with runs."""
    assert deployment["image"]["repository"] == "ghcr.io/example-shop/etl-sync"
    assert deployment["image"]["tag"] == "1.0.0"
    assert deployment["port"] == 3030
    assert deployment["dagsterApiGrpcArgs"] == ["-m", "etl_defs"]
    assert deployment["includeConfigInLaunchedRuns"] == {"enabled": True}


def test_user_deployment_has_resource_requests_and_limits(deployment: dict[str, Any]) -> None:
    """CPU and memory are both requested and limited on the code server."""
    resources = deployment["resources"]
    for kind in ("requests", "limits"):
        assert set(resources[kind]) >= {"cpu", "memory"}, kind


def test_non_secret_settings_are_inline(deployment: dict[str, Any]) -> None:
    """The non-secret settings are set inline, exactly as the service expects them."""
    env = deployment["env"]
    inline = env if isinstance(env, dict) else {item["name"]: item.get("value") for item in env}
    assert inline == EXPECTED_INLINE_ENV


def test_secrets_only_through_env_secrets(
    values: dict[str, Any], user_values: dict[str, Any], deployment: dict[str, Any]
) -> None:
    """No secret variable is set inline anywhere; the code server and runs get the Secret."""
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    inline_names = (
        _env_names(deployment.get("env"))
        | _env_names(values["dagsterWebserver"].get("env"))
        | _env_names(values["dagsterDaemon"].get("env"))
        | {item.split("=", 1)[0] for item in launcher.get("envVars") or []}
    )
    assert inline_names.isdisjoint(SECRET_VARIABLES), inline_names & set(SECRET_VARIABLES)
    assert not set(yaml_strings(user_values)) & set(SECRET_VARIABLES), "secret name used as a key"
    assert {"name": SECRET_NAME} in deployment["envSecrets"]
    assert {"name": SECRET_NAME} in launcher["envSecrets"]
    leaked = [s for s in yaml_strings(user_values) if URL_WITH_CREDENTIALS.search(s)]
    assert leaked == [], "credentials written into a URL"


def test_external_instance_database(values: dict[str, Any]) -> None:
    """Dagster's instance DB is external and its password comes from our own Secret."""
    postgresql = values["postgresql"]
    assert postgresql["enabled"] is False
    assert postgresql["postgresqlHost"]
    assert postgresql["postgresqlPassword"] == ""
    assert values["generatePostgresqlPasswordSecret"] is False
    assert values["global"]["postgresqlSecretName"]


def test_k8s_run_launcher(values: dict[str, Any]) -> None:
    """Runs launch as Kubernetes Jobs with the secrets and sized run pods."""
    run_launcher = values["runLauncher"]
    assert run_launcher["type"] == "K8sRunLauncher"
    launcher = run_launcher["config"]["k8sRunLauncher"]
    assert set(launcher["resources"]) == {"requests", "limits"}
    # containerConfig.resources wins over the code location's resources in the run pod.
    assert launcher["runK8sConfig"]["containerConfig"]["resources"] == launcher["resources"]


def test_queued_run_coordinator_limits_each_pipeline(values: dict[str, Any]) -> None:
    """At most 4 runs, and one run per value of the `etl-sync/pipeline` tag, in the chart's `concurrency` block."""
    coordinator = values["dagsterDaemon"]["runCoordinator"]
    assert coordinator["enabled"] is True
    assert coordinator["type"] == "QueuedRunCoordinator"
    # The chart says not to configure run limits in both places.
    queued = coordinator["config"]["queuedRunCoordinator"]
    assert (queued["maxConcurrentRuns"], queued["tagConcurrencyLimits"]) == (None, [])  # the chart's defaults
    concurrency = values["concurrency"]
    assert concurrency["enabled"] is True
    assert concurrency["runs"]["maxConcurrentRuns"] == 4
    assert concurrency["runs"]["tagConcurrencyLimits"] == [
        {"key": PIPELINE_TAG, "value": {"applyLimitPerUniqueValue": True}, "limit": 1}
    ]


def test_database_pools_cap_the_range_steps(values: dict[str, Any]) -> None:
    """The range steps' pools (`product_db`, `order_db`) have a limit, counted per op, as in dagster.yaml."""
    pools = values["concurrency"]["pools"]
    instance = yaml.safe_load(Path("dagster.yaml").read_text())
    assert pools["defaultLimit"] == instance["concurrency"]["pools"]["default_limit"]
    assert pools["granularity"] == instance["concurrency"]["pools"]["granularity"] == "op"


def test_split_syncs_run_their_steps_as_pods_that_share_the_step_io_volume(
    values: dict[str, Any], deployment: dict[str, Any]
) -> None:
    assert deployment["env"]["SYNC_EXECUTOR"] == "k8s"
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    [volume] = launcher["volumes"]
    assert volume["persistentVolumeClaim"] == {"claimName": "etl-sync-step-io"}
    # Dagster's fs_io_manager writes under DAGSTER_HOME/storage; the chart's DAGSTER_HOME:
    assert launcher["volumeMounts"] == [{"name": volume["name"], "mountPath": "/opt/dagster/dagster_home/storage"}]


def test_read_only_webserver_and_resources(values: dict[str, Any]) -> None:
    """A read-only webserver for everyone; the chart's Ingress off (deploy/admin-auth.yaml routes both
    webservers, the admin one through its login: tests/unit/test_admin_auth_manifest.py); daemon/UI sized."""
    assert values["dagsterWebserver"]["enableReadOnly"] is True
    assert values["ingress"]["enabled"] is False
    for component in ("dagsterWebserver", "dagsterDaemon"):
        resources = values[component]["resources"]
        assert set(resources) == {"requests", "limits"}, component


def _set_read_only_to_string(v: dict[str, Any]) -> None:
    v["dagsterWebserver"]["enableReadOnly"] = "yes"


def _set_tag_limit_to_string(v: dict[str, Any]) -> None:
    v["concurrency"]["runs"]["tagConcurrencyLimits"][0]["limit"] = "1"


def _set_pool_limit_to_string(v: dict[str, Any]) -> None:
    v["concurrency"]["pools"]["defaultLimit"] = "4"


def _drop_k8s_run_launcher_config(v: dict[str, Any]) -> None:
    del v["runLauncher"]["config"]["k8sRunLauncher"]


def _drop_user_deployment_port(v: dict[str, Any]) -> None:
    del v["dagster-user-deployments"]["deployments"][0]["port"]


@pytest.mark.parametrize(
    "break_values",
    [
        _set_read_only_to_string,
        _set_tag_limit_to_string,
        _set_pool_limit_to_string,
        _drop_k8s_run_launcher_config,
        _drop_user_deployment_port,
    ],
    ids=lambda f: f.__name__.lstrip("_"),
)
def test_validator_catches_mistakes(validator: Draft202012Validator, values: dict[str, Any], break_values: Any) -> None:
    """A broken copy of the merged values fails, so the positive test cannot pass vacuously."""
    broken = copy.deepcopy(values)
    break_values(broken)
    assert _error_lines(validator, broken) != []


def test_run_monitoring_and_run_retries_are_on_as_in_dagster_yaml(values: dict[str, Any]) -> None:
    """A dead run pod is failed, and a failed sync retried, with the bounds README's "Failures" states."""
    instance = yaml.safe_load((REPO_ROOT / "dagster.yaml").read_text())
    monitoring, retries = values["dagsterDaemon"]["runMonitoring"], values["dagsterDaemon"]["runRetries"]
    assert monitoring["enabled"] is True and instance["run_monitoring"]["enabled"] is True
    assert monitoring["pollIntervalSeconds"] == instance["run_monitoring"]["poll_interval_seconds"]
    assert monitoring["maxResumeRunAttempts"] == instance["run_monitoring"]["max_resume_run_attempts"] == 0
    assert monitoring["freeSlotsAfterRunEndSeconds"] == instance["run_monitoring"]["free_slots_after_run_end_seconds"]
    assert retries == {"enabled": True, "maxRetries": instance["run_retries"]["max_retries"]}
    assert instance["run_launcher"]["class"] == "WorkerCheckingRunLauncher"
    tolerations = values["runLauncher"]["config"]["k8sRunLauncher"]["runK8sConfig"]["podSpecConfig"]["tolerations"]
    assert {t["key"]: t["tolerationSeconds"] for t in tolerations} == {
        "node.kubernetes.io/not-ready": 30,
        "node.kubernetes.io/unreachable": 30,
    }
