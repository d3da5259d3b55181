"""Every service keeps to the facts of its pinned image (config/images.py): its health check calls
only programs the image ships, it keeps every capability a binary of the image carries, and it
runs as the image's own user."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from components import image_facts
from components.platform.spec import HealthCheck, Service
from config import images
from render.__main__ import stack_config
from tests.conftest import ROOT

PINS = {name: getattr(images, name) for name in (
    "SYNAPSE", "POSTGRES", "REDIS", "NGINX", "ELEMENT_CALL", "LK_JWT_SERVICE", "LIVEKIT", "NTFY",
    "ELEMENT_WEB", "COTURN", "CERTBOT", "RESTIC", "MAS")}

# Everything on, on a Docker host with ACME (the certbot container) and coturn.
EVERYTHING: dict[str, Any] = {
    "server_name": "example.org",
    "tls": {"mode": "acme", "acme_email": "ops@example.org"},
    "target": {"kind": "docker", "hosts": [{"name": "one", "url": "ssh://deploy@one.example.org"}]},
    "synapse": {"workers": {"preset": "seed-000"}},
    "coturn": {"enabled": True, "external_ip": "192.0.2.7"},
    "element_call": {"livekit": {"turn": True}},
}


def _stack(name: str) -> tuple[dict[str, Any], tuple[str, ...]]:
    raw, secret = stack_config(name, ROOT)
    return raw, tuple(secret)


STACKS: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
    "everything-docker": (EVERYTHING, ()),
    "dev": _stack("dev"),
    "staging": _stack("staging"),
    "prod": _stack("prod"),
}


@pytest.mark.parametrize("name", sorted(PINS))
def test_every_pin_has_facts_and_every_fact_a_source(name: str) -> None:
    pin = PINS[name]
    facts = images.facts_for(pin)
    assert facts.image == pin
    assert set(facts.sources) == set(images.FACTS), f"{pin}: facts without a source"
    for fact, source in facts.sources.items():
        assert source.repo.count("/") == 1 and source.path and source.ref, f"{pin}.{fact}: {source}"
    if facts.health_path is not None:
        assert facts.health_path.startswith("/") and facts.port is not None


def test_facts_are_keyed_by_repository_so_a_custom_tag_keeps_them() -> None:
    assert images.facts_for("valkey/valkey:8.1.9-alpine") is images.facts_for(images.REDIS)
    assert images.facts_for("ghcr.io/element-hq/lk-jwt-service@sha256:" + "0" * 64).image == images.LK_JWT_SERVICE
    assert images.repository("registry.example:5000/team/app:1.2") == "registry.example:5000/team/app"
    with pytest.raises(KeyError, match="no image facts"):
        images.facts_for("example/unknown:1.0")


@pytest.mark.parametrize("stack", sorted(STACKS))
def test_services_keep_to_their_image_facts(program: Any, stack: str) -> None:
    raw, secret_keys = STACKS[stack]
    run = program(raw, secret_keys=secret_keys)
    services = [entry["service"] for entry in run.services]
    assert len(services) >= 5
    problems = [p for service in services for p in image_facts.violations(service)]
    assert problems == []


def test_redis_runs_as_the_alpine_images_valkey_user(program: Any) -> None:
    # The Alpine image's valkey group is 1000: gid 999 was taken by the base image (ping).
    run = program(EVERYTHING)
    redis = next(e["service"] for e in run.services if e["service"].name == "synapse-redis")
    assert redis.user == "999:1000" == images.facts_for(images.REDIS).user
    # Valkey's programs, which the image ships (its Dockerfile links only valkey-* names).
    assert redis.args[0] == "valkey-server" and "valkey-cli" in redis.health.command[-1]
    # Its entrypoint exits unless the WORKDIR is writable by that user: the read-only root keeps /data.
    assert redis.read_only_root and redis.writable_paths == ("/data",)


def test_an_unwritable_workdir_the_entrypoint_needs_is_caught() -> None:
    service = _service(images.REDIS, user="999:1000", read_only_root=True)
    assert image_facts.violations(service) == [
        f"probe: {images.REDIS}'s entrypoint refuses to start unless /data is writable by its user, "
        "and the root is read-only without it among the writable paths"]
    assert image_facts.violations(dataclasses.replace(service, writable_paths=("/data",))) == []


def test_coturn_keeps_the_capability_turnserver_carries_on_both_targets(program: Any) -> None:
    assert images.facts_for(images.COTURN).file_capabilities == {"/usr/bin/turnserver": ("NET_BIND_SERVICE",)}
    run = program(EVERYTHING)
    container = next(r for r in run.of_type("docker:index/container:Container") if r.name == "coturn").plain_inputs()
    assert container["capabilities"] == {"drops": ["ALL"], "adds": ["NET_BIND_SERVICE"]}
    assert container["user"] == "65534:65534"
    k8s = program({**EVERYTHING, "target": {"kind": "kubernetes", "cert_manager_issuer": "letsencrypt"}})
    deployment = next(r for r in k8s.of_type("kubernetes:apps/v1:Deployment") if r.name == "deployment-coturn")
    security = deployment.plain_inputs()["spec"]["template"]["spec"]["containers"][0]["securityContext"]
    assert security["capabilities"] == {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}


# ---------------------------------------------------------------- the checks catch what they should


def _service(image: str, **changes: Any) -> Service:
    return dataclasses.replace(Service(name="probe", component="test", image=image), **changes)


def test_a_health_check_calling_a_program_the_image_lacks_is_caught() -> None:
    # lk-jwt-service is FROM scratch: no shell, no wget, no curl.
    wget = _service(images.LK_JWT_SERVICE, health=HealthCheck(("wget", "-qO-", "http://127.0.0.1:8080/healthz")))
    assert image_facts.violations(wget) == [
        f"probe: its health check calls wget, which {images.LK_JWT_SERVICE} does not ship"]
    # Synapse's image has curl but no wget.
    assert image_facts.violations(_service(images.SYNAPSE, health=HealthCheck(("wget", "-q", "x")))) != []
    # Inside `sh -c`, every command of the pipeline counts.
    script = _service(images.REDIS, user="999:1000",
                      health=HealthCheck(("sh", "-c", "valkey-cli ping | jq -e . && curl -f x")))
    assert [p.split(" calls ")[1].split(",")[0] for p in image_facts.violations(script)] == ["jq", "curl"]


def test_dropping_a_capability_a_binary_carries_is_caught() -> None:
    dropped = _service(images.COTURN, user="65534:65534")
    assert image_facts.violations(dropped) == [
        f"probe: drops NET_BIND_SERVICE, which a binary of {images.COTURN} carries (the kernel refuses to exec it)"]
    kept = _service(images.COTURN, user="65534:65534", capabilities_add=("NET_BIND_SERVICE",))
    assert image_facts.violations(kept) == []


def test_a_user_other_than_the_images_is_caught() -> None:
    assert image_facts.violations(_service(images.REDIS, user="999:999")) == [
        f"probe: runs as 999:999, but {images.REDIS}'s user is 999:1000"]
    # An entrypoint that steps down from root needs the capabilities to do so.
    assert image_facts.violations(_service(images.POSTGRES)) != []
    assert image_facts.violations(_service(images.POSTGRES, drop_capabilities=False)) == []


def test_programs_called_reads_shell_scripts() -> None:
    called = image_facts.programs_called(("sh", "-c", 'x="$(sed -n 1p f)"; redis-cli -a "$x" ping | grep -q PONG'))
    assert called == ["sh", "sed", "redis-cli", "grep"]
    assert image_facts.programs_called(("/lk-jwt-service-healthcheck",)) == ["/lk-jwt-service-healthcheck"]
    assert image_facts.programs_called(()) == []


def test_http_check_uses_what_the_image_has() -> None:
    assert image_facts.http_check(images.SYNAPSE, 8080).command == ("curl", "-fsS", "http://127.0.0.1:8080/health")
    assert image_facts.http_check(images.NTFY, 8080).command == ("wget", "-qO-", "http://127.0.0.1:8080/v1/health")
    # Nothing to run in a FROM scratch image without a checker of its own: Kubernetes still probes.
    jwt = image_facts.http_check(images.LK_JWT_SERVICE)
    assert (jwt.command, jwt.http_path, jwt.http_port) == ((), "/healthz", 8080)


def test_config_files_land_where_their_images_read_them(program: Any) -> None:
    run = program(EVERYTHING)
    paths = {e["service"].name: {f["path"] for f in e["files"]} for e in run.services}
    for service, pin in (("element-call", images.ELEMENT_CALL), ("element-web", images.ELEMENT_WEB),
                         ("ntfy", images.NTFY), ("coturn", images.COTURN)):
        assert images.config_path(pin) in paths[service], service
    # The proxy's nginx.conf is live: beside the image's, in a directory of its own, and nginx
    # runs from a tested copy of it (`nginx -c`), never from the image's default path.
    nginx_dir = images.config_path(images.NGINX).rsplit("/", 1)[0]
    assert f"{nginx_dir}/live/nginx.conf" in paths["synapse-proxy"]
    run_script = next(f["content"] for e in run.services if e["service"].name == "synapse-proxy"
                      for f in e["files"] if f["path"].endswith("proxy-run.sh"))
    assert "exec nginx -c " in run_script
    with pytest.raises(ValueError, match="no config path"):
        images.config_path(images.LK_JWT_SERVICE)
