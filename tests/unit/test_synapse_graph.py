"""The Synapse cluster's resource graph on the Docker target, under Pulumi's mocks.

Two runs with slightly different configs are compared container by container: a change must
touch exactly the containers that read what changed.
"""

from __future__ import annotations

import copy
import json
import re
from collections import Counter
from typing import Any

import pytest

from components.edge.render import PROXY_RUN
from render import offline
from tests.conftest import load_yaml, stack_raw

CONTAINER = "docker:index/container:Container"
SYNAPSE_CONF = "/conf/homeserver.yaml"
NGINX_CONF = "/etc/nginx/live/nginx.conf"
ROLE_LABEL = "matrix-stack.synapse-role"


def dev(**counts: int) -> dict[str, Any]:
    raw = stack_raw("dev")
    raw = copy.deepcopy(raw)
    assert raw["target"]["kind"] == "docker"
    raw["synapse"]["workers"]["counts"].update(counts)
    return raw


def containers(run: offline.Run) -> dict[str, dict[str, Any]]:
    """Every container of the run (all components) but the file holders, by name, each with the
    uploads of its holder (the files it reads) as its `uploads`."""
    return {r.name: {**r.plain_inputs(), "uploads": run.uploads(r.name)} for r in run.of_type(CONTAINER)
            if not r.name.endswith("-files")}


def labels(inputs: dict[str, Any]) -> dict[str, str]:
    return {entry["label"]: entry["value"] for entry in inputs.get("labels") or []}


def synapse_containers(run: offline.Run) -> dict[str, dict[str, Any]]:
    """The Synapse cluster's containers (other components add their own)."""
    return {name: inputs for name, inputs in containers(run).items()
            if labels(inputs).get("matrix-stack.component") == "synapse"}


def by_key(run: offline.Run) -> dict[tuple[str, str], Any]:
    return {(r.type, r.name): r for r in run.resources}


def uploads(inputs: dict[str, Any]) -> dict[str, str]:
    return {u["file"]: u["content"] for u in inputs.get("uploads") or []}


def resource_keys(run: offline.Run) -> set[tuple[str, str]]:
    return {(r.type, r.name) for r in run.resources}


def synapse_processes(run: offline.Run) -> list[str]:
    return list(run.deployment.outputs["synapse_processes"])


def roles(run: offline.Run) -> Counter[str]:
    found: Counter[str] = Counter()
    for inputs in synapse_containers(run).values():
        role = labels(inputs).get(ROLE_LABEL)
        if role:
            found[role] += 1
    return found


@pytest.fixture(scope="module")
def base_run() -> offline.Run:
    return offline.run(dev(), stack="test")


