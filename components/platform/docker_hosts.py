"""The Docker target's facts and operator verbs (contract.Target), answered from the config alone:
no SDK is loaded. The adapter (docker.py) extends this class."""

from __future__ import annotations

import shlex
from collections.abc import Sequence

from config.checks import Finding
from config.model import DockerHost, DockerTarget, StackConfig

from . import placement
from .contract import Handover, Host, OneShot, Session, Terms, Workload

LOCAL_ENGINE = "unix:///var/run/docker.sock"
# Docker volumes are global to an engine: the stack's carry its name.
VOLUME_PREFIX = "matrix-stack-"


class DockerHosts:
    """Docker engines, local or over SSH: the proxy publishes its ports and holds the certificates."""

    kind = "docker"
    terms = Terms(place="host", workloads="containers", volume="volume", starts_in_order=True)
    # No pod to run two images in turn: a step's work is a container of its own.
    scheduled_steps = False
    # Docker reports no volume usage: node exporter reads the host's filesystems.
    reports_volume_usage = False
    # A cache volume is the host's named volume, kept across restarts.
    shares_caches = True

    def __init__(self, cfg: StackConfig):
        assert isinstance(cfg.target, DockerTarget)
        self.cfg = cfg
        self.target: DockerTarget = cfg.target

    def reach(self, consumer: str, service: str, port: int) -> tuple[str, int, bool]:
        return placement.reach(self.target, consumer, service, port)

    def proxy_terminates_tls(self) -> bool:
        return self.cfg.tls_mode != "none"

    def per_machine(self, service: str) -> tuple[str, ...]:
        return placement.per_host(self.target, service)

    def trusted_proxy_ranges(self) -> tuple[str, ...]:
        # Only the front the operator runs before the host, as configured: by default clients
        # (or Cloudflare's edge) connect to the proxy directly and no one else is believed.
        return tuple(self.target.trusted_proxies)

    def public_port(self, scheme: str) -> int:
        return self.target.https_port if scheme == "https" else self.target.http_port

    def proxy_host_port(self, scheme: str) -> int | None:
        return self.public_port(scheme)

    def certificate_problems(self, direct_hostnames: Sequence[str]) -> list[Finding]:
        return []  # the proxy's ACME client obtains them (tls.acme_email is the config's own rule)

    def placement_problems(self, services: Sequence[str], together: Sequence[Sequence[str]]) -> list[Finding]:
        return placement.check(self.target, list(services), [list(group) for group in together])

    def docker_host(self, service: str) -> DockerHost:
        return placement.host_of(self.target, service)

    def host_of(self, service: str) -> Host | None:
        host = self.docker_host(service)
        return Host(host.name, host.url)

    def volume_name(self, volume: str) -> str:
        return f"{VOLUME_PREFIX}{volume}"

    # ------------------------------------------------------------ the operator's verbs

    def docker(self, service: str | None) -> str:
        """The docker command that talks to the engine `service` runs on (None: the local one)."""
        host = self.docker_host(service) if service is not None else None
        return f"DOCKER_HOST={host.url} docker" if host is not None and host.url != LOCAL_ENGINE else "docker"

    def admin_command(self, service: str, stateful: bool, command: str) -> str:
        return f"{self.docker(service)} exec -it {service} {command}"

    def exec_command(self, service: str, stateful: bool, command: str, *, stdin: bool = False,
                     user: str | None = None) -> str:
        flags = ("-i " if stdin else "") + (f"-u {user} " if user else "")
        return f"{self.docker(service)} exec {flags}{service} {command}"

    def _by_engine(self, services: Sequence[Workload]) -> dict[str, list[str]]:
        """The services' names under the docker command of the engine each runs on."""
        by_engine: dict[str, list[str]] = {}
        for service in services:
            by_engine.setdefault(self.docker(service.name), []).append(service.name)
        return by_engine

    def stop(self, services: Sequence[Workload], label: str | None = None) -> list[str]:
        # Dependents first: the reverse of the start order.
        return [f"{docker} stop {self._containers_of(docker, list(reversed(names)))}"
                for docker, names in self._by_engine(services).items()]

    def start(self, services: Sequence[Workload], stack: str) -> list[str]:
        return [f"{docker} start {self._containers_of(docker, names)}"
                for docker, names in self._by_engine(services).items()]

    @staticmethod
    def _containers_of(docker: str, names: list[str]) -> str:
        """The services' containers, found by their service label: a service replaced new before
        old (spec.Service.start_before_stop) has a container name of its own revision."""
        return (f"$(for s in {' '.join(names)}; do {docker} ps -aq --filter label=matrix-stack.service=$s; done)")

    def hand_over(self, handover: Handover) -> Session:
        # `docker run -e NAME` passes the operator's variable through, `-v "$PWD/file:..."` the file.
        return Session(before=(), after=(), files=dict(handover.files))

    def run_once(self, run: OneShot) -> str:
        flags = ["--rm"] + (["-i"] if run.stdin else [])
        for name in run.secret_env:
            flags += ["-e", name]
        for name, value in run.env:
            flags += ["-e", f"{name}={value}"]
        # What the run reads (read-only volumes, the operator's files), then what it writes.
        volumes = [f"{self.volume_name(m.volume)}:{m.path}{':ro' if m.read_only else ''}"
                   for m in run.mounts if m.read_only]
        if run.files:
            volumes += [f"\"$PWD/{name}:{path}:ro\"" for name, path in self.hand_over(run.handover).files.items()]
        volumes += [f"{self.volume_name(m.volume)}:{m.path}" for m in run.mounts if not m.read_only]
        for volume in volumes:
            flags += ["-v", volume]
        args = run.args
        if run.command and run.replaces_entrypoint:
            flags += ["--entrypoint", shlex.quote(args[0])]
            args = args[1:]
        return f"{self.docker(run.beside)} run {' '.join(flags)} {run.image} {shlex.join(args)}"

    def run_scheduled(self, service: str, command: str, user: str | None) -> str:
        # crond (root) runs the job inside the service's container as the service's user
        # (docker.scheduled): so does exec.
        return self.exec_command(service, False, command, user=user)
