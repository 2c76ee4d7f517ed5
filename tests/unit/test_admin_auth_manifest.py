"""Validate deploy/admin-auth.yaml offline, and check that the admin webserver is only reachable through its proxy.

Each object is validated against the Kubernetes JSON schemas bundled with kubernetes-validate
(strict: an unknown field is an error, so a misspelt key does not pass silently). The rest
checks what the schemas cannot: the routing of each host, the auth annotations, the Secret
references, and that the chart's own Ingress is off (else it routes the admin host without auth).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.helpers import yaml_strings

REPO_ROOT = Path(__file__).resolve().parents[2]
MANIFEST = REPO_ROOT / "deploy" / "admin-auth.yaml"
#: The oldest Kubernetes release the manifest has to apply on.
KUBERNETES_VERSION = "1.30"
RELEASE = "etl-sync"  # the Helm release and namespace of helm-values.yaml's header
ADMIN_SERVICE = f"{RELEASE}-dagster-webserver"  # the chart's names for the two webservers' Services
READ_ONLY_SERVICE = f"{RELEASE}-dagster-webserver-read-only"
AUTH_URL = "nginx.ingress.kubernetes.io/auth-url"
AUTH_SIGNIN = "nginx.ingress.kubernetes.io/auth-signin"
AUTH_RESPONSE_HEADERS = "nginx.ingress.kubernetes.io/auth-response-headers"
#: scheme://user:password@host: credentials written into a URL.
URL_WITH_CREDENTIALS = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@", re.IGNORECASE)

Objects = list[dict[str, Any]]


@pytest.fixture(scope="module")
def objects() -> Objects:
    assert MANIFEST.is_file(), f"missing {MANIFEST}"
    return [item for item in yaml.safe_load_all(MANIFEST.read_text(encoding="utf-8")) if item]


def of_kind(objects: Objects, kind: str) -> Objects:
    return [item for item in objects if item["kind"] == kind]


def one(objects: Objects, kind: str) -> dict[str, Any]:
    [item] = of_kind(objects, kind)
    return item


def routes(objects: Objects) -> Iterator[tuple[dict[str, Any], str, dict[str, Any]]]:
    """Every (Ingress, host, path) the Ingresses route."""
    for ingress in of_kind(objects, "Ingress"):
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                yield ingress, rule["host"], path


def hosts_to(objects: Objects, service: str) -> set[str]:
    return {host for _, host, path in routes(objects) if path["backend"]["service"]["name"] == service}


def container(objects: Objects) -> dict[str, Any]:
    [proxy] = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    return proxy


def flags(objects: Objects) -> dict[str, str]:
    """oauth2-proxy's `--name=value` arguments."""
    return dict(arg.removeprefix("--").split("=", 1) for arg in container(objects)["args"])


def proxy_auth_url(objects: Objects) -> str:
    """/oauth2/auth of the oauth2-proxy Service, by its in-cluster name."""
    service = one(objects, "Service")
    [port] = service["spec"]["ports"]
    return f"http://{service['metadata']['name']}.{RELEASE}.svc.cluster.local:{port['port']}/oauth2/auth"


def test_every_object_matches_the_kubernetes_schema(objects: Objects) -> None:
    assert [item["kind"] for item in objects] == [
        "Deployment",
        "Service",
        "Ingress",
        "Ingress",
        "Ingress",
        "Ingress",
        "NetworkPolicy",
    ]
    for item in objects:
        kubernetes_validate.validate(item, KUBERNETES_VERSION, strict=True)
        assert item["metadata"]["namespace"] == RELEASE, item["metadata"]["name"]


def _misspell_a_container_field(objects: Objects) -> None:
    container(objects)["imagePullPolicyy"] = "Always"


def _give_a_port_as_text(objects: Objects) -> None:
    one(objects, "Service")["spec"]["ports"][0]["port"] = "4180"


def _drop_an_ingress_path_type(objects: Objects) -> None:
    del of_kind(objects, "Ingress")[0]["spec"]["rules"][0]["http"]["paths"][0]["pathType"]


