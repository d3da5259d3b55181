"""Who can reach whom on Kubernetes, computed from the rendered NetworkPolicies alone, against
what each service declares it dials.

The evaluator below reads only the manifests (workloads' pod labels and container ports,
namespaces, NetworkPolicies) and applies the NetworkPolicy semantics of networking.k8s.io/v1: a
pod's traffic in a direction is isolated once any policy of that type selects it, and then only
the union of those policies' rules allows; a connection needs the client's egress and the
server's ingress. The declarations are the services' own: `allowed_clients` (None: anyone of
the namespace), `reaches` and `egress_internet`.
"""

from __future__ import annotations

import copy
import ipaddress
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from components.platform.spec import Service
from render import offline
from tests.conftest import ROOT, stack_config, stack_raw

WORKLOAD_KINDS = ("Deployment", "StatefulSet", "CronJob")
# Addresses outside the cluster: a public one, the cloud metadata endpoint, a private one.
INTERNET_V4 = "203.0.113.10"
INTERNET_V6 = "2001:db8::10"
METADATA = "169.254.169.254"
PRIVATE = "10.1.2.3"
KUBE_DNS = "kube-dns"


@dataclass
class Pod:
    name: str
    namespace: str
    labels: dict[str, str]
    # (number, protocol) by port name, and every (number, protocol) it listens on
    named: dict[str, tuple[int, str]] = field(default_factory=dict)
    ports: set[tuple[int, str]] = field(default_factory=set)
    ip: str = ""


