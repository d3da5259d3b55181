"""Configuration checks on Docker hosts: one check container per host for the Synapse processes
that can share it, and the service's own check where they cannot (the program under mocks; the
check script itself under a real sh). The real Synapse validator runs the script in
tests/integration/test_synapse_config.py, and the real engine runs the containers in
tests/integration/test_docker_engine.py."""

from __future__ import annotations

import asyncio
import copy
import re
import subprocess
import typing
from types import SimpleNamespace
from typing import Any

import pulumi
import pytest

from components.platform.contract import Graph
from components.platform.docker import DockerPlatform
from components.platform.docker_checks import check_groups, check_script
from components.platform.spec import File, Service, Volume
from render import offline
from tests.conftest import ROOT, stack_config, stack_raw

CONTAINER = "docker:index/container:Container"
CHECK = "matrix-stack.config-check"
DIGEST = "matrix-stack.file."


def _containers(run: offline.Run) -> dict[str, offline.Registered]:
    return {r.name: r for r in run.of_type(CONTAINER)}


def _labels(inputs: dict[str, Any]) -> dict[str, str]:
    return {item["label"]: item["value"] for item in inputs.get("labels") or []}


def _checks(run: offline.Run) -> list[str]:
    return sorted(n for n, r in _containers(run).items() if _labels(r.plain_inputs()).get("matrix-stack.component")
                  == "config-check")


def _synapse_processes(run: offline.Run) -> list[str]:
    return list(run.deployment.outputs["synapse_processes"])


def _depends_on(run: offline.Run, name: str) -> set[str]:
    """The containers `name` depends on, besides its file holder."""
    by_urn = {r.urn: r.name for r in run.of_type(CONTAINER) if r.name != f"{name}-files"}
    return {by_urn[d] for d in _containers(run)[name].dependencies if d in by_urn}


@pytest.fixture(scope="module")
def dev() -> offline.Run:
    return offline.run(stack_raw("dev"), stack="dev")


def test_dev_checks_every_synapse_process_in_one_container(dev: offline.Run) -> None:
    processes = _synapse_processes(dev)
    assert len(processes) == 5
    assert _checks(dev) == ["synapse-check-config"]
    containers = _containers(dev)
    check = containers["synapse-check-config"].plain_inputs()
    assert check["attach"] is True and check["mustRun"] is False and check["restart"] == "no"
    assert check["networkMode"] == "none"
    entry = check["entrypoints"]
    assert entry[:2] == ["/bin/sh", "-c"] and len(entry) == 3
    check_files = {u["file"]: u for u in dev.uploads("synapse-check-config")}
    check_labels = _labels(check)
    for name in processes:
        service = containers[name].plain_inputs()
        # Its files, with their modes and owners, and its digest labels: a change to any of them
        # replaces the check, which then runs before the changed service is replaced.
        for upload in dev.uploads(name):
            assert check_files[upload["file"]] == upload, (name, upload["file"])
        digests = {k: v for k, v in _labels(service).items() if k.startswith(DIGEST)}
        assert digests and digests.items() <= check_labels.items(), name
        # Its own check command, as its process is started (same --config-path list).
        args = service["entrypoints"][service["entrypoints"].index("synapse.app.homeserver"
                                                                     if name == "synapse-main" else
                                                                     "synapse.app.generic_worker") + 1:]
        assert f"python -m synapse.config {' '.join(args)} || " in entry[2], name
        assert check["envs"] == service["envs"] and check["user"] == service["user"]
        assert "synapse-check-config" in _depends_on(dev, name)
        assert _labels(service)[CHECK] == "passed"
    assert len(check_files) == len({u["file"] for n in processes for u in dev.uploads(n)})
    # The media store the media worker's config names is mounted, as on the worker itself, and
    # the files from the check's holder, read-only.
    mounted = [v.get("containerPath") or v["fromContainer"] for v in check["volumes"]]
    assert mounted[0] == "/media_store" and len(mounted) == 2, mounted
    assert re.fullmatch(r"synapse-check-config-[0-9a-f]{8}-files", mounted[1]), mounted  # named by its files' digest
    assert "synapse-media-owner" in _depends_on(dev, "synapse-check-config")


def _single_check_is_the_services_own(run: offline.Run, service: str, init_args: list[str]) -> None:
    containers = _containers(run)
    check = containers[f"{service}-check-config"].plain_inputs()
    svc = containers[service].plain_inputs()
    assert check["entrypoints"] == init_args
    for key in ("envs", "user", "image"):
        assert check.get(key) == svc.get(key), (service, key)
    assert run.uploads(f"{service}-check-config") == run.uploads(service)
    assert [v.get("volumeName") for v in check.get("volumes") or []] == [v.get("volumeName") for v in svc.get("volumes") or []]
    assert _labels(check) == {"matrix-stack.component": "config-check",
                              **{k: v for k, v in _labels(svc).items() if k.startswith(DIGEST)}}
    assert f"{service}-check-config" in _depends_on(run, service)
    assert _labels(svc)[CHECK] == "passed"


