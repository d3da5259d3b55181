"""What a role's instances share on Kubernetes, as plain dicts. Pure.

A role is the services sharing a `role_label` value (Synapse's worker role: generic-1..6), or a
service alone. Per role:
  - a PodDisruptionBudget when it scales out: at most one of its pods is evicted at a time;
  - a NetworkPolicy: ingress from only the clients it names, else the namespace (the Docker
    network's equivalent), plus its public ports; egress to the servers that name it as a client,
    to the servers it `reaches`, and to the internet when it says why it needs it;
  - a ServiceMonitor over its Services with a metrics port, when enabled.
Per namespace (namespace_policies): deny every connection nothing above allows, in and out; let
every pod resolve names (kube-dns) and dial the servers that admit anyone (no allowed_clients).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from components.platform.spec import Port, Service

from .objects import (
    EDGE_PORT_NAMES,
    METRICS_LABEL,
    NAME_LABEL,
    PART_OF,
    Context,
    _meta,
    labels,
    manifest_key,
    media_ports,
    selector,
)


@dataclass(frozen=True)
class Role:
    """The instances of one role (services sharing a `role_label` value), or a service alone."""

    name: str
    members: tuple[Service, ...]
    # What selects exactly the members' pods, and the labels of the role's own objects.
    selector: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    grouped: bool = False


def role_of(service: Service) -> str | None:
    """The service's role: the value of its `role_label`, when it declares one."""
    return service.labels.get(service.role_label) if service.role_label else None


def roles(services: Iterable[Service]) -> list[Role]:
    """Services by role, in the order of each role's first instance. A role selects its instances
    by component and role label; every service so selected is an instance, whether or not it
    declares the label itself, so the role's objects never reach a pod they were not made for."""
    services = list(services)
    of: dict[str, Role] = {}
    for service in services:
        value = role_of(service)
        if value is None or service.name in of:
            continue
        assert service.role_label is not None
        match = {"app.kubernetes.io/component": service.component, "app.kubernetes.io/part-of": PART_OF,
                 service.role_label: value}
        role = Role(f"{service.component}-{value}".replace("_", "-"),
                    tuple(m for m in services if match.items() <= labels(m).items()), match,
                    {"app.kubernetes.io/component": service.component, service.role_label: value}, grouped=True)
        of.update({m.name: role for m in role.members})
    out: dict[str, Role] = {}
    for service in services:
        role = of.get(service.name) or Role(service.name, (service,), selector(service), labels(service))
        if out.setdefault(role.name, role) is not role:
            raise ValueError(f"{role.name} names both a role and a service")
    return list(out.values())


def disruption_budgets(services: Iterable[Service], ctx: Context) -> list[tuple[str, dict[str, Any]]]:
    """(first instance, PodDisruptionBudget) per scalable role: at most one of a role's pods is
    evicted at a time, however many instances (each a one-replica workload) the role has. The
    disruption controller sums the scale of every workload the selector reaches."""
    out = []
    for role in roles(services):
        scalable = {m.scalable for m in role.members}
        if scalable == {False}:
            continue
        if len(scalable) > 1:
            raise ValueError(f"role {role.name}: some instances are scalable and some are not")
        # maxUnavailable, not minAvailable: a one-replica role must still let a node drain. A
        # service of several replicas on its own (the routing proxy) keeps all but one instead:
        # the same bound, stated as what stays serving.
        replicas = role.members[0].replicas
        keep = {"minAvailable": replicas - 1} if len(role.members) == 1 and replicas > 1 else {"maxUnavailable": 1}
        out.append((role.members[0].name, {
            "apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": _meta(role.name, ctx, role.labels),
            "spec": {**keep, "selector": {"matchLabels": role.selector}}}))
    return out


# The cluster's DNS: CoreDNS (or kube-dns) keeps the k8s-app=kube-dns label in kube-system.
KUBE_DNS = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}
DNS_PORTS = [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]
# The internet: every address but the private, shared (CGNAT), link-local and loopback ranges,
# so an egress_internet service reaches no pod, node or cloud metadata endpoint through it.
PRIVATE_V4 = ("10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12", "192.168.0.0/16")
PRIVATE_V6 = ("fc00::/7", "fe80::/10")
INTERNET = [{"ipBlock": {"cidr": "0.0.0.0/0", "except": list(PRIVATE_V4)}},
            {"ipBlock": {"cidr": "::/0", "except": ["::1/128", *PRIVATE_V6]}}]