def _template(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    spec = obj["spec"]
    if obj["kind"] == "CronJob":
        return spec["jobTemplate"]["spec"]["template"]  # type: ignore[no-any-return]
    return spec["template"]  # type: ignore[no-any-return]


def pods(manifests: Mapping[str, Mapping[str, Any]]) -> list[Pod]:
    out = []
    for i, obj in enumerate(o for _k, o in sorted(manifests.items()) if o["kind"] in WORKLOAD_KINDS):
        template = _template(obj)
        pod = Pod(template["metadata"]["labels"]["app.kubernetes.io/name"], obj["metadata"]["namespace"],
                  dict(template["metadata"]["labels"]), ip=f"10.244.{i // 200}.{i % 200 + 1}")
        for container in template["spec"]["containers"]:
            for p in container.get("ports", []):
                number, protocol = p["containerPort"], p.get("protocol", "TCP")
                pod.ports.add((number, protocol))
                if "name" in p:
                    pod.named[p["name"]] = (number, protocol)
        out.append(pod)
    # The cluster's DNS, as a real cluster labels it.
    out.append(Pod(KUBE_DNS, "kube-system", {"k8s-app": "kube-dns"}, {}, {(53, "UDP"), (53, "TCP")}, "10.96.0.10"))
    return out


def _selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def _namespace_labels(name: str) -> dict[str, str]:
    return {"kubernetes.io/metadata.name": name}  # set by the API server on every namespace


@dataclass(frozen=True)
class Address:
    """A destination or source: a pod, or an address outside the cluster."""

    ip: str
    pod: Pod | None = None


def _peer_matches(peer: Mapping[str, Any], policy_ns: str, other: Address) -> bool:
    if "ipBlock" in peer:
        block = peer["ipBlock"]
        ip = ipaddress.ip_address(other.ip)
        net = ipaddress.ip_network(block["cidr"])
        if ip.version != net.version or ip not in net:
            return False
        return not any(ip in ipaddress.ip_network(e) for e in block.get("except", [])
                       if ipaddress.ip_network(e).version == ip.version)
    if other.pod is None:
        return False
    pod = other.pod
    if "namespaceSelector" in peer:
        if not _selects(peer["namespaceSelector"], _namespace_labels(pod.namespace)):
            return False
    elif pod.namespace != policy_ns:
        return False
    return "podSelector" not in peer or _selects(peer["podSelector"], pod.labels)


def _port_matches(rule_ports: list[Mapping[str, Any]] | None, port: tuple[int, str], target: Pod | None) -> bool:
    if not rule_ports:
        return True
    number, protocol = port
    for p in rule_ports:
        if p.get("protocol", "TCP") != protocol:
            continue
        if "port" not in p:
            return True
        value = p["port"]
        if isinstance(value, str):
            # A named port resolves in the destination pod (egress) or the selected pod (ingress).
            if target is not None and target.named.get(value) == port:
                return True
            continue
        if value == number or ("endPort" in p and value <= number <= p["endPort"]):
            return True
    return False


class Policies:
    def __init__(self, manifests: Mapping[str, Mapping[str, Any]]) -> None:
        self.policies = [o for _k, o in sorted(manifests.items()) if o["kind"] == "NetworkPolicy"]

    def _selecting(self, pod: Pod, kind: str) -> Iterator[Mapping[str, Any]]:
        for policy in self.policies:
            spec = policy["spec"]
            types = spec.get("policyTypes") or (["Ingress", "Egress"] if "egress" in spec else ["Ingress"])
            if (policy["metadata"]["namespace"] == pod.namespace and kind in types
                    and _selects(spec["podSelector"], pod.labels)):
                yield policy

    def egress(self, src: Pod, dst: Address, port: tuple[int, str]) -> bool:
        selecting = list(self._selecting(src, "Egress"))
        if not selecting:
            return True
        return any((not rule.get("to") or any(_peer_matches(peer, src.namespace, dst) for peer in rule["to"]))
                   and _port_matches(rule.get("ports"), port, dst.pod)
                   for policy in selecting for rule in policy["spec"].get("egress", []))

    def ingress(self, dst: Pod, src: Address, port: tuple[int, str]) -> bool:
        selecting = list(self._selecting(dst, "Ingress"))
        if not selecting:
            return True
        return any((not rule.get("from") or any(_peer_matches(peer, dst.namespace, src) for peer in rule["from"]))
                   and _port_matches(rule.get("ports"), port, dst)
                   for policy in selecting for rule in policy["spec"].get("ingress", []))

    def connects(self, src: Pod, dst: Pod, port: tuple[int, str]) -> bool:
        return self.egress(src, Address(dst.ip, dst), port) and self.ingress(dst, Address(src.ip, src), port)


Edge = tuple[str, str, int, str]  # (client, server, port, protocol)


def reaches_address(manifests: Mapping[str, Mapping[str, Any]], ip: str) -> set[str]:
    """The pods whose egress reaches `ip` (an address off the cluster), from the manifests alone."""
    policies = Policies(manifests)
    return {src.name for src in pods(manifests) if src.name != KUBE_DNS
            and policies.egress(src, Address(ip), (443, "TCP"))}


def reachable(manifests: Mapping[str, Mapping[str, Any]]) -> tuple[set[Edge], set[str], set[str], set[str]]:
    """(pod-to-pod connections, pods reaching the internet, pods reaching private or link-local
    addresses outside any pod, pods resolving names), from the manifests alone."""
    everyone = pods(manifests)
    policies = Policies(manifests)
    stack = [p for p in everyone if p.name != KUBE_DNS]
    dns = next(p for p in everyone if p.name == KUBE_DNS)
    edges = {(src.name, dst.name, *port) for src in stack for dst in stack for port in sorted(dst.ports)
             if policies.connects(src, dst, port)}
    internet = {src.name for src in stack
                if policies.egress(src, Address(INTERNET_V4), (443, "TCP"))
                and policies.egress(src, Address(INTERNET_V6), (443, "TCP"))}
    inside = {src.name for src in stack for ip in (METADATA, PRIVATE)
              if policies.egress(src, Address(ip), (80, "TCP"))}
    resolves = {src.name for src in stack
                if all(policies.connects(src, dns, port) for port in ((53, "UDP"), (53, "TCP")))}
    return edges, internet, inside, resolves


def declared(services: list[Service], private_network: set[str]) -> tuple[set[Edge], set[str]]:
    """(connections, services dialling the internet) as the services declare them. A server with
    no `allowed_clients` admits anyone on the private network: the services of the stack's own
    namespace (not those a Pod Security exception moves to a namespace of their own)."""
    by_name = {s.name: s for s in services}
    edges: set[Edge] = set()
    for server in services:
        # Media ports are the clients' from outside (the edge's public HTTP ports are not media).
        ports = [(p.port, p.protocol.upper()) for p in server.ports
                 if not (p.public and (server.edge is None or p.name not in ("http", "https")))]
        clients = sorted(private_network) if server.allowed_clients is None else list(server.allowed_clients)
        edges |= {(client, server.name, *port) for client in clients if client in by_name for port in ports}
    for client in services:
        for name, number in client.reaches:
            server = by_name[name]
            # A metrics port is TCP and not among the service's ports (roles.ingress_rules).
            protocol = next((p.protocol.upper() for p in server.ports if p.port == number), "TCP")
            edges.add((client.name, name, number, protocol))
    return edges, {s.name for s in services if s.egress_internet}


def _services(run: offline.Run) -> list[Service]:
    return [entry["service"] for entry in run.services]


def _prod(raw: dict[str, Any] | None = None) -> offline.Run:
    prod_raw, secret = stack_config("prod", ROOT)
    return offline.run(raw or prod_raw, stack="prod", secret_keys=tuple(k for k in secret if k in (raw or prod_raw)))


@pytest.fixture(scope="module")
def prod() -> offline.Run:
    return _prod()


def _check(run: offline.Run) -> None:
    manifests = run.deployment.manifests
    services = _services(run)
    edges, internet, inside, resolves = reachable(manifests)
    workloads = {p.name for p in pods(manifests) if p.name != KUBE_DNS}
    home = {p.name for p in pods(manifests) if p.namespace == run.cfg.target.namespace}
    want_edges, want_internet = declared(services, home)
    want_edges = {e for e in want_edges if e[0] in workloads and e[1] in workloads}
    assert sorted(want_edges - edges) == [], "declared dials the policies refuse"
    assert sorted(edges - want_edges) == [], "connections the policies allow that no service declares"
    assert internet == want_internet & workloads
    # Private and link-local addresses off the cluster: only the networks a service names.
    assert inside == set(), "the internet rule reaches private or link-local addresses"
    for service in services:
        for cidr in service.egress_networks:
            host = str(next(iter(ipaddress.ip_network(cidr).hosts()), ipaddress.ip_network(cidr).network_address))
            want = {s.name for s in services if any(ipaddress.ip_address(host) in ipaddress.ip_network(c)
                                                     for c in s.egress_networks)}
            got = reaches_address(manifests, host)
            # Beyond those naming it, only the internet's dialers (a public address in the list).
            assert want & workloads <= got and got - want <= internet, cidr
    assert resolves == workloads


def test_prod_policies_allow_exactly_the_declared_dials(prod: offline.Run) -> None:
    _check(prod)


def test_prod_policies_keep_the_databases_and_the_internet_to_their_clients(prod: offline.Run) -> None:
    edges, internet, _inside, _resolves = reachable(prod.deployment.manifests)
    for outsider in ("livekit", "ntfy", "element-web", "element-call", "synapse-proxy", "backup-check"):
        assert not {e for e in edges if e[0] == outsider and e[1] in ("synapse-postgres", "synapse-redis")}
    # The backup job's dump step (view.database_readers) dials PostgreSQL, and only it.
    assert ("backup", "synapse-postgres", 5432, "TCP") in edges
    assert not {e for e in edges if e[0] == "backup" and e[1] == "synapse-redis"}
    assert {"synapse-main", "synapse-federation-sender-1", "synapse-media-repository-1", "synapse-pusher-1", "mas",
            "lk-jwt-service", "backup", "backup-check"} <= internet
    for closed in ("element-web", "element-call", "synapse-proxy", "synapse-postgres", "synapse-redis",
                   "synapse-event-persister-1"):
        assert closed not in internet


def test_prod_policies_admit_metrics_only_from_outside_the_stack_or_its_own_prometheus(prod: offline.Run) -> None:
    edges, *_ = reachable(prod.deployment.manifests)
    assert {e[0] for e in edges if e[1] == "synapse-main" and e[2] == 19090} == {"prometheus"}


def test_a_host_network_livekit_is_still_reached_by_exactly_its_declared_clients() -> None:
    raw = copy.deepcopy(stack_raw("prod"))
    raw["target"] = {**raw["target"], "livekit_exposure": "host_network", "service_monitors": False}
    _check(_prod(raw))


def test_a_private_federation_is_dialled_by_exactly_the_processes_that_dial_out() -> None:
    raw = copy.deepcopy(stack_raw("prod"))
    raw["synapse"] = {**raw["synapse"], "federation": {"private_networks": ["192.168.50.0/24"]}}
    run = _prod(raw)
    _check(run)
    dialling = reaches_address(run.deployment.manifests, "192.168.50.7")
    assert {"synapse-main", "synapse-federation-sender-1", "synapse-generic-1"} <= dialling
    assert not dialling & {"synapse-event-persister-1", "mas", "element-web", "synapse-postgres"}


def test_a_monolith_dials_the_internet_from_main() -> None:
    raw = copy.deepcopy(stack_raw("prod"))
    raw["synapse"] = {**raw["synapse"], "workers": {"preset": "monolith"}}
    run = _prod(raw)
    _check(run)
    _edges, internet, *_ = reachable(run.deployment.manifests)
    assert "synapse-main" in internet


def test_cert_managers_http01_solvers_still_answer_the_ingress_controller(prod: offline.Run) -> None:
    manifests = prod.deployment.manifests
    namespace = prod.cfg.target.namespace
    solver = Pod("cm-acme-http-solver-x", namespace, {"acme.cert-manager.io/http01-solver": "true"},
                 {}, {(8089, "TCP")}, "10.244.9.9")
    controller = Pod("ingress-nginx-controller", "ingress-nginx", {"app.kubernetes.io/name": "ingress-nginx"},
                     {}, set(), "10.244.9.10")
    policies = Policies(manifests)
    assert policies.ingress(solver, Address(controller.ip, controller), (8089, "TCP"))
    assert not policies.ingress(solver, Address(controller.ip, controller), (8080, "TCP"))


def test_external_databases_at_private_addresses_are_dialled_by_exactly_their_clients() -> None:
    raw = {"server_name": "example.org", "target": {"kind": "kubernetes", "cert_manager_issuer": "le"},
           "synapse": {"database": {"kind": "external", "host": "192.168.60.5", "name": "synapse", "user": "synapse"}},
           "backup": {"enabled": True, "repository": {"kind": "volume"}},
           "database_password": "hunter2-Zq8xK3mP9vL"}
    run = offline.run(raw, stack="prod", secret_keys=("database_password",))
    _check(run)
    dialling = reaches_address(run.deployment.manifests, "192.168.60.5")
    assert {"synapse-main", "backup"} <= dialling
    assert "backup-check" not in dialling


def test_the_restore_runs_dial_what_the_backup_may(prod: offline.Run) -> None:
    """The restore procedure's one-shot pods (restic, pg_restore) carry the backup's labels: its
    policy lets them reach the repository and PostgreSQL, as the backup job does."""
    import shlex

    from components.backup import render as backup_render
    from tests.conftest import stack_view

    view = stack_view(prod.cfg)
    steps = backup_render.restore_procedure(prod.cfg, view, backup_render.databases(view), "prod")
    runs = [part for step in steps for part in step.command.split(" | ") if " run " in part and "kubectl" in part]
    assert runs
    everyone = pods(prod.deployment.manifests)
    postgres = next(p for p in everyone if p.name == "synapse-postgres")
    policies = Policies(prod.deployment.manifests)
    for run in runs:
        [flag] = [w for w in shlex.split(run) if w.startswith("--labels=")]
        labels = dict(pair.split("=", 1) for pair in flag.removeprefix("--labels=").split(","))
        pod = Pod("restore", prod.cfg.target.namespace, labels, ip="10.244.9.20")
        assert policies.egress(pod, Address(INTERNET_V4), (443, "TCP")), run
        assert policies.connects(pod, postgres, (5432, "TCP")), run