def test_adding_a_generic_worker_adds_its_container_and_changes_only_the_proxy(base_run: offline.Run) -> None:
    bigger = offline.run(dev(generic=2), stack="test")
    # The worker; the Synapse processes' shared config check also checks its file now.
    assert resource_keys(bigger) - resource_keys(base_run) == {(CONTAINER, "synapse-generic-2"),
                                                               (CONTAINER, "synapse-generic-2-files")}
    assert resource_keys(base_run) - resource_keys(bigger) == set()

    before, after = containers(base_run), containers(bigger)

    def inputs(c: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in c.items() if k != "uploads"}  # the uploads are its holders'
    changed = sorted(name for name in before if inputs(before[name]) != inputs(after[name]))
    # The check (a one-shot, renewed beside the old one) and the publisher of the proxy's live
    # nginx.conf (with their holders): never the proxy's own container (it reloads).
    assert changed == ["synapse-check-config", "synapse-proxy-live-publish"]
    check_before, check_after = before["synapse-check-config"], after["synapse-check-config"]
    assert check_before["name"] != check_after["name"]
    assert "synapse-generic-2" in check_after["entrypoints"][2] and "synapse-generic-2" not in check_before["entrypoints"][2]
    assert set(uploads(check_after)) - set(uploads(check_before)) == {"/conf/workers/synapse-generic-2.yaml"}
    # The live holder: only nginx.conf, and it now routes to the new worker.
    live_before = {u["file"]: u["content"] for u in base_run.uploads("synapse-proxy-live")}
    live_after = {u["file"]: u["content"] for u in bigger.uploads("synapse-proxy-live")}
    assert set(live_before) == set(live_after) == {NGINX_CONF}
    assert "synapse-generic-2:" not in live_before[NGINX_CONF]
    assert "server synapse-generic-2:9102 " in live_after[NGINX_CONF]
    # The run script is the same: the names it watches come from nginx.conf.
    assert uploads(after["synapse-proxy"])[PROXY_RUN] == uploads(before["synapse-proxy"])[PROXY_RUN]
    # Non-container resources (secrets, images, volumes, network) are untouched.
    after_resources = by_key(bigger)
    for key, r in by_key(base_run).items():
        if r.type != CONTAINER:
            assert after_resources[key].plain_inputs() == r.plain_inputs(), key
    # The new worker loads the same shared file as everyone else.
    new = uploads(after["synapse-generic-2"])
    assert new[SYNAPSE_CONF] == uploads(after["synapse-main"])[SYNAPSE_CONF]
    assert load_yaml(new["/conf/workers/synapse-generic-2.yaml"])["worker_name"] == "synapse-generic-2"


def test_adding_an_event_persister_changes_the_shared_file_and_every_synapse_container(
    base_run: offline.Run,
) -> None:
    bigger = offline.run(dev(event_persister=2), stack="test")
    assert resource_keys(bigger) - resource_keys(base_run) == {(CONTAINER, "synapse-event-persister-2"),
                                                               (CONTAINER, "synapse-event-persister-2-files")}
    before, after = containers(base_run), containers(bigger)
    processes = set(synapse_processes(base_run))
    assert "synapse-main" in processes and len(processes) == 5
    for name in processes:
        old, new = uploads(before[name])[SYNAPSE_CONF], uploads(after[name])[SYNAPSE_CONF]
        assert old != new, name
        assert before[name] != after[name], name
        shared = load_yaml(new)
        assert shared["stream_writers"]["events"] == ["synapse-event-persister-1", "synapse-event-persister-2"]
        assert "synapse-event-persister-2" in shared["instance_map"]
    # One shared file: byte-identical in every Synapse container of a run.
    assert len({uploads(after[name])[SYNAPSE_CONF] for name in synapse_processes(bigger)}) == 1
    # Persisters serve no HTTP route: the proxy, PostgreSQL and Redis are untouched.
    for name in ("synapse-proxy", "synapse-postgres", "synapse-redis"):
        assert before[name] == after[name], name


def test_a_monolith_has_no_redis_and_no_worker_containers(program: Any) -> None:
    run = program({"server_name": "localhost", "target": {"kind": "docker", "http_port": 8080}})
    assert set(synapse_containers(run)) == {"synapse-main", "synapse-postgres", "synapse-pgbouncer", "synapse-proxy"}
    assert not any("redis" in name or "worker" in name for name in containers(run))
    assert synapse_processes(run) == ["synapse-main"]
    assert not any(r.type == "docker:index/remoteImage:RemoteImage" and "redis" in r.name for r in run.resources)
    shared = load_yaml(uploads(containers(run)["synapse-main"])[SYNAPSE_CONF])
    for key in ("redis", "instance_map", "stream_writers", "federation_sender_instances"):
        assert key not in shared
    names = [res["names"] for listener in shared["listeners"] if listener["type"] == "http"
             for res in listener["resources"]]
    assert names == [["client", "federation", "media"]]
    assert roles(run) == Counter({"main": 1})


