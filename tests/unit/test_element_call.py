"""Element Call under mocks: LiveKit's files, lk-jwt-service's env, the Synapse keys (checked by
Synapse's own config loader) and a LiveKit token minted from the generated key pair."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from livekit import api

from components.element_call import render as ec
from tests.conftest import ROOT

BASE: dict[str, Any] = {
    "server_name": "example.org",
    "tls": {"mode": "acme", "acme_email": "ops@example.org"},
    "target": {"kind": "docker", "hosts": [{"name": "one", "url": "ssh://deploy@one.example.org"}]},
}


def _service(run: Any, name: str) -> dict[str, Any]:
    return next(s for s in run.services if s["service"].name == name)


def _file(run: Any, service: str, path: str) -> str:
    return next(f["content"] for f in _service(run, service)["files"] if f["path"] == path)


def test_livekit_yaml_parses_refuses_auto_create_and_keeps_keys_out(program: Any) -> None:
    run = program(BASE)
    conf = yaml.safe_load(_file(run, "livekit", ec.LIVEKIT_CONFIG))
    assert conf["room"]["auto_create"] is False
    assert conf["port"] == 7880
    assert conf["rtc"]["tcp_port"] == 7881
    assert (conf["rtc"]["port_range_start"], conf["rtc"]["port_range_end"]) == (50100, 50200)
    assert conf["rtc"]["use_external_ip"] is True  # no external_ip: STUN discovery
    assert conf["key_file"] == ec.LIVEKIT_KEYS
    assert "keys" not in conf and "turn" not in conf
    keys = next(f for f in _service(run, "livekit")["files"] if f["path"] == ec.LIVEKIT_KEYS)
    assert keys["secret"] and keys["mode"] & 0o077 == 0  # LiveKit refuses a key file others can read
    service = _service(run, "livekit")["service"]
    assert [(p.port, p.protocol, p.public) for p in service.ports] == [(7880, "tcp", False), (7881, "tcp", True)]
    assert [(r.start, r.end, r.protocol) for r in service.port_ranges] == [(50100, 50200, "udp")]


def test_livekit_external_ip_and_embedded_turn(program: Any) -> None:
    raw = {**BASE, "element_call": {"livekit": {"external_ip": "198.51.100.4", "turn": True}}}
    run = program(raw)
    conf = yaml.safe_load(_file(run, "livekit", ec.LIVEKIT_CONFIG))
    assert conf["rtc"]["node_ip"] == "198.51.100.4" and conf["rtc"]["use_external_ip"] is False
    assert conf["turn"]["enabled"] is True and conf["turn"]["domain"] == "livekit.example.org"
    service = _service(run, "livekit")["service"]
    assert (3479, "udp", True) in [(p.port, p.protocol, p.public) for p in service.ports]
    assert ("turn-relay", 30000, 30020) in [(r.name, r.start, r.end) for r in service.port_ranges]


def test_jwt_service_env_and_a_token_from_the_generated_keys_verifies(program: Any) -> None:
    run = program(BASE)
    env = _service(run, "lk-jwt-service")["env"]
    assert env["LIVEKIT_URL"] == ("wss://livekit.example.org", False)
    assert env["LIVEKIT_FULL_ACCESS_HOMESERVERS"] == ("example.org", False)
    assert "LIVEKIT_JWT_BIND" not in env  # its default port, which its health checker assumes too
    key, key_secret = env["LIVEKIT_KEY"]
    assert not key_secret  # the key name is every token's `iss`: public
    assert env["LIVEKIT_SECRET_FROM_FILE"] == (ec.JWT_SECRET_FILE, False)
    secret = _file(run, "lk-jwt-service", ec.JWT_SECRET_FILE)
    # LiveKit reads the same pair from its key file.
    assert yaml.safe_load(_file(run, "livekit", ec.LIVEKIT_KEYS)) == {key: secret}
    token = (api.AccessToken(key, secret).with_identity("@alice:example.org")
             .with_grants(api.VideoGrants(room_join=True, room="!room:example.org")).to_jwt())
    claims = api.TokenVerifier(key, secret).verify(token)
    assert claims.identity == "@alice:example.org" and claims.video.room == "!room:example.org"


def test_web_app_config_points_at_the_homeserver_and_the_jwt_service(program: Any) -> None:
    run = program({**BASE, "hostnames": {"matrix": "matrix.example.org", "jwt": "rtc.example.org"}})
    conf = json.loads(_file(run, "element-call", ec.WEB_CONFIG))
    assert conf["default_server_config"]["m.homeserver"] == {
        "base_url": "https://matrix.example.org", "server_name": "example.org"}
    assert conf["livekit"]["livekit_service_url"] == "https://rtc.example.org"


def test_sites_well_known_and_homeserver_keys(program: Any) -> None:
    run = program(BASE)
    nginx = _file(run, "synapse-proxy", "/etc/nginx/live/nginx.conf")
    for host in ("call.example.org", "jwt.example.org", "livekit.example.org"):
        assert f"server_name {host};" in nginx
    livekit_server = nginx.split("server_name livekit.example.org;")[1].split("server_name")[0]
    assert "proxy_set_header Upgrade $http_upgrade;" in livekit_server
    assert '"org.matrix.msc4143.rtc_foci":[{"livekit_service_url":"https://jwt.example.org","type":"livekit"}]' in nginx
    hs = yaml.safe_load(_file(run, "synapse-main", "/conf/homeserver.yaml"))
    assert hs["experimental_features"] == {"msc4222_enabled": True, "msc4143_enabled": True}
    assert hs["matrix_rtc"] == {"transports": [{"type": "livekit", "livekit_service_url": "https://jwt.example.org"}]}
    assert hs["max_event_delay_duration"] == "24h"
    assert hs["rc_message"] == {"per_second": 0.5, "burst_count": 30}
    assert hs["rc_delayed_event_mgmt"] == {"per_second": 1, "burst_count": 20}
    outputs = run.deployment.outputs
    assert outputs["element_call_url"] == "https://call.example.org"
    assert outputs["livekit_service_url"] == "https://jwt.example.org"


def test_an_explicit_message_rate_limit_wins(program: Any) -> None:
    raw = {**BASE, "synapse": {"rate_limits": {"message": {"per_second": 5, "burst_count": 50}}}}
    hs = yaml.safe_load(_file(program(raw), "synapse-main", "/conf/homeserver.yaml"))
    assert hs["rc_message"] == {"per_second": 5, "burst_count": 50}


def test_element_call_off_adds_nothing(program: Any) -> None:
    run = program({**BASE, "element_call": {"enabled": False}})
    names = {s["service"].name for s in run.services}
    assert not names & {"livekit", "lk-jwt-service", "element-call"}
    hs = yaml.safe_load(_file(run, "synapse-main", "/conf/homeserver.yaml"))
    assert "matrix_rtc" not in hs and "experimental_features" not in hs


def test_synapse_accepts_the_contributed_keys(program: Any) -> None:
    """Synapse 1.163's own loader on the rendered homeserver.yaml with Element Call, coturn and ntfy."""
    from tests.integration.cluster import materialize, synapse_python

    raw = {**BASE, "coturn": {"enabled": True, "external_ip": "198.51.100.9"},
           "ntfy": {"private_address": "10.0.0.5"}}
    run = program(raw)
    synapse_only = dataclasses.replace(run, services=[s for s in run.services if s["service"].component == "synapse"])
    base = Path(tempfile.mkdtemp(prefix="ec-synapse-config-"))
    try:
        reloc = materialize(synapse_only, base)
        main = _service(run, "synapse-main")
        hs = yaml.safe_load(Path(reloc.path("/conf/homeserver.yaml")).read_text())
        assert hs["turn_uris"] and hs["ip_range_whitelist"] == ["10.0.0.5/32"]
        env = dict(os.environ) | {k: v for k, (v, _s) in main["env"].items()}
        done = subprocess.run([synapse_python(), "-m", "synapse.config", *reloc.args(main["service"].args)],
                              capture_output=True, text=True, env=env, cwd=base, timeout=120)
        assert done.returncode == 0 and "Config parses OK!" in done.stdout, done.stdout + done.stderr
    finally:
        shutil.rmtree(base, ignore_errors=True)


