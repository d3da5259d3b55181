"""The policy pack's rules, called directly as pulumi-policy would call them.

policy/__main__.py is never imported (PolicyPack() blocks forever) and pulumi_policy is not
installed here: the args are simple stand-ins with the same attributes as ResourceValidationArgs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from policy import rules
from render import offline
from tests.conftest import stack_raw


@dataclass
class Opts:
    protect: bool = False


@dataclass
class Args:
    resource_type: str
    props: dict[str, Any]
    name: str = "res"
    stack: str = "staging"
    opts: Opts = field(default_factory=Opts)
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def urn(self) -> str:
        return f"urn:pulumi:{self.stack}::matrix-stack::{self.resource_type}::{self.name}"

    def get_config(self) -> dict[str, Any]:
        return self.config


def violations(rule: Any, args: Args) -> list[str]:
    found: list[str] = []
    rule(args, lambda message, urn=None: found.append(message))
    return found


def container(name: str, **props: Any) -> Args:
    return Args(rules.DOCKER_CONTAINER, {"name": name, **props}, name=name)


def upload(path: str, content: str) -> dict[str, Any]:
    return {"file": path, "content": content}


# ---------------------------------------------------------------- admin API

SAFE_NGINX = """
http { server {
    location ~* ^/_synapse/admin/v1/media/.*$ { allow 10.0.0.0/8; deny all; proxy_pass http://media; }
    location ~* ^/_synapse/admin/ { deny all; proxy_pass http://main; }
    location ~* ^(/_matrix|/_synapse/client) { proxy_pass http://main; }
    location / { return 404; }
} }
"""


def test_admin_api_denied_everywhere_passes() -> None:
    args = container("synapse-proxy", uploads=[upload("/etc/nginx/nginx.conf", SAFE_NGINX)])
    assert violations(rules.no_public_admin_api, args) == []


def test_admin_location_without_deny_fails() -> None:
    text = SAFE_NGINX.replace("{ deny all; proxy_pass http://main; }", "{ proxy_pass http://main; }")
    args = container("synapse-proxy", uploads=[upload("/etc/nginx/nginx.conf", text)])
    found = violations(rules.no_public_admin_api, args)
    assert len(found) == 1 and "^/_synapse/admin/" in found[0]


def test_a_catch_all_that_proxies_the_admin_api_fails() -> None:
    text = ("upstream main { server synapse-main:8008; } "
            "server { location /_synapse { proxy_pass http://main; } location / { return 404; } }")
    args = Args(rules.K8S_CONFIGMAP, {"metadata": {"name": "synapse-proxy"}, "data": {"etc-nginx-nginx.conf": text}})
    found = violations(rules.no_public_admin_api, args)
    assert len(found) == 1 and "location /_synapse" in found[0]


def test_locations_proxying_elsewhere_serve_no_admin_api() -> None:
    text = "server { location / { proxy_pass http://element-web:8080; } }"
    args = container("synapse-proxy", uploads=[upload("/etc/nginx/nginx.conf", text)])
    assert violations(rules.no_public_admin_api, args) == []
    routed = "server { location / { proxy_pass http://$backend; } }"  # might reach Synapse
    args = container("synapse-proxy", uploads=[upload("/etc/nginx/nginx.conf", routed)])
    assert len(violations(rules.no_public_admin_api, args)) == 1


def test_admin_rule_ignores_resources_without_nginx_conf() -> None:
    assert violations(rules.no_public_admin_api, container("synapse-main", uploads=[upload("/x.conf", "location /")])) == []
    assert violations(rules.no_public_admin_api, Args(rules.K8S_CONFIGMAP, {})) == []
    assert violations(rules.no_public_admin_api, container("c")) == []  # undefined props


def test_ingress_path_to_the_admin_api_fails() -> None:
    props = {"spec": {"rules": [{"http": {"paths": [{"path": "/"}, {"path": "/_synapse/admin"}]}}]}}
    assert len(violations(rules.no_public_admin_api, Args(rules.K8S_INGRESS, props))) == 1


def test_secret_wrapped_uploads_are_inspected() -> None:
    @dataclass
    class Secret:
        value: Any

    text = "server { location ~* ^/_synapse/admin/ { proxy_pass http://main; } }"
    args = container("synapse-proxy", uploads=Secret([upload("/etc/nginx/nginx.conf", text)]))
    assert len(violations(rules.no_public_admin_api, args)) == 1


# ---------------------------------------------------------------- registration


@pytest.mark.parametrize(("config", "ok"), [
    ("enable_registration: false\n", True),
    ("server_name: x\n", True),
    ("enable_registration: true\nregistration_requires_token: true\n", True),
    ("enable_registration: true\nenable_registration_captcha: true\n", True),
    ("enable_registration: true\nregistrations_require_3pid: [email]\n", True),
    ("enable_registration: true\n", False),
    ("enable_registration: true\nregistration_requires_token: false\nregistrations_require_3pid: []\n", False),
])
def test_registration_rule(config: str, ok: bool) -> None:
    docker = container("synapse-main", uploads=[upload("/conf/homeserver.yaml", config)])
    k8s = Args(rules.K8S_CONFIGMAP, {"data": {"conf-homeserver.yaml": config}})
    for args in (docker, k8s):
        assert (violations(rules.registration_needs_token_or_captcha, args) == []) is ok


def test_registration_rule_reports_unparsable_config() -> None:
    args = container("synapse-main", uploads=[upload("/conf/homeserver.yaml", "a: [")])
    assert "does not parse" in violations(rules.registration_needs_token_or_captcha, args)[0]


# ---------------------------------------------------------------- private data stores


def test_postgres_and_redis_publish_no_ports() -> None:
    port = [{"internal": 5432, "external": 5432}]
    assert violations(rules.database_and_redis_private, container("synapse-postgres", ports=[])) == []
    assert violations(rules.database_and_redis_private, container("synapse-postgres")) == []
    assert len(violations(rules.database_and_redis_private, container("synapse-postgres", ports=port))) == 1
    assert len(violations(rules.database_and_redis_private, container("synapse-redis", ports=port))) == 1
    assert violations(rules.database_and_redis_private, container("synapse-proxy", ports=port)) == []


@pytest.mark.parametrize(("name", "kind", "ok"), [
    ("synapse-postgres", "ClusterIP", True),
    ("synapse-postgres", None, True),
    ("synapse-redis", "LoadBalancer", False),
    ("synapse-postgres", "NodePort", False),
    ("synapse-proxy", "LoadBalancer", True),
])
def test_postgres_and_redis_services_are_cluster_ip(name: str, kind: str | None, ok: bool) -> None:
    spec = {"type": kind} if kind else {}
    args = Args(rules.K8S_SERVICE, {"metadata": {"name": name}, "spec": spec})
    assert (violations(rules.database_and_redis_private, args) == []) is ok


# ---------------------------------------------------------------- images


@pytest.mark.parametrize(("image", "ok"), [
    ("matrixdotorg/synapse:v1.163.2", True),
    ("registry.example.com:5000/synapse:v1", True),
    ("postgres@sha256:" + "a" * 64, True),
    ("matrixdotorg/synapse", False),
    ("registry.example.com:5000/synapse", False),
    ("nginx:latest", False),
    ("nginx:stable", False),
])
def test_images_pinned(image: str, ok: bool) -> None:
    docker = Args(rules.DOCKER_IMAGE, {"name": image})
    pod = {"containers": [{"name": "c", "image": image}]}
    k8s = Args("kubernetes:apps/v1:Deployment", {"spec": {"template": {"spec": pod}}})
    init = Args(rules.K8S_STATEFULSET, {"spec": {"template": {"spec": {
        "initContainers": [{"name": "i", "image": image}], "containers": [{"name": "c", "image": "x:1"}]}}}})
    for args in (docker, k8s, init):
        assert (violations(rules.images_pinned, args) == []) is ok


def test_images_rule_handles_missing_props() -> None:
    assert len(violations(rules.images_pinned, Args(rules.DOCKER_IMAGE, {}))) == 1
    assert violations(rules.images_pinned, Args("kubernetes:apps/v1:Deployment", {})) == []


# ---------------------------------------------------------------- protection in prod


CLAIMS = {"spec": {"volumeClaimTemplates": [{"metadata": {"name": "data"}}]}}


@pytest.mark.parametrize(("typ", "props"), [(t, CLAIMS) for t in sorted(rules.STATEFUL_TYPES)])
def test_stateful_resources_protected_in_prod(typ: str, props: dict[str, Any]) -> None:
    rule = rules.stateful_protected_in_prod
    assert len(violations(rule, Args(typ, props, stack="prod"))) == 1
    assert violations(rule, Args(typ, props, stack="prod", opts=Opts(protect=True))) == []
    assert violations(rule, Args(typ, props, stack="staging")) == []
    assert violations(rule, Args(typ, props, stack="pr-12")) == []
    # The policy config can name the stack (e.g. when URNs are not at hand).
    assert len(violations(rule, Args(typ, props, config={"stack": "prod"}))) == 1


def test_a_statefulset_without_claims_holds_no_data() -> None:
    shared = {"spec": {"template": {"spec": {"volumes": [{"persistentVolumeClaim": {"claimName": "media"}}]}}}}
    assert violations(rules.stateful_protected_in_prod, Args(rules.K8S_STATEFULSET, shared, stack="prod")) == []


def test_protection_rule_ignores_stateless_resources() -> None:
    assert violations(rules.stateful_protected_in_prod, Args(rules.DOCKER_CONTAINER, {}, stack="prod")) == []


# ---------------------------------------------------------------- against the real program


def _args_of(resource: offline.Registered, stack: str) -> Args:
    return Args(resource.type, resource.plain_inputs(), name=resource.name, stack=stack,
                opts=Opts(protect=resource.protect))


@pytest.mark.parametrize("stack", sorted(p.name[7:-5] for p in Path(__file__).resolve().parents[2].glob("Pulumi.*.yaml")))
def test_every_committed_stack_passes_every_rule(stack: str) -> None:
    raw, secret = __import__("render.__main__", fromlist=["stack_config"]).stack_config(stack)
    run = offline.run(raw, stack=stack, secret_keys=secret)
    found = [f"{rule.name}: {message}" for resource in run.resources for rule in rules.RULES
             for message in violations(rule.validate, _args_of(resource, stack))]
    assert found == []


def test_the_program_trips_the_rules_when_it_should(program: Any) -> None:
    raw = stack_raw("dev")
    raw["synapse"] = {**raw.get("synapse", {}), "registration": {"mode": "closed"}}
    run = program(raw, stack="prod")
    volumes = run.of_type(rules.DOCKER_VOLUME)
    assert volumes
    found = [m for v in volumes for m in violations(rules.stateful_protected_in_prod, _args_of(v, "prod"))]
    assert len(found) == len(volumes)  # dev's config does not set protect