def test_the_seed_000_preset_builds_its_topology(program: Any) -> None:
    run = program({"server_name": "localhost", "target": {"kind": "docker"},
                   "synapse": {"workers": {"preset": "seed-000"}}})
    assert roles(run) == Counter({"main": 1, "generic": 6, "federation_reader": 3, "federation_sender": 3,
                                  "event_persister": 2, "media_repository": 3, "pusher": 1, "typing": 1,
                                  "receipts": 1, "to_device": 1})
    names = set(synapse_containers(run))
    assert {f"synapse-generic-{i}" for i in range(1, 7)} <= names
    assert "synapse-generic-7" not in names and "synapse-typing-2" not in names
    assert {"synapse-redis", "synapse-postgres", "synapse-proxy"} <= names
    assert len(names) == 1 + 21 + 4  # main, the workers, proxy, redis, postgres and its pooler
    shared = load_yaml(uploads(containers(run)["synapse-main"])[SYNAPSE_CONF])
    assert shared["federation_sender_instances"] == [f"synapse-federation-sender-{i}" for i in (1, 2, 3)]
    assert shared["pusher_instances"] == ["synapse-pusher-1"]
    assert shared["stream_writers"]["typing"] == ["synapse-typing-1"]
    assert shared["stream_writers"]["receipts"] == ["synapse-receipts-1"]
    assert shared["stream_writers"]["to_device"] == ["synapse-to-device-1"]


@pytest.mark.parametrize("preset", ["monolith", "seed-000"])
def test_every_fixed_name_replaces_by_delete_first_restarts_and_rotates_logs(program: Any, preset: str) -> None:
    run = program({"server_name": "localhost", "target": {"kind": "docker"},
                   "synapse": {"workers": {"preset": preset}}})
    found = run.of_type(CONTAINER)
    assert len(found) >= 3
    for r in found:
        inputs = r.plain_inputs()
        # A fixed name can exist once: deleted first. A name carrying a digest of the inputs (file
        # holders, the configuration check, interchangeable workers) is renewed new first.
        renamed = inputs["name"] not in (r.name, f"matrix-stack-{r.name}")
        assert r.delete_before_replace is not renamed, r.name
        if inputs.get("mustRun") is False:  # one-shot (a volume's owner): runs once, never restarts
            assert inputs.get("restart") == "no", r.name
        else:
            assert inputs.get("restart") in ("unless-stopped", "always"), r.name
        assert inputs.get("logDriver") == "json-file", r.name
        opts = inputs.get("logOpts") or {}
        assert opts.get("max-size") and opts.get("max-file"), r.name
        assert r.protect is False  # dev stacks never protect containers


def _secret_values(run: offline.Run, extra: tuple[str, ...]) -> set[str]:
    """Every secret the render produced: secret env values and tokens of secret files."""
    values = set(extra)
    token = re.compile(r"[A-Za-z0-9+/=]{16,}")
    for item in run.services:
        for _key, (value, secret) in item["env"].items():
            if secret:
                values.add(str(value))
        for f in item["files"]:
            if f["secret"]:
                values.update(token.findall(str(f["content"])))
    return values


def test_no_secret_value_appears_in_any_non_secret_file(program: Any) -> None:
    smtp_password = offline.stand_in("config:smtp_password", 32)
    ldap_password = offline.stand_in("config:ldap_bind_password", 32)
    raw = dev(typing=1)
    raw["synapse"]["smtp"] = {"host": "smtp.example.org", "user": "matrix", "from_address": "m@example.org"}
    raw["synapse"]["ldap"] = {"uri": "ldaps://ldap.example.org", "base": "dc=example,dc=org",
                              "bind_dn": "cn=synapse,dc=example,dc=org"}
    raw["smtp_password"] = smtp_password
    raw["ldap_bind_password"] = ldap_password
    run = program(raw, secret_keys=("smtp_password", "ldap_bind_password"))
    secrets = _secret_values(run, (smtp_password, ldap_password))
    pg = {f["content"] for item in run.services for f in item["files"]
          if f["path"] == "/secrets/postgres-password"}
    assert len(pg) == 1 and pg <= secrets  # the collection found the generated secrets
    email = [f for item in run.services for f in item["files"] if f["path"] == "/secrets/email.yaml"]
    assert email and all(smtp_password in f["content"] and f["secret"] for f in email)

    checked = 0
    for item in run.services:
        for f in item["files"]:
            if f["secret"]:
                continue
            checked += 1
            for value in secrets:
                assert value not in str(f["content"]), (item["service"].name, f["path"])
        for key, (value, secret) in item["env"].items():
            if not secret:
                assert not any(s in str(value) for s in secrets), (item["service"].name, key)
    assert checked >= 10
    # What the engine would store: every secret masked in every resource's inputs.
    masked = json.dumps([r.masked() for r in run.resources], sort_keys=True, default=str)
    for value in secrets:
        assert value not in masked