# cert-manager's HTTP-01 solver pods run in the namespace of the Ingress they answer for (ours),
# labelled so, listening on 8089, and are reached by the ingress controller from its namespace.
ACME_SOLVER = {"acme.cert-manager.io/http01-solver": "true"}
ACME_SOLVER_PORT = 8089
DEFAULT_DENY = "stack-default-deny"
ACME_SOLVERS = "stack-acme-http01-solvers"
DNS_EGRESS = "stack-dns"
OPEN_SERVICES = "stack-open-services"


def private_ports(service: Service, by_name: bool = False) -> list[dict[str, Any]]:
    """The ports the stack's own pods dial: all but the media ports clients reach from outside."""
    return [{"port": p.name if by_name else p.port, "protocol": p.protocol.upper()}
            for p in service.ports if not (p.public and p in media_ports(service))]


def peer(server: Service, ctx: Context) -> dict[str, Any]:
    """Exactly the pods of `server`, in whichever namespace they live."""
    home = dict(ctx.homes).get(server.name, ctx.clients_namespace or ctx.namespace)
    out: dict[str, Any] = {"podSelector": {"matchLabels": selector(server)}}
    if home != ctx.namespace:
        out["namespaceSelector"] = {"matchLabels": {"kubernetes.io/metadata.name": home}}
    return out


def egress_rules(client: Service, everyone: Sequence[Service], ctx: Context) -> list[dict[str, Any]]:
    """What `client` dials beyond DNS and the servers that admit anyone (namespace_policies): the
    servers whose `allowed_clients` name it, the servers it `reaches`, the internet when it says
    why (`egress_internet`) and the private networks off the cluster it names (`egress_networks`)."""
    rules: list[dict[str, Any]] = []
    by_name = {s.name: s for s in everyone}
    for server in everyone:
        if server.allowed_clients and client.name in server.allowed_clients and private_ports(server):
            rules.append({"to": [peer(server, ctx)], "ports": private_ports(server)})
    for name, number in client.reaches:
        dialled = by_name.get(name)
        scrape = number == dialled.metrics_port if dialled is not None else False
        if dialled is None or (dialled.allowed_clients is None and not scrape):
            # Not a service of this stack, or one every pod may dial already (its metrics port
            # is not among those: a scraper in the namespace needs a rule of its own).
            continue
        protocol = next((p.protocol.upper() for p in dialled.ports if p.port == number), "TCP")
        rule = {"to": [peer(dialled, ctx)], "ports": [{"port": number, "protocol": protocol}]}
        if not any(r["to"] == rule["to"] and rule["ports"][0] in r["ports"] for r in rules):
            rules.append(rule)
    if client.egress_internet:
        rules.append({"to": INTERNET})
    if client.egress_networks:
        rules.append({"to": [{"ipBlock": {"cidr": cidr}} for cidr in client.egress_networks]})
    return rules


def namespace_policies(everyone: Sequence[Service], ctx: Context) -> list[dict[str, Any]]:
    """The namespace's own policies: nothing in or out but what a policy allows; every pod
    resolves names; every pod dials the private ports of the servers that admit anyone (no
    `allowed_clients`: the Docker network's members), as their ingress already allows."""
    def policy(name: str, spec: dict[str, Any]) -> dict[str, Any]:
        return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": _meta(name, ctx),
                "spec": {"podSelector": {}, **spec}}

    open_rules = [{"to": [peer(s, ctx)], "ports": private_ports(s)}
                  for s in everyone if s.allowed_clients is None and private_ports(s)]
    out = [policy(DEFAULT_DENY, {"policyTypes": ["Ingress", "Egress"]}),
           policy(DNS_EGRESS, {"policyTypes": ["Egress"], "egress": [{"to": [KUBE_DNS], "ports": DNS_PORTS}]})]
    # Only the stack's namespace: a server that admits anyone admits its namespace's pods, not an
    # exception's (see ingress_rules), so those dial only what names them.
    if open_rules and not ctx.clients_namespace:
        out.append(policy(OPEN_SERVICES, {"policyTypes": ["Egress"], "egress": open_rules}))
    if ctx.cert_manager_issuer and not ctx.clients_namespace:
        # The default deny would otherwise stop the ingress controller's challenge requests.
        out.append({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": _meta(ACME_SOLVERS, ctx),
                    "spec": {"podSelector": {"matchLabels": dict(ACME_SOLVER)}, "policyTypes": ["Ingress"],
                             "ingress": [{"from": [{"namespaceSelector": {}}],
                                          "ports": [{"port": ACME_SOLVER_PORT, "protocol": "TCP"}]}]}})
    return out