assert ROOT.is_dir()


def test_sfu_on_another_docker_host_is_reached_through_a_published_port(program: Any) -> None:
    raw = {**BASE, "target": {"kind": "docker", "hosts": [
        {"name": "one", "url": "ssh://deploy@one.example.org", "address": "10.0.0.1"},
        {"name": "media", "url": "ssh://deploy@media.example.org", "address": "10.0.0.2",
         "services": ["livekit", "lk-jwt-service"]},
    ]}}
    run = program(raw)
    nginx = _file(run, "synapse-proxy", "/etc/nginx/live/nginx.conf")
    assert "proxy_pass http://10.0.0.2:7880;" in nginx and "proxy_pass http://10.0.0.2:8080;" in nginx
    livekit = next(r for r in run.of_type("docker:index/container:Container") if r.name == "livekit")
    published = {(p["internal"], p.get("ip")) for p in livekit.plain_inputs()["ports"]}
    assert (7880, "10.0.0.2") in published  # private port, published on the host's own address only


def test_create_admin_command_per_target() -> None:
    import stack
    from components.platform.targets import target_of
    from components.synapse import create_admin_command

    local = stack.parse({"server_name": "localhost", "target": {"kind": "docker", "http_port": 8080}})
    assert create_admin_command(local, target_of(local)) == (
        "docker exec -it synapse-main register_new_matrix_user -c /conf/homeserver.yaml -a -u admin "
        "http://localhost:8008")
    remote = stack.parse(BASE)
    assert create_admin_command(remote, target_of(remote)).startswith("DOCKER_HOST=ssh://deploy@one.example.org docker exec -it synapse-main ")
    k8s = stack.parse({"server_name": "example.org", "tls": {"mode": "acme"},
                       "target": {"kind": "kubernetes", "namespace": "chat", "context": "prod",
                                  "cert_manager_issuer": "letsencrypt"}})
    command = create_admin_command(k8s, target_of(k8s))
    assert command.startswith("kubectl --context prod -n chat exec -it ")
    assert command.endswith("-- register_new_matrix_user -c /conf/homeserver.yaml -a -u admin http://localhost:8008")