def test_a_monolith_and_mas_keep_their_own_checks() -> None:
    raw, secret = stack_config("staging", ROOT)
    raw = copy.deepcopy(raw)
    raw["synapse"]["workers"] = {"preset": "monolith"}
    run = offline.run(raw, stack="staging", secret_keys=secret)
    assert _synapse_processes(run) == ["synapse-main"]
    assert _checks(run) == ["mas-check-config", "synapse-main-check-config"]
    main = _containers(run)["synapse-main"].plain_inputs()
    args = main["entrypoints"][main["entrypoints"].index("synapse.app.homeserver") + 1:]
    _single_check_is_the_services_own(run, "synapse-main", ["python", "-m", "synapse.config", *args])
    # MAS's image is distroless: no shell to run a script in, so its check is mas-cli's own.
    _single_check_is_the_services_own(run, "mas", ["/usr/local/bin/mas-cli", "config", "check"])


def test_staging_checks_synapse_together_and_mas_alone() -> None:
    raw, secret = stack_config("staging", ROOT)
    run = offline.run(raw, stack="staging", secret_keys=secret)
    assert _checks(run) == ["mas-check-config", "synapse-check-config"]
    for name in _synapse_processes(run):
        assert "synapse-check-config" in _depends_on(run, name)
    assert "mas-check-config" in _depends_on(run, "mas")


def _two_hosts() -> dict[str, Any]:
    raw = copy.deepcopy(stack_raw("dev"))
    raw["target"]["hosts"] = [
        {"name": "core", "url": "ssh://core.example.org", "address": "10.0.0.1"},
        {"name": "edge", "url": "ssh://edge.example.org", "address": "10.0.0.2", "services": ["element-web*"]},
    ]
    return raw


def _provider(run: offline.Run, name: str) -> str:
    return _containers(run)[name].provider.split("::")[-2]  # the provider's URN ends with its name


def test_a_stack_on_two_hosts_names_its_check_by_host() -> None:
    run = offline.run(_two_hosts(), stack="two-hosts")
    # Synapse's processes share a network and volumes, so they all live on one host.
    assert _checks(run) == ["synapse-core-check-config"]
    assert _provider(run, "synapse-core-check-config") == "docker-core"
    for name in _synapse_processes(run):
        assert "synapse-core-check-config" in _depends_on(run, name), name


def test_two_docker_hosts_get_one_check_each(monkeypatch: pytest.MonkeyPatch) -> None:
    """The adapter itself, given checked services on both hosts."""
    import stack

    checked = [_svc("core-a"), _svc("element-web-a"), _svc("core-b"), _svc("element-web-b")]

    def build(cfg: Any) -> Any:
        platform = DockerPlatform(cfg)
        graph = Graph()
        graph.add(checked, pulumi.ComponentResource("matrix-stack:index:Checked", "checked"))
        platform.realize(graph)
        return SimpleNamespace(services=[], outputs={})

    monkeypatch.setattr(stack, "build", build)
    run = offline.run(_two_hosts(), stack="two-hosts")
    assert _checks(run) == ["synapse-core-check-config", "synapse-edge-check-config"]
    containers = _containers(run)
    for name, host in (("core-a", "core"), ("core-b", "core"), ("element-web-a", "edge"), ("element-web-b", "edge")):
        assert _depends_on(run, name) == {f"synapse-{host}-check-config"}, name
        assert _provider(run, name) == _provider(run, f"synapse-{host}-check-config") == f"docker-{host}"
        check = containers[f"synapse-{host}-check-config"].plain_inputs()
        assert f"/conf/{name}.yaml" in {u["file"] for u in run.uploads(f"synapse-{host}-check-config")}
        assert f"-c /conf/{name}.yaml || " in check["entrypoints"][2]


# ---------------------------------------------------------------- grouping, without Pulumi


def _svc(name: str, **changes: Any) -> Service:
    base: dict[str, Any] = {"component": "synapse", "image": "matrixdotorg/synapse:v1.163.2",
                            "init_args": ("python", "-m", "synapse.config", "-c", f"/conf/{name}.yaml"),
                            "files": [File("/conf/shared.yaml", "shared: 1\n"), File(f"/conf/{name}.yaml", name)],
                            "user": "991:991"}
    return Service(name=name, **(base | changes))


def _groups(services: list[Service], hosts: dict[str, str] | None = None) -> dict[str, list[str]]:
    groups = check_groups(services, lambda s: (hosts or {}).get(s, "local"), several_hosts=bool(hosts))
    return {g.name: [m.name for m in g.members] for g in groups.values()}