def client_peers(names: Iterable[str], ctx: Context) -> list[dict[str, Any]]:
    """The pods of the services `names`, by namespace: a client a Pod Security exception moved
    (LiveKit on the host's network) is named with its own namespace."""
    stack = ctx.clients_namespace or ctx.namespace
    by_namespace: dict[str, list[str]] = {}
    for name in sorted(names):
        by_namespace.setdefault(dict(ctx.homes).get(name, stack), []).append(name)
    out = []
    for namespace, members in sorted(by_namespace.items(), key=lambda item: item[0] != stack):
        peer: dict[str, Any] = {"podSelector": {"matchExpressions": [
            {"key": NAME_LABEL, "operator": "In", "values": members}]}}
        if namespace != ctx.namespace:
            peer["namespaceSelector"] = {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
        out.append(peer)
    return out


def ingress_rules(service: Service, by_name: bool = False, ctx: Context | None = None) -> list[dict[str, Any]]:
    """Who may connect, mirroring the Docker target's private network.

    `allowed_clients` names the only pods that may connect (PostgreSQL, Redis). Otherwise any
    pod of the namespace may (the Docker network's members). Public HTTP ports also admit the
    ingress controller from its own namespace, metrics admit Prometheus from any namespace, and
    media ports admit everyone (clients reach them through the LoadBalancer). `by_name` names
    the container's ports instead of numbering them (port ranges stay numbers).
    """
    def port(p: Port) -> dict[str, Any]:
        return {"port": p.name if by_name else p.port, "protocol": p.protocol.upper()}

    private = private_ports(service, by_name)
    rules: list[dict[str, Any]] = []
    if private:
        if service.allowed_clients is not None:
            peers: list[dict[str, Any]] = client_peers(service.allowed_clients, ctx or Context())
        else:
            peers = [{"podSelector": {}}]
        if service.allowed_clients is None or service.allowed_clients:
            rules.append({"from": peers, "ports": private})
    edge = [port(p) for p in service.ports if p.public and p.name in EDGE_PORT_NAMES]
    if edge:
        rules.append({"from": [{"namespaceSelector": {}}], "ports": edge})
    if service.metrics_port:
        rules.append({"from": [{"namespaceSelector": {}}],
                      "ports": [{"port": "metrics" if by_name else service.metrics_port, "protocol": "TCP"}]})
    public = [port(p) for p in media_ports(service)]
    public += [{"port": r.start, "endPort": r.end, "protocol": r.protocol.upper()} for r in service.port_ranges]
    if public:
        rules.append({"ports": public})
    return rules


def _policy(name: str, meta_labels: dict[str, str], match: dict[str, str], rules: list[dict[str, Any]],
            ctx: Context, egress: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    if ctx.clients_namespace:
        # In an exception's namespace (objects.POD_SECURITY_EXCEPTIONS) the clients are the
        # stack's pods: a bare podSelector would select pods of this namespace only.
        home = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ctx.clients_namespace}}}
        rules = [{**rule, "from": [{**peer, **home} if "podSelector" in peer and "namespaceSelector" not in peer
                                   else peer for peer in rule["from"]]}
                 if "from" in rule else rule for rule in rules]
    spec: dict[str, Any] = {"podSelector": {"matchLabels": match}, "policyTypes": ["Ingress"], "ingress": rules}
    if egress:
        spec.update({"policyTypes": ["Ingress", "Egress"], "egress": egress})
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": _meta(name, ctx, meta_labels), "spec": spec}


def network_policy(service: Service, ctx: Context, everyone: Sequence[Service] | None = None) -> dict[str, Any]:
    """The policy of one service on its own (see ingress_rules and egress_rules)."""
    return _policy(service.name, labels(service), selector(service), ingress_rules(service, ctx=ctx), ctx,
                   egress_rules(service, [service] if everyone is None else everyone, ctx))