# ---------------------------------------------------------------- lk-jwt-service against its image


def test_jwt_service_bind_is_what_its_health_check_understands(program: Any) -> None:
    """The image's checker builds http://localhost:%s/healthz from LIVEKIT_JWT_BIND, so ":8080"
    gives localhost::8080. Unset, the server and the checker both use 8080."""
    from config import images

    env = _service(program(BASE), "lk-jwt-service")["env"]
    bind = env.get("LIVEKIT_JWT_BIND", ("", False))[0]
    port = bind or "8080"
    assert port.isdigit(), f"LIVEKIT_JWT_BIND={bind!r}: the health checker would request localhost:{port}"
    assert int(port) == ec.JWT_PORT == images.facts_for(images.LK_JWT_SERVICE).port


def test_jwt_service_wires_delegated_leave_fallback(program: Any) -> None:
    # Without the sanity check a missed SFU webhook leaves a participant in the call for good.
    env = _service(program(BASE), "lk-jwt-service")["env"]
    assert env["LIVEKIT_SANITY_CHECK_INTERVAL_SECONDS"] == (str(ec.SANITY_CHECK_INTERVAL_S), False)
    assert 0 < ec.SANITY_CHECK_INTERVAL_S <= 60


def test_jwt_service_docker_check_only_with_a_checker_the_image_is_known_to_ship(program: Any) -> None:
    """Whether the 0.6.0 image ships /lk-jwt-service-healthcheck could not be confirmed from its
    sources (v0.5.0's has none), and the image has no shell, wget or curl: Docker gets no check
    command of ours (the image's own HEALTHCHECK, if any, then runs), Kubernetes probes /healthz."""
    from config import images

    assert images.facts_for(images.LK_JWT_SERVICE).healthcheck_binary is None
    run = program(BASE)
    container = next(r for r in run.of_type("docker:index/container:Container") if r.name == "lk-jwt-service")
    assert container.plain_inputs().get("healthcheck") is None
    k8s = program({**BASE, "target": {"kind": "kubernetes", "cert_manager_issuer": "letsencrypt"}})
    deployment = next(r for r in k8s.of_type("kubernetes:apps/v1:Deployment") if r.name == "deployment-lk-jwt-service")
    pod = deployment.plain_inputs()["spec"]["template"]["spec"]["containers"][0]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert pod[probe]["httpGet"] == {"path": "/healthz", "port": 8080}


def test_element_call_is_refused_on_a_localhost_stack() -> None:
    import config
    import stack

    with pytest.raises(config.ConfigError) as refused:
        stack.parse({"server_name": "localhost", "element_call": {"enabled": True}})
    message = str(refused.value)
    assert "matrix-stack:element_call.enabled" in message
    assert "federation" in message and "OpenID" in message and "LIVEKIT_URL" in message
    # Unset, it is off on a localhost stack (the dev stack) and on everywhere else.
    assert stack.parse({"server_name": "localhost"}).element_call.enabled is False
    assert stack.parse({"server_name": "call.localhost"}).element_call.enabled is False
    assert stack.parse({"server_name": "example.org", "tls": {"acme_email": "a@example.org"}}).element_call.enabled