def test_services_that_disagree_on_a_shared_path_or_env_are_checked_apart() -> None:
    assert _groups([_svc("a"), _svc("b"), _svc("c")]) == {"synapse-check-config": ["a", "b", "c"]}
    other = _svc("b", files=[File("/conf/shared.yaml", "shared: 2\n")])
    assert _groups([_svc("a"), other, _svc("c")]) == {"synapse-check-config": ["a", "c"], "b-check-config": ["b"]}
    assert _groups([_svc("a"), _svc("b", env={"X": "1"})]) == {"a-check-config": ["a"], "b-check-config": ["b"]}
    assert _groups([_svc("a"), _svc("b", user="0:0")]) == {"a-check-config": ["a"], "b-check-config": ["b"]}
    moved = _svc("b", volumes=[Volume("other", "/media_store")])
    assert _groups([_svc("a", volumes=[Volume("media", "/media_store")]), moved]) == \
        {"a-check-config": ["a"], "b-check-config": ["b"]}
    # Two groups of one component on one host: the second is numbered.
    assert _groups([_svc("a"), _svc("b"), other, _svc("d", files=[File("/conf/shared.yaml", "shared: 2\n")])]) == \
        {"synapse-check-config": ["a", "b"], "synapse-2-check-config": ["b", "d"]}


def test_an_image_without_a_shell_keeps_one_check_per_service() -> None:
    mas = "ghcr.io/element-hq/matrix-authentication-service:1.22.0"
    assert _groups([_svc("a", image=mas), _svc("b", image=mas)]) == {"a-check-config": ["a"], "b-check-config": ["b"]}
    # An image outside the table promises nothing, a shell included.
    assert _groups([_svc("a", image="example/x:1"), _svc("b", image="example/x:1")]) == \
        {"a-check-config": ["a"], "b-check-config": ["b"]}


def test_each_host_gets_its_own_group_named_by_host() -> None:
    hosts = {"a": "one", "b": "two", "c": "two", "d": "one"}
    assert _groups([_svc(n) for n in "abcd"], hosts) == {"synapse-one-check-config": ["a", "d"],
                                                          "synapse-two-check-config": ["b", "c"]}


# ---------------------------------------------------------------- the script, under a real sh


def _sh(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True, timeout=30)


def test_the_script_runs_every_check_and_names_each_failure() -> None:
    odd = "it's $(touch /tmp/x) `x`"
    done = _sh(check_script([("first", ["sh", "-c", "echo first ran; exit 3"]), ("second", ["true"]),
                             (odd, ["printf", "%s\n", "a b", "'c'"]), ("last", ["false"])]))
    assert done.returncode == 1
    assert "first ran" in done.stdout and "a b\n'c'\n" in done.stdout  # each ran, arguments intact
    assert done.stdout.index("== first") < done.stdout.index("== second") < done.stdout.index(f"== {odd}")
    assert done.stderr.strip() == "== the configuration check failed for: first last"


def test_the_script_passes_when_every_check_passes() -> None:
    done = _sh(check_script([("a", ["true"]), ("b", ["sh", "-c", "exit 0"])]))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["== a", "== b", "== every configuration passed"]


# ---------------------------------------------------------------- the label a checked service carries


def test_a_preview_labels_checked_services_passed_and_the_update_waits_for_the_exit_code(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A preview cannot know a replaced check's exit code; were the label unknown there, every
    service sharing the check would show as replaced. The update fails on a failed check."""
    from components.platform import docker as adapter

    try:
        previous: asyncio.AbstractEventLoop | None = asyncio.get_event_loop()
    except RuntimeError:
        previous = None
    loop = asyncio.new_event_loop()
    try:
        asyncio.set_event_loop(loop)
        failed = SimpleNamespace(exit_code=pulumi.Output.from_input(1))
        monkeypatch.setattr(pulumi.runtime, "is_dry_run", lambda: True)
        assert adapter._check_label(failed, "synapse-check-config") == "passed"  # type: ignore[arg-type]
        monkeypatch.setattr(pulumi.runtime, "is_dry_run", lambda: False)
        label = adapter._check_label(failed, "synapse-check-config")  # type: ignore[arg-type]
        with pytest.raises(RuntimeError, match="synapse-check-config: the configuration check exited with 1"):
            loop.run_until_complete(typing.cast(pulumi.Output[str], label).future())
        passed = adapter._check_label(SimpleNamespace(exit_code=pulumi.Output.from_input(0)), "x")  # type: ignore[arg-type]
        assert loop.run_until_complete(typing.cast(pulumi.Output[str], passed).future()) == "passed"
    finally:
        asyncio.set_event_loop(previous)
        loop.close()