@pytest.mark.parametrize(
    "break_objects",
    [_misspell_a_container_field, _give_a_port_as_text, _drop_an_ingress_path_type],
    ids=lambda f: f.__name__.lstrip("_"),
)
def test_the_schema_check_catches_mistakes(objects: Objects, break_objects: Callable[[Objects], None]) -> None:
    broken = copy.deepcopy(objects)
    break_objects(broken)
    errors = []
    for item in broken:
        try:
            kubernetes_validate.validate(item, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            errors.append(error.message)
    assert errors != []


def test_every_admin_route_goes_through_the_proxy_and_only_its_pages_do_not(objects: Objects) -> None:
    [admin_host] = hosts_to(objects, ADMIN_SERVICE)
    auth_url = proxy_auth_url(objects)
    admin_paths = {}
    for ingress, host, path in routes(objects):
        if host != admin_host:
            continue
        annotations = ingress["metadata"].get("annotations", {})
        service = path["backend"]["service"]["name"]
        admin_paths[path["path"]] = service
        if service == ADMIN_SERVICE:
            assert annotations[AUTH_URL] == auth_url, ingress["metadata"]["name"]
            assert annotations[AUTH_RESPONSE_HEADERS] == "X-Auth-Request-User,X-Auth-Request-Email"
        else:  # oauth2-proxy's sign-in pages: no auth in front of them
            assert AUTH_URL not in annotations, ingress["metadata"]["name"]
    proxy = one(objects, "Service")["metadata"]["name"]
    assert admin_paths == {"/": ADMIN_SERVICE, "/graphql": ADMIN_SERVICE, "/oauth2": proxy}


def test_a_browser_is_sent_to_sign_in_and_a_script_gets_401(objects: Objects) -> None:
    [admin_host] = hosts_to(objects, ADMIN_SERVICE)
    admin = {path["path"]: (ingress, path) for ingress, host, path in routes(objects) if host == admin_host}
    signin = {name: ingress["metadata"].get("annotations", {}).get(AUTH_SIGNIN) for name, (ingress, _) in admin.items()}
    assert signin["/"] == "https://$host/oauth2/start?rd=$escaped_request_uri"
    assert signin["/graphql"] is None  # no redirect: the example scripts exit 5 (not allowed) on the 401
    assert admin["/graphql"][1]["pathType"] == "Exact"  # nginx prefers it to the `/` prefix


def test_the_read_only_host_routes_only_to_the_read_only_webserver_without_auth(objects: Objects) -> None:
    [read_only_host] = hosts_to(objects, READ_ONLY_SERVICE)
    assert read_only_host not in hosts_to(objects, ADMIN_SERVICE)
    for ingress, host, path in routes(objects):
        if host == read_only_host:
            assert path["backend"]["service"]["name"] == READ_ONLY_SERVICE
            assert AUTH_URL not in ingress["metadata"].get("annotations", {})


def test_both_webserver_hosts_have_tls(objects: Objects) -> None:
    tls_hosts = {
        host
        for ingress in of_kind(objects, "Ingress")
        for tls in ingress["spec"].get("tls", [])
        for host in tls["hosts"]
    }
    assert hosts_to(objects, ADMIN_SERVICE) | hosts_to(objects, READ_ONLY_SERVICE) <= tls_hosts


def test_the_proxy_service_reaches_the_proxy_pods_on_the_port_it_listens_on(objects: Objects) -> None:
    deployment, service = one(objects, "Deployment"), one(objects, "Service")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert deployment["spec"]["template"]["metadata"]["labels"] == deployment["spec"]["selector"]["matchLabels"]
    [port] = container(objects)["ports"]
    assert service["spec"]["ports"][0]["targetPort"] == port["name"]
    assert flags(objects)["http-address"] == f"0.0.0.0:{port['containerPort']}"


def test_the_proxy_signs_in_on_the_admin_host_and_accepts_bearer_tokens_for_scripts(objects: Objects) -> None:
    [admin_host] = hosts_to(objects, ADMIN_SERVICE)
    proxy = flags(objects)
    assert proxy["redirect-url"] == f"https://{admin_host}/oauth2/callback"
    assert (proxy["reverse-proxy"], proxy["set-xauthrequest"], proxy["upstream"]) == ("true", "true", "static://202")
    assert (proxy["skip-jwt-bearer-tokens"], proxy["bearer-token-login-fallback"]) == ("true", "false")


def test_secrets_only_by_reference(objects: Objects) -> None:
    assert of_kind(objects, "Secret") == []
    env = {item["name"]: item for item in container(objects)["env"]}
    for name in ("OAUTH2_PROXY_CLIENT_ID", "OAUTH2_PROXY_CLIENT_SECRET", "OAUTH2_PROXY_COOKIE_SECRET"):
        assert "value" not in env[name]
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == f"{RELEASE}-oauth2-proxy"
    assert not {"client-id", "client-secret", "cookie-secret", "client-secret-file"} & set(flags(objects))
    assert [text for text in yaml_strings(objects) if URL_WITH_CREDENTIALS.search(text)] == []


def test_only_the_ingress_controller_reaches_the_admin_webserver_pods(objects: Objects) -> None:
    policy = one(objects, "NetworkPolicy")["spec"]
    # The chart's pod labels of the admin webserver (the read-only one's component is dagster-webserver-read-only).
    assert policy["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "dagster",
        "app.kubernetes.io/instance": RELEASE,
        "component": "dagster-webserver",
    }
    assert policy["policyTypes"] == ["Ingress"]
    [rule] = policy["ingress"]
    [source] = rule["from"]
    assert set(source) == {"namespaceSelector"}


def test_the_charts_own_ingress_is_off(objects: Objects) -> None:
    """The chart's Ingress always routes the admin host, with one set of annotations for both hosts:
    left on, it would route the admin webserver a second time, without auth."""
    values = yaml.safe_load((REPO_ROOT / "helm-values.yaml").read_text(encoding="utf-8"))
    assert values.get("ingress", {}).get("enabled") is False, "set `ingress.enabled: false` in helm-values.yaml"