def test_the_proxy_never_restarts_with_its_upstreams_and_media_waits_for_its_volume_owner(program: Any) -> None:
    # The proxy follows its upstreams' addresses itself (its run script's address watch): a
    # replaced Synapse container never replaces it. Its live nginx.conf is published once the
    # services it routes to are healthy (they are `wait`ed for), after the proxy exists.
    run = program({"server_name": "localhost", "target": {"kind": "docker"},
                   "synapse": {"workers": {"counts": {"generic": 1, "media_repository": 1}}}})
    containers = {r.name: r for r in run.of_type(CONTAINER)}
    proxy, publish = containers["synapse-proxy"], containers["synapse-proxy-live-publish"]
    assert not proxy.has_replacement_trigger
    for upstream in ("synapse-main", "synapse-generic-1", "synapse-media-repository-1"):
        assert containers[upstream].urn in publish.dependencies, upstream
        assert containers[upstream].plain_inputs()["wait"] is True, upstream
        assert upstream == "synapse-main" or containers[upstream].urn not in proxy.dependencies, upstream
    assert proxy.urn in publish.dependencies and "wait" not in proxy.plain_inputs()
    assert containers["synapse-postgres"].urn not in proxy.dependencies
    # Only the generic worker is replaced new first, under a name of its revision.
    assert {n for n, c in containers.items() if not c.delete_before_replace
            and not n.endswith("-files") and n != "synapse-check-config"} == {"synapse-generic-1"}
    assert containers["synapse-generic-1"].plain_inputs()["name"].startswith("synapse-generic-1-")
    assert containers["synapse-generic-1"].plain_inputs()["networksAdvanced"][0]["aliases"] == ["synapse-generic-1"]
    assert [u for u in ("synapse-proxy", "synapse-generic-1", "synapse-pgbouncer")
            if containers[u].urn in containers["synapse-main"].dependencies] == ["synapse-pgbouncer"]
    # A fresh named volume is root's; Synapse runs as 991, so a one-shot container hands it over.
    owner = containers["synapse-media-owner"]
    assert owner.plain_inputs()["entrypoints"] == ["chown", "991:991", "/media_store"]
    assert owner.urn in containers["synapse-media-repository-1"].dependencies
    assert owner.urn not in containers["synapse-main"].dependencies


def test_the_checks_name_exactly_the_services_the_stack_runs(program: Any) -> None:
    """The placement rule reads each part's services() with stand-in secrets: the same services,
    by name, that the build hands the target."""
    from components.checks import STAND_IN, view_of

    for counts in ({}, {"generic": 2, "media_repository": 1}):
        raw = {"server_name": "localhost", "synapse": {"workers": {"counts": counts}}, "ntfy": {"enabled": True}}
        run = program(raw)
        built = sorted(s["service"].name for s in run.services)
        view, parts = view_of(run.cfg)
        checked = sorted(s.name for part in parts
                         for s in part.services(run.cfg, view, dict.fromkeys(part.secret_names(run.cfg), STAND_IN)))
        assert checked == built
