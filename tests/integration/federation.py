"""Two stacks that federate on one machine: a private CA, two rendered configs, name resolution
on loopback, and Matrix clients that reach each stack through its own proxy over TLS.

- Stack A (`a.test`) is a monolith on 127.0.0.1; stack B (`b.test`) runs federation readers,
  inbound workers, senders and a media worker on 127.0.0.2. Ports are fixed per process, so
  each stack has its own loopback address.
- Discovery is production's: `https://<server>/.well-known/matrix/server` delegates to
  `matrix.<server>:443`, which the Docker target publishes from the proxy's 8443 (the harness
  forwards it the same way). Each proxy serves a certificate the test's private CA issued, given
  to the stack through `tls.mode: provided` (the key as a Pulumi secret); each Synapse trusts
  that CA through `synapse.federation.trusted_ca_files` and may dial loopback through
  `synapse.federation.private_networks`.
- Names resolve on loopback through Debian's libnss-wrapper: the Synapse processes run with
  LD_PRELOAD=libnss_wrapper.so and NSS_WRAPPER_HOSTS pointing at a hosts file in the work
  directory, so nothing on the machine (/etc/hosts, resolv.conf) changes. The test's own
  clients resolve from the same file (an aiohttp resolver).

Used by tests/integration/test_federation.py and scripts/bench_federation.py.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import nio
from aiohttp.abc import AbstractResolver, ResolveResult

from components import postgres
from components.synapse import homeserver, routing
from components.synapse.workers import MAIN, Process, Topology
from tests.pki import PrivateCA

from .cluster import PG_BIN, Access, Cluster, boot_config, render

NSS_WRAPPER_GLOB = "/usr/lib/*/libnss_wrapper.so"
PRIVATE_KEY_SECRET = "tls_private_key"


@dataclass(frozen=True)
class StackSpec:
    server_name: str
    address: str
    counts: Mapping[str, int] | None  # None: a monolith

    @property
    def matrix_host(self) -> str:
        return f"matrix.{self.server_name}"

    @property
    def hostnames(self) -> tuple[str, ...]:
        return (self.server_name, self.matrix_host)


A = StackSpec("a.test", "127.0.0.1", None)
B = StackSpec("b.test", "127.0.0.2", {"federation_reader": 2, "federation_inbound": 2, "federation_sender": 2,
                                      "media_repository": 1})


def nss_wrapper() -> str:
    """The preload library; fail (never skip) when Debian's libnss-wrapper is missing."""
    found = sorted(glob.glob(NSS_WRAPPER_GLOB))
    if not found:
        raise RuntimeError("the federation test needs Debian's libnss-wrapper (libnss_wrapper.so); "
                           "scripts/test installs it")
    return found[0]


# ---------------------------------------------------------------- the two configs


def stack_config(spec: StackSpec, ca: PrivateCA) -> dict[str, Any]:
    """A production-shaped config for a private federation: TLS with a provided certificate, the
    private CA trusted for federation, loopback allowed, no public key server."""
    chain, key_pem = ca.issue(spec.server_name, spec.hostnames)
    raw = boot_config(dict(spec.counts) if spec.counts is not None else None,
                      preset=None if spec.counts is not None else "monolith")
    raw["server_name"] = spec.server_name
    raw["hostnames"] = {"matrix": spec.matrix_host}
    raw["target"] = {"kind": "docker", "http_port": 8080, "https_port": 443}
    raw["tls"] = {"mode": "provided", "certificate_file": str(chain)}
    raw[PRIVATE_KEY_SECRET] = key_pem
    raw["synapse"]["federation"] = {
        "trusted_ca_files": [str(ca.path)],
        "private_networks": ["127.0.0.0/8"],
        "trusted_key_servers": [],
    }
    return raw


def hosts_file(base: Path, specs: tuple[StackSpec, ...]) -> Path:
    path = base / "hosts"
    path.write_text("".join(f"{s.address} {' '.join(s.hostnames)}\n" for s in specs))
    return path


# ---------------------------------------------------------------- booting the pair


@dataclass
class Stack:
    spec: StackSpec
    cluster: Cluster

    @property
    def topology(self) -> Topology:
        return homeserver.topology(self.cluster.result.cfg)

    @property
    def url(self) -> str:
        return self.cluster.result.cfg.url("matrix")

    def process_by_port(self) -> dict[int, str]:
        return {p.port: p.name for p in self.topology.processes}

    def senders(self) -> tuple[Process, ...]:
        """Where outbound transactions may leave from: the federation senders, else main."""
        return self.topology.instances("federation_sender") or (MAIN,)

    def sql(self, query: str) -> list[str]:
        """Rows (tab-separated) from this stack's database, over the harness's local socket."""
        sock = self.cluster.base / "pg-socket"
        cmd = [str(PG_BIN / "psql"), "-h", str(sock), "-p", str(postgres.PORT), "-U", "postgres",
               "-d", homeserver.DATABASE_NAME, "-At", "-F", "\t", "-v", "ON_ERROR_STOP=1", "-c", query]
        done = subprocess.run(self.cluster._as_postgres(cmd), capture_output=True, text=True, check=True,
                              cwd=self.cluster.base)
        return [line for line in done.stdout.splitlines() if line]

    def log_lines(self, name: str, needle: str) -> list[str]:
        return [line for line in self.cluster.procs[name].log.read_text(errors="replace").splitlines() if needle in line]


