"""Every container the Docker adapter declares, held to components/platform/docker_hardening.py:
read-only root, a non-root user, every capability dropped (only its image's file capabilities
added back), no-new-privileges, a memory limit, no secret in its environment and no host directory mounted, except what
the table of exemptions lists. Read from the rendered inputs (resources.json's), per container,
on the staging and dev stacks; the engine test checks the same with `docker inspect`."""

from __future__ import annotations

import fnmatch
import functools
from typing import Any

import pytest

from components.platform import docker_hardening as hardening
from components.platform.docker_hardening import Property
from config.images import facts_for
from render import offline
from render.__main__ import stack_config

from ..conftest import ROOT

CONTAINER = "docker:index/container:Container"
IMAGE = "docker:index/remoteImage:RemoteImage"


@functools.cache
def _run(stack: str) -> offline.Run:
    raw, secret = stack_config(stack, ROOT)
    return offline.run(raw, stack=stack, secret_keys=tuple(secret))


def _image_of(run: offline.Run, container: offline.Registered) -> str:
    images = {r.urn: str(r.plain_inputs()["name"]) for r in run.of_type(IMAGE)}
    return next(images[d] for d in container.dependencies if d in images)


def _is_secret(value: Any) -> bool:
    return value == offline.MASK or (isinstance(value, list) and any(_is_secret(v) for v in value))


def _uid(user: str | None) -> str:
    return (user or "").split(":")[0]


def broken(inputs: dict[str, Any], masked: dict[str, Any], image: str) -> set[Property]:
    """The properties one container's inputs break."""
    found: set[Property] = set()
    if not inputs.get("readOnly"):
        found.add("read_only_root")
    if _uid(inputs.get("user")) in ("", "0", "root"):
        found.add("non_root_user")
    caps = inputs.get("capabilities") or {}
    if caps.get("drops") != ["ALL"] or not set(caps.get("adds") or ()) <= set(facts_for(image).capabilities):
        found.add("cap_drop_all")
    if hardening.NO_NEW_PRIVILEGES not in (inputs.get("securityOpts") or ()):
        found.add("no_new_privileges")
    if not inputs.get("memory"):
        found.add("memory_limit")
    if _is_secret(masked.get("envs")):
        found.add("no_secret_env")
    if any(m.get("type") == "bind" for m in inputs.get("mounts") or ()):
        found.add("no_host_mount")
    return found


def _broken_by_container(stack: str) -> dict[str, set[Property]]:
    run = _run(stack)
    return {str(c.plain_inputs()["name"]): broken(c.plain_inputs(), c.masked()["inputs"], _image_of(run, c))
            for c in run.of_type(CONTAINER)}


@pytest.mark.parametrize("stack", ["staging", "dev"])
def test_every_container_keeps_every_property_but_its_exemptions(stack: str) -> None:
    unexcused = sorted(f"{name}: {prop}" for name, props in _broken_by_container(stack).items()
                       for prop in props if not hardening.excepted(name, prop))
    assert unexcused == [], "\n".join(unexcused)


def test_every_exemption_excuses_something() -> None:
    """A stale exemption would hide a container that regressed."""
    broken_pairs = {(name, prop) for stack in ("staging", "dev")
                    for name, props in _broken_by_container(stack).items() for prop in props}
    unused = [e for e in hardening.EXCEPTIONS
              if not any(p == e.property and fnmatch.fnmatchcase(n, e.container) for n, p in broken_pairs)]
    assert unused == []


def test_long_running_containers_get_their_declared_memory_and_cpu_share() -> None:
    run = _run("staging")
    # By resource name: a new-first container's own name carries its revision.
    by_name = {c.name: c.plain_inputs() for c in run.of_type(CONTAINER)}
    for resolved in run.services:
        service = resolved["service"]
        inputs = by_name[service.name]
        assert inputs["memory"] == hardening.megabytes(service.resources.memory_limit), service.name
        assert inputs["cpuShares"] == hardening.cpu_shares(service.resources.cpu_request), service.name


def test_a_service_with_files_keeps_its_read_only_root_and_reads_them_from_its_holder() -> None:
    run = _run("staging")
    by_name = {c.name: c.plain_inputs() for c in run.of_type(CONTAINER)}
    main, holder = by_name["synapse-main"], by_name["synapse-main-files"]
    assert main["readOnly"] is True and not main.get("uploads")
    assert {"fromContainer": holder["name"], "readOnly": True} in main["volumes"]
    assert holder["start"] is False and holder["uploads"]
    assert sorted(v["containerPath"] for v in holder["volumes"]) == ["/conf", "/secrets"]


def test_quantities() -> None:
    assert hardening.megabytes("4Gi") == 4096
    assert hardening.megabytes("64Mi") == 64
    assert hardening.megabytes("1G") == 953
    assert hardening.cpu_shares("250m") == 256
    assert hardening.cpu_shares("2") == 2048
    assert hardening.cpu_shares("1m") == 2