def network_policies(services: Iterable[Service], ctx: Context,
                     everyone: Sequence[Service] | None = None) -> list[tuple[str, dict[str, Any]]]:
    """(first instance, NetworkPolicy): one per role, else per service.

    A role's instances listen on different port numbers (each Synapse worker its own). A policy
    admitting the union of those numbers would, in each pod, also admit its siblings' numbers,
    where nothing of its own listens: harmless today, but a rule no pod asked for. The role's
    policy names its ports instead: a named port resolves in each selected pod to that pod's own
    container port, so every pod admits exactly its own ports from exactly the peers its own
    policy would admit. Instances whose rules differ even by name keep a policy each.
    """
    services = list(services)
    peers = services if everyone is None else list(everyone)
    out = []
    for role in roles(services):
        rules = [(ingress_rules(m, True, ctx), egress_rules(m, peers, ctx)) for m in role.members]
        if role.grouped and all(r == rules[0] for r in rules):
            ingress, egress = rules[0]
            out.append((role.members[0].name, _policy(role.name, role.labels, role.selector, ingress, ctx, egress)))
        else:
            out += [(m.name, network_policy(m, ctx, peers)) for m in role.members]
    return out


# The Prometheus Operator release whose CRDs (ServiceMonitor, PrometheusRule) the objects are
# written for: the tests validate them against its published schemas.
PROMETHEUS_OPERATOR = "v0.80.1"


def service_monitors(services: Iterable[Service], ctx: Context) -> dict[str, dict[str, Any]]:
    """One ServiceMonitor per role (see roles: Synapse's worker role), else per service, over the
    Services with a metrics port."""
    if not ctx.service_monitors:
        return {}
    # kube-prometheus-stack's Prometheus selects the objects of its own Helm release by default.
    release = {"release": ctx.prometheus_release} if ctx.prometheus_release else {}
    out: dict[str, dict[str, Any]] = {}
    for role in roles(s for s in services if s.metrics_port):
        first = role.members[0]
        match = role.selector if role.grouped else {
            "app.kubernetes.io/component": first.component, "app.kubernetes.io/part-of": PART_OF, NAME_LABEL: first.name}
        match = {**match, METRICS_LABEL: "true"}
        endpoint: dict[str, Any] = {"port": "metrics", "path": first.metrics_path, "interval": "30s"}
        if first.metrics_honor_labels:
            endpoint["honorLabels"] = True
        # The labels the stack's own prometheus.yml gives the same series: the alerts select them.
        given = dict(first.metrics_labels)
        endpoint["relabelings"] = [
            *([] if "instance" in given else [{"sourceLabels": ["__meta_kubernetes_service_name"],
                                               "targetLabel": "instance"}]),
            *({"targetLabel": name, "replacement": value} for name, value in first.metrics_labels)]
        obj = {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
               "metadata": _meta(role.name, ctx, {"app.kubernetes.io/component": first.component, **release}),
               "spec": {"selector": {"matchLabels": match}, "namespaceSelector": {"matchNames": [ctx.namespace]},
                        "endpoints": [endpoint]}}
        out[manifest_key(obj)] = obj
    for service in services:
        for index, job in enumerate(service.probe_jobs, 1):
            prober, port = job.prober
            # One object per label set (a Probe's static targets share theirs). The operator
            # gives the series the job name, and each target as `instance`, as prometheus.yml does.
            obj = {"apiVersion": "monitoring.coreos.com/v1", "kind": "Probe",
                   "metadata": _meta(f"{service.name}-{job.job}-{index}", ctx,
                                     {"app.kubernetes.io/component": service.component, **release}),
                   "spec": {"jobName": job.job, "module": job.module, "interval": "30s",
                            "prober": {"url": f"{prober}.{ctx.namespace}.svc:{port}", "path": "/probe"},
                            "targets": {"staticConfig": {"static": list(job.targets),
                                                         **({"labels": dict(job.labels)} if job.labels else {})}}}}
            out[manifest_key(obj)] = obj
        if service.alert_rules:
            obj = {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
                   "metadata": _meta(service.name, ctx, {"app.kubernetes.io/component": service.component, **release}),
                   "spec": {"groups": [dict(group) for group in service.alert_rules]}}
            out[manifest_key(obj)] = obj
    return out
