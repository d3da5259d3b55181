"""Where each service runs on a Docker target, and how one service reaches another. Pure.

On Kubernetes every service is reached by its Service name. On Docker hosts, services on the same
host reach each other by container name on the host's private network; a service on another
host is reached through a port published on that host's `address`.
"""

from __future__ import annotations

from config.model import DockerHost, DockerTarget, StackConfig


def _matches(pattern: str, service: str) -> bool:
    return service.startswith(pattern[:-1]) if pattern.endswith("*") else service == pattern


def host_of(cfg: StackConfig, service: str) -> DockerHost | None:
    """The Docker host a service is placed on (None on Kubernetes)."""
    if not isinstance(cfg.target, DockerTarget):
        return None
    for host in cfg.target.hosts:
        if any(_matches(p, service) for p in host.services):
            return host
    return cfg.target.hosts[0]


def reach(cfg: StackConfig, consumer: str, service: str, port: int) -> tuple[str, int, bool]:
    """(host, port, crosses_hosts) the consumer dials to reach `service` on `port`."""
    mine, theirs = host_of(cfg, consumer), host_of(cfg, service)
    if mine is None or theirs is None or mine.name == theirs.name:
        return service, port, False
    assert theirs.address is not None  # the config requires addresses with several hosts
    return theirs.address, port, True


def check(cfg: StackConfig, services: list[str], together: list[list[str]]) -> list[tuple[str, object, str]]:
    """Placement rules: every named service exists; groups that share state share a host."""
    problems: list[tuple[str, object, str]] = []
    if not isinstance(cfg.target, DockerTarget):
        return problems
    for i, host in enumerate(cfg.target.hosts):
        for pattern in host.services:
            if not any(_matches(pattern, s) for s in services):
                problems.append((f"target.hosts[{i}].services", pattern,
                                 "names no service of this stack; services are: " + ", ".join(sorted(services))))
    for group in together:
        hosts = sorted({h.name for s in group if (h := host_of(cfg, s)) is not None})
        if len(hosts) > 1:
            problems.append(("target.hosts", hosts, f"{', '.join(group)} share a volume or a private "
                             "network and must be placed on one host"))
    return problems