def test_the_dev_stack_runs_no_element_call(program: Any, dev_raw: dict[str, Any]) -> None:
    names = {s["service"].name for s in program(dev_raw).services}
    assert not names & {"livekit", "lk-jwt-service", "element-call"}


K8S: dict[str, Any] = {"server_name": "example.org", "tls": {"mode": "acme"},
                       "target": {"kind": "kubernetes", "cert_manager_issuer": "letsencrypt"}}


def test_livekit_webhook_reaches_lk_jwt_service_signed_with_a_key_both_hold(program: Any) -> None:
    run = program(BASE)
    conf = yaml.safe_load(_file(run, "livekit", ec.LIVEKIT_CONFIG))
    # lk-jwt-service's README, "LiveKit SFU Wiring": participant disconnects arrive at /sfu_webhook.
    assert conf["webhook"] == {"api_key": ec.LIVEKIT_API_KEY, "urls": ["http://lk-jwt-service:8080/sfu_webhook"]}
    # LiveKit signs with a key of its key file; lk-jwt-service verifies with the same key.
    assert conf["webhook"]["api_key"] in yaml.safe_load(_file(run, "livekit", ec.LIVEKIT_KEYS))
    env = _service(run, "lk-jwt-service")["env"]
    assert env["LIVEKIT_KEY"][0] == conf["webhook"]["api_key"]
    # Missed webhooks are caught by lk-jwt-service's own periodic check.
    assert int(env["LIVEKIT_SANITY_CHECK_INTERVAL_SECONDS"][0]) > 0


def test_livekit_webhook_crosses_hosts_through_a_published_port(program: Any) -> None:
    raw = {**BASE, "target": {"kind": "docker", "hosts": [
        {"name": "one", "url": "ssh://deploy@one.example.org", "address": "10.0.0.1"},
        {"name": "media", "url": "ssh://deploy@media.example.org", "address": "10.0.0.2", "services": ["livekit"]},
    ]}}
    run = program(raw)
    conf = yaml.safe_load(_file(run, "livekit", ec.LIVEKIT_CONFIG))
    assert conf["webhook"]["urls"] == ["http://10.0.0.1:8080/sfu_webhook"]
    jwt = next(r for r in run.of_type("docker:index/container:Container") if r.name == "lk-jwt-service")
    assert (8080, "10.0.0.1") in {(p["internal"], p.get("ip")) for p in jwt.plain_inputs()["ports"]}


def _admits(policy: dict[str, Any], labels: dict[str, str], port: int) -> bool:
    """Whether a NetworkPolicy admits a pod of this namespace with `labels` on TCP `port`."""
    def selects(selector: dict[str, Any]) -> bool:
        if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
            return False
        for expr in selector.get("matchExpressions", []):
            value = labels.get(expr["key"])
            if expr["operator"] == "In" and value not in expr["values"]:
                return False
            if expr["operator"] == "NotIn" and value in expr["values"]:
                return False
        return True

    for rule in policy["spec"]["ingress"]:
        ports = rule.get("ports")
        if ports and not any(p["port"] <= port <= p.get("endPort", p["port"]) and p["protocol"] == "TCP" for p in ports):
            continue
        peers = rule.get("from")
        if peers is None or any("podSelector" in peer and "namespaceSelector" not in peer
                                and selects(peer["podSelector"]) for peer in peers):
            return True
    return False


def test_kubernetes_network_policy_lets_livekit_and_only_the_proxy_besides_reach_lk_jwt_service(
        program: Any) -> None:
    run = program(K8S)
    policy = run.by_name("networkpolicy-lk-jwt-service").plain_inputs()

    def pod_labels(name: str) -> dict[str, str]:
        [workload] = [r for r in run.resources if r.name in {f"deployment-{name}", f"statefulset-{name}"}]
        return dict(workload.plain_inputs()["spec"]["template"]["metadata"]["labels"])

    assert _admits(policy, pod_labels("livekit"), ec.JWT_PORT)
    assert _admits(policy, pod_labels("synapse-proxy"), ec.JWT_PORT)
    assert not _admits(policy, pod_labels("synapse-main"), ec.JWT_PORT)