@dataclass
class Pair:
    a: Stack
    b: Stack
    ca: PrivateCA
    hosts: Path
    ready_s: float  # both stacks, booted side by side, until the last process was ready

    def stacks(self) -> tuple[Stack, Stack]:
        return (self.a, self.b)


@contextmanager
def boot_pair(keep: bool = False) -> Iterator[Pair]:
    base = Path(tempfile.mkdtemp(prefix="federation-"))
    base.chmod(0o755)
    ca = PrivateCA(base)
    hosts = hosts_file(base, (A, B))
    env = {"LD_PRELOAD": nss_wrapper(), "NSS_WRAPPER_HOSTS": str(hosts)}
    clusters: list[Cluster] = []
    failed = True
    try:
        for spec in (A, B):
            result = render(stack_config(spec, ca), secret_keys=(PRIVATE_KEY_SECRET,))
            workdir = base / spec.server_name
            workdir.mkdir()
            clusters.append(Cluster(result, workdir, address=spec.address, synapse_env=env))
        t0 = time.monotonic()
        with ThreadPoolExecutor(max_workers=2) as pool:
            for future in [pool.submit(c.start) for c in clusters]:
                future.result()
        ready_s = time.monotonic() - t0
        yield Pair(Stack(A, clusters[0]), Stack(B, clusters[1]), ca, hosts, ready_s)
        failed = False
    finally:
        for cluster in clusters:
            cluster.stop()
        if failed or keep or os.environ.get("KEEP_BOOT_DIR"):
            print(f"federation logs kept in {base}", flush=True)
        else:
            shutil.rmtree(base, ignore_errors=True)


# ---------------------------------------------------------------- clients


class HostsResolver(AbstractResolver):
    """aiohttp name resolution from the test's hosts file (what nss_wrapper gives Synapse)."""

    def __init__(self, hosts: Path):
        self.table: dict[str, str] = {}
        for line in hosts.read_text().splitlines():
            address, *names = line.split()
            for name in names:
                self.table[name] = address

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        if host not in self.table:
            raise OSError(f"{host} is not in the test's hosts file")
        return [ResolveResult(hostname=host, host=self.table[host], port=port, family=socket.AF_INET, proto=0,
                              flags=socket.AI_NUMERICHOST)]

    async def close(self) -> None:
        return None


def client(pair: Pair, stack: Stack, localpart: str) -> nio.AsyncClient:
    """A Matrix client of `stack`, through its proxy over TLS, trusting only the private CA."""
    context = pair.ca.client_context()
    config = nio.AsyncClientConfig(max_limit_exceeded=3, max_timeouts=2, request_timeout=90)
    c = nio.AsyncClient(stack.url, f"@{localpart}:{stack.spec.server_name}", config=config, ssl=context)
    c.client_session = aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=config.request_timeout),
        connector=aiohttp.TCPConnector(resolver=HostsResolver(pair.hosts), ssl=context),
    )
    return c


async def fetch_json(pair: Pair, url: str) -> Any:
    context = pair.ca.client_context()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(resolver=HostsResolver(pair.hosts),
                                                                    ssl=context)) as session:
        async with session.get(url) as resp:
            resp.raise_for_status()
            return await resp.json(content_type=None)


# ---------------------------------------------------------------- attribution


def expected_route(topo: Topology, address: str, path: str) -> tuple[str, set[int]]:
    """Which route group the proxy must log for `path`, and the ports allowed to serve it:
    the routing plan's locations in order (nginx's first matching regex), else main."""
    import re

    names = [p.name for p in topo.processes] + [postgres.SERVICE, homeserver.REDIS_SERVICE]
    plan = routing.plan(topo, {n: address for n in names})
    ports_of = {u.name: {int(s.rsplit(":", 1)[1]) for s in u.servers} for u in plan.upstreams.values()}
    for loc in plan.locations:
        if re.search(loc.pattern, path, re.IGNORECASE):
            if loc.upstream.startswith("$"):
                reads, writes = plan.method_maps[loc.upstream]
                return loc.group, ports_of[reads] | ports_of[writes]
            return loc.group, ports_of[loc.upstream]
    return "main", {MAIN.port}


def misrouted(stack: Stack, log: list[Access], prefixes: tuple[str, ...]) -> list[str]:
    """Requests under `prefixes` whose route or serving process differ from the plan's."""
    wrong = []
    for a in log:
        if not a.path.startswith(prefixes):
            continue
        group, ports = expected_route(stack.topology, stack.spec.address, a.path)
        if a.route != group or not a.ports or not set(a.ports) <= ports:
            wrong.append(f"{stack.spec.server_name}: {a.method} {a.path} -> route={a.route} upstream={a.upstreams}; "
                         f"wanted route={group} on {sorted(ports)}")
    return wrong
