"""Where each service runs on Docker hosts, and how one service reaches another. Pure; the Docker
target's own rules (docker_hosts.DockerHosts answers the contract's questions with them).

Services on the same host reach each other by container name on the host's private network; a
service on another host is reached through a port published on that host's `address`.
"""

from __future__ import annotations

from config.model import DockerHost, DockerTarget


def _matches(pattern: str, service: str) -> bool:
    return service.startswith(pattern[:-1]) if pattern.endswith("*") else service == pattern


# A service that runs once on each host (what reads the host itself) carries the host's name
# after this: it is placed there, whatever the hosts' `services` say.
ON_HOST = "-on-"


def per_host(target: DockerTarget, service: str) -> tuple[str, ...]:
    """The names of `service` run once on each host: the name itself with one host."""
    if len(target.hosts) == 1:
        return (service,)
    return tuple(f"{service}{ON_HOST}{host.name}" for host in target.hosts)


def host_of(target: DockerTarget, service: str) -> DockerHost:
    """The Docker host a service is placed on: the host a per-host service names, else the first
    that names it, else the first host."""
    for host in target.hosts:
        if service.endswith(f"{ON_HOST}{host.name}"):
            return host
    for host in target.hosts:
        if any(_matches(p, service) for p in host.services):
            return host
    return target.hosts[0]


def reach(target: DockerTarget, consumer: str, service: str, port: int) -> tuple[str, int, bool]:
    """(host, port, crosses_hosts) the consumer dials to reach `service` on `port`."""
    mine, theirs = host_of(target, consumer), host_of(target, service)
    if mine.name == theirs.name:
        return service, port, False
    assert theirs.address is not None  # the config requires addresses with several hosts
    return theirs.address, port, True


def check(target: DockerTarget, services: list[str], together: list[list[str]]) -> list[tuple[str, object, str]]:
    """Placement rules: every named service exists; groups that share state share a host."""
    problems: list[tuple[str, object, str]] = []
    for i, host in enumerate(target.hosts):
        for pattern in host.services:
            if not any(_matches(pattern, s) for s in services):
                problems.append((f"target.hosts[{i}].services", pattern,
                                 "names no service of this stack; services are: " + ", ".join(sorted(services))))
    for group in together:
        hosts = sorted({host_of(target, s).name for s in group})
        if len(hosts) > 1:
            problems.append(("target.hosts", hosts, f"{', '.join(group)} share a volume or a private "
                             "network and must be placed on one host"))
    return problems
