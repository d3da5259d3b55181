"""Kubernetes target: services become Deployments or StatefulSets in one namespace.

Two layers. The pure layer (`render_*`) turns target-neutral services (spec.py) into plain
Kubernetes object dicts; values may be plain strings or Pulumi Outputs and pass through
untouched, so the same dicts feed both the Pulumi resources and the offline manifests.
`KubernetesPlatform` then declares one Pulumi resource per object and keeps a resolved copy
(secrets masked) in `manifests` for review.

Per service:
  - ConfigMap for plain files, Secret for secret files and secret env. Files that share a
    `group` (the shared homeserver.yaml) live in ONE object mounted by every reader (subPath).
  - Deployment, or StatefulSet when the service has volumes. A volume one service owns is a
    volumeClaimTemplate; a volume several services mount (the media store of several media
    workers) is one standalone ReadWriteMany claim.
  - A ClusterIP Service named like the service, so every address the components render
    (instance_map, upstreams) is the service name, as on a Docker network.
  - The pod template carries the sha256 of every file the pod reads: a config change rolls
    exactly the pods that read the changed file.
  - PodDisruptionBudget for scalable roles; a NetworkPolicy per service: only the clients it
    names, else the namespace (the Docker network's equivalent), plus its public ports.
Cluster-wide: the Namespace, the Ingresses in front of the routing proxy, LoadBalancer Services
(or hostNetwork) for media ports, and ServiceMonitors per Synapse role when enabled.

The Ingresses follow the certificate plan the Docker target uses (components/tls/plan.py):
hostnames Cloudflare proxies share one Ingress whose TLS Secret holds the program's Cloudflare
Origin CA certificate (cert-manager's HTTP-01 challenge ends at Cloudflare's edge); every other
hostname is reached directly and shares one Ingress whose certificate cert-manager issues. The
proxy behind both speaks plain HTTP.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import math
import re
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from config.model import KubernetesTarget, StackConfig

from .spec import File, HealthCheck, Port, Service

MASK = "[secret]"
PART_OF = "matrix-stack"
NAME_LABEL = "app.kubernetes.io/name"
CHECKSUM_ANNOTATION = "matrix-stack/config-checksum"
# Synapse processes carry their worker role in this label (components/synapse/services.py);
# ServiceMonitors select one role each so dashboards can group by role.
ROLE_LABEL = "matrix-stack.synapse-role"
# cert-manager's Secret for the directly reached hostnames (the name predates the split, so
# existing stacks keep their issued certificate).
TLS_SECRET = "matrix-stack-tls"
ORIGIN_CA_SECRET = "matrix-stack-origin-ca-tls"
ORIGIN_CA_SUFFIX = "-origin-ca"
EDGE_PORT_NAMES = ("https", "http")
_SERVER_NAME_RE = re.compile(r"^\s*server_name\s+([^;]+);", re.MULTILINE)


@dataclass(frozen=True)
class Context:
    """What the renderer needs from the stack config."""

    namespace: str = "matrix"
    storage_class: str | None = None
    ingress_class: str = "nginx"
    cert_manager_issuer: str | None = None
    livekit_exposure: str = "load_balancer"
    service_monitors: bool = False
    # Synapse's max_upload_size: the Ingress body limit must not be lower (one value, every hop).
    max_body: str = "50M"
    # Hostnames the Ingress routes when the proxy's config cannot be read (an unresolved Output).
    default_hostnames: tuple[str, ...] = ()
    # False when the stack runs plain HTTP (tls.mode none): the Ingress then carries no TLS.
    tls: bool = True
    # Hostnames whose certificate is the Cloudflare Origin CA one (proxied by Cloudflare).
    origin_ca_hosts: frozenset[str] = frozenset()
    # Volumes mounted by more than one service: standalone ReadWriteMany claims.
    shared_volumes: frozenset[str] = frozenset()

    @classmethod
    def of(cls, cfg: StackConfig, shared_volumes: Iterable[str] = ()) -> Context:
        from components.tls.plan import HELD_SOURCES, certificate_sources

        target = cfg.target
        assert isinstance(target, KubernetesTarget)
        sources = certificate_sources(cfg)
        hosts = [cfg.host("matrix")]
        if cfg.server_name not in hosts:
            hosts.append(cfg.server_name)
        return cls(
            namespace=target.namespace,
            storage_class=target.storage_class,
            ingress_class=target.ingress_class,
            cert_manager_issuer=target.cert_manager_issuer,
            livekit_exposure=target.livekit_exposure,
            service_monitors=target.service_monitors,
            max_body=cfg.synapse.max_upload_size,
            default_hostnames=tuple(hosts),
            tls=cfg.tls_mode != "none",
            # A provided certificate rides the same Ingress and Secret: the program holds both.
            origin_ca_hosts=frozenset(h for h, source in sources.items() if source in HELD_SOURCES),
            shared_volumes=frozenset(shared_volumes),
        )


def check(cfg: StackConfig) -> list[tuple[str, object, str]]:
    """Hostnames reached directly need cert-manager: nothing else fills their Ingress's Secret."""
    from components.tls.plan import certificate_sources

    target = cfg.target
    if not isinstance(target, KubernetesTarget) or target.cert_manager_issuer:
        return []
    direct = [h for h, source in certificate_sources(cfg).items() if source == "acme"]
    if not direct:
        return []
    return [("target.cert_manager_issuer", None,
             "required: cert-manager issues the certificate of the hostnames reached directly, not "
             f"through Cloudflare's proxy ({', '.join(direct)})")]


# ---------------------------------------------------------------- small helpers


def manifest_key(obj: Mapping[str, Any]) -> str:
    """`<kind>-<name>`: the manifest file name and the Pulumi resource name of an object."""
    return f"{str(obj['kind']).lower()}-{obj['metadata']['name']}"


def file_key(path: str) -> str:
    """A ConfigMap/Secret key for a file path (keys allow only [-._a-zA-Z0-9])."""
    return re.sub(r"[^-._a-zA-Z0-9]", "_", path.lstrip("/").replace("/", "_"))


def digest(contents: Iterable[tuple[str, str]], key: str | None = None) -> str:
    """sha256 over (name, value) pairs in name order: the pod's config checksum. With a key it is
    an HMAC, so it gives nothing away even about a guessable secret among the values."""
    h = hmac.new(key.encode(), digestmod=hashlib.sha256) if key else hashlib.sha256()
    for name, value in sorted(contents):
        h.update(name.encode() + b"\0" + str(value).encode() + b"\0")
    return h.hexdigest()


def _checksum_inputs(service: Service) -> list[tuple[str, pulumi.Input[str]]]:
    # Secret env counts as well as files: a rotated database password must roll its readers.
    return [(f.path, f.content) for f in service.files] + \
        [(f"env:{k}", v) for k, v in sorted(service.secret_env.items())]


def checksum(service: Service, key: pulumi.Input[str] | None = None) -> pulumi.Input[str]:
    """The checksum of what a pod reads: a string when every value is known and no key is given,
    else an Output. Keyed (an HMAC with a generated secret) under Pulumi, it is unmarked as
    secret: otherwise the whole pod template would show as secret in every diff."""
    pairs = _checksum_inputs(service)
    if key is None and all(isinstance(v, str) for _n, v in pairs):
        return digest((n, str(v)) for n, v in pairs)
    names = [n for n, _v in pairs]
    joined = pulumi.Output.all(key, *[v for _n, v in pairs]).apply(
        lambda values: digest(zip(names, values[1:], strict=True), values[0]))
    return pulumi.Output.unsecret(joined)


def user_ids(user: str) -> tuple[int, int]:
    uid, _, gid = user.partition(":")
    return int(uid), int(gid or uid)


def labels(service: Service) -> dict[str, str]:
    return {
        NAME_LABEL: service.name,
        "app.kubernetes.io/component": service.component,
        "app.kubernetes.io/part-of": PART_OF,
        "app.kubernetes.io/managed-by": "pulumi",
        **service.labels,
    }


def selector(service: Service) -> dict[str, str]:
    return {NAME_LABEL: service.name, "app.kubernetes.io/part-of": PART_OF}


def _meta(name: str, ctx: Context, extra_labels: Mapping[str, str] | None = None,
          annotations: Mapping[str, Any] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": ctx.namespace,
                            "labels": {"app.kubernetes.io/part-of": PART_OF, "app.kubernetes.io/managed-by": "pulumi",
                                       **(extra_labels or {})}}
    if annotations:
        meta["annotations"] = dict(annotations)
    return meta


def is_edge(service: Service) -> bool:
    """The routing proxy: its public HTTP(S) ports are served through the Ingress."""
    return any(p.public and p.protocol == "tcp" and p.name in EDGE_PORT_NAMES for p in service.ports)


def media_ports(service: Service) -> list[Port]:
    """Public ports that are not HTTP (LiveKit RTC, TURN): no Ingress can carry them."""
    if is_edge(service):
        return [p for p in service.ports if p.public and p.name not in EDGE_PORT_NAMES]
    return [p for p in service.ports if p.public]


def exposes_media(service: Service) -> bool:
    return bool(media_ports(service) or service.port_ranges)


def host_network(service: Service, ctx: Context) -> bool:
    return ctx.livekit_exposure == "host_network" and exposes_media(service)


# ---------------------------------------------------------------- files


def config_object_name(service: Service, f: File) -> str:
    if f.group:
        return f.group
    return f"{service.name}-secret-files" if f.secret else f"{service.name}-files"


def file_objects(services: Iterable[Service], ctx: Context) -> dict[str, dict[str, Any]]:
    """ConfigMaps and Secrets for every file of `services`, one per group or per service."""
    grouped: dict[str, dict[str, Any]] = {}
    secret: dict[str, bool] = {}
    component: dict[str, str] = {}
    for service in services:
        for f in service.files:
            name = config_object_name(service, f)
            entries = grouped.setdefault(name, {})
            key = file_key(f.path)
            if key in entries and entries[key] is not f.content and entries[key] != f.content:
                raise ValueError(f"file group {name}: {f.path} differs between readers")
            entries[key] = f.content
            secret[name] = secret.get(name, False) or f.secret
            component.setdefault(name, service.component)
    objects: dict[str, dict[str, Any]] = {}
    for name, entries in grouped.items():
        meta = _meta(name, ctx, {"app.kubernetes.io/component": component[name]})
        data = dict(sorted(entries.items()))
        if secret[name]:
            obj = {"apiVersion": "v1", "kind": "Secret", "metadata": meta, "type": "Opaque", "stringData": data}
        else:
            obj = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data}
        objects[manifest_key(obj)] = obj
    return objects


def env_secret(service: Service, ctx: Context) -> dict[str, Any] | None:
    if not service.secret_env:
        return None
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": _meta(f"{service.name}-env", ctx, {"app.kubernetes.io/component": service.component}),
            "stringData": dict(sorted(service.secret_env.items()))}


# ---------------------------------------------------------------- pods


def _probe_handler(health: HealthCheck) -> dict[str, Any]:
    if health.http_path:
        return {"httpGet": {"path": health.http_path, "port": health.http_port}}
    return {"exec": {"command": list(health.command)}}


def probes(health: HealthCheck | None) -> dict[str, Any]:
    if health is None or not (health.http_path or health.command):
        return {}
    common = {**_probe_handler(health), "periodSeconds": health.interval_s, "timeoutSeconds": health.timeout_s}
    return {
        # The start period becomes a startup probe so liveness never kills a slow first start
        # (Synapse's database migrations).
        "startupProbe": {**common, "failureThreshold": math.ceil(health.start_period_s / health.interval_s) + health.retries},
        "readinessProbe": {**common, "failureThreshold": min(3, health.retries)},
        "livenessProbe": {**common, "failureThreshold": health.retries},
    }


def container_security(service: Service) -> dict[str, Any]:
    ctx: dict[str, Any] = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": service.read_only_root,
                           "seccompProfile": {"type": "RuntimeDefault"}}
    if service.drop_capabilities:
        ctx["capabilities"] = {"drop": ["ALL"], **({"add": list(service.capabilities_add)} if service.capabilities_add else {})}
    elif service.capabilities_add:
        ctx["capabilities"] = {"add": list(service.capabilities_add)}
    if service.user:
        uid, gid = user_ids(service.user)
        ctx.update({"runAsNonRoot": True, "runAsUser": uid, "runAsGroup": gid})
    return ctx


def pod_security(service: Service) -> dict[str, Any]:
    sec: dict[str, Any] = {"seccompProfile": {"type": "RuntimeDefault"}}
    if service.user:
        uid, gid = user_ids(service.user)
        # fsGroup makes mounted secrets (mode 0400) group-readable by the service's user;
        # OnRootMismatch avoids re-chowning a large media store on every start.
        sec.update({"runAsNonRoot": True, "runAsUser": uid, "runAsGroup": gid, "fsGroup": gid,
                    "fsGroupChangePolicy": "OnRootMismatch"})
    return sec


def _volume_name(name: str) -> str:
    return re.sub(r"[^a-z0-9-]", "-", name.lower())[:63].strip("-")


def pod_volumes(service: Service, ctx: Context) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(pod volumes, container volumeMounts) for files, shared claims and scratch dirs."""
    volumes: dict[str, dict[str, Any]] = {}
    mounts: list[dict[str, Any]] = []
    for f in sorted(service.files, key=lambda f: f.path):
        source = config_object_name(service, f)
        vol = _volume_name(f"cfg-{source}")
        key = file_key(f.path)
        if vol not in volumes:
            body = {"secretName": source} if _is_secret_source(service, source) else {"name": source}
            kind = "secret" if "secretName" in body else "configMap"
            volumes[vol] = {"name": vol, kind: {**body, "items": []}}
        kind = "secret" if "secret" in volumes[vol] else "configMap"
        # Each reader projects only the keys it reads, with the file's own mode.
        volumes[vol][kind]["items"].append({"key": key, "path": key, "mode": f.mode})
        mounts.append({"name": vol, "mountPath": f.path, "subPath": key, "readOnly": True})
    for v in service.volumes:
        vol = _volume_name(v.name)
        if v.name in ctx.shared_volumes:
            volumes[vol] = {"name": vol, "persistentVolumeClaim": {"claimName": v.name, "readOnly": v.read_only}}
        mounts.append({"name": vol, "mountPath": v.path, "readOnly": v.read_only})
    for i, path in enumerate(service.writable_paths):
        vol = f"scratch-{i}"
        volumes[vol] = {"name": vol, "emptyDir": {"sizeLimit": "256Mi"}}
        mounts.append({"name": vol, "mountPath": path})
    return list(volumes.values()), mounts


def _is_secret_source(service: Service, source: str) -> bool:
    return any(f.secret for f in service.files if config_object_name(service, f) == source)


def env_vars(service: Service) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in sorted(service.env.items())]
    env += [{"name": k, "valueFrom": {"secretKeyRef": {"name": f"{service.name}-env", "key": k}}}
            for k in sorted(service.secret_env)]
    return env


def container_ports(service: Service, ctx: Context) -> list[dict[str, Any]]:
    ports = [{"name": p.name, "containerPort": p.port, "protocol": p.protocol.upper()} for p in service.ports]
    if service.metrics_port:
        ports.append({"name": "metrics", "containerPort": service.metrics_port, "protocol": "TCP"})
    if host_network(service, ctx):
        for r in service.port_ranges:
            ports += [{"containerPort": n, "protocol": r.protocol.upper()} for n in range(r.start, r.end + 1)]
    return ports


def pod_template(service: Service, ctx: Context, config_checksum: pulumi.Input[str]) -> dict[str, Any]:
    volumes, mounts = pod_volumes(service, ctx)
    resources = {
        "requests": {"cpu": service.resources.cpu_request, "memory": service.resources.memory_request},
        # No CPU limit: CFS throttling hurts Synapse's latency more than a noisy neighbour does.
        "limits": {"memory": service.resources.memory_limit},
    }
    container: dict[str, Any] = {"name": service.name, "image": service.image, "imagePullPolicy": "IfNotPresent"}
    if service.entrypoint:
        container["command"] = list(service.entrypoint)
    if service.args:
        container["args"] = list(service.args)
    env = env_vars(service)
    if env:
        container["env"] = env
    container["ports"] = container_ports(service, ctx)
    container.update(probes(service.health))
    container.update({"resources": resources, "securityContext": container_security(service),
                      "volumeMounts": mounts})
    spec: dict[str, Any] = {
        # No workload here talks to the Kubernetes API.
        "automountServiceAccountToken": False,
        # Many Services in one namespace would otherwise flood every pod's environment.
        "enableServiceLinks": False,
        "securityContext": pod_security(service),
        "containers": [container],
    }
    if volumes:
        spec["volumes"] = volumes
    init: list[dict[str, Any]] = []
    # Health-gated order (PostgreSQL, then main's schema, then workers): without it workers start
    # beside main, exit on the uninitialised schema and back off in CrashLoopBackOff.
    for wait in service.waits:
        init.append({
            "name": f"wait-for-{wait.service}", "image": service.image, "imagePullPolicy": "IfNotPresent",
            "command": ["/bin/sh", "-c", f"until {shlex.join(wait.command)}; do sleep 2; done"],
            **({"env": env} if env else {}),
            "resources": resources, "securityContext": container_security(service),
        })
    if service.init_args:
        init.append({
            "name": "check-config", "image": service.image, "imagePullPolicy": "IfNotPresent",
            "command": list(service.init_args), **({"env": env} if env else {}),
            "resources": resources, "securityContext": container_security(service), "volumeMounts": mounts,
        })
    if init:
        spec["initContainers"] = init
    if host_network(service, ctx):
        # Media on the node's own addresses: no NAT between the SFU and the client's ICE candidates.
        spec.update({"hostNetwork": True, "dnsPolicy": "ClusterFirstWithHostNet"})
    return {
        "metadata": {"labels": labels(service), "annotations": {CHECKSUM_ANNOTATION: config_checksum}},
        "spec": spec,
    }


# ---------------------------------------------------------------- per-service objects


def workload(service: Service, ctx: Context, config_checksum: pulumi.Input[str]) -> dict[str, Any]:
    meta = _meta(service.name, ctx, labels(service))
    spec: dict[str, Any] = {
        "replicas": service.replicas,
        "selector": {"matchLabels": selector(service)},
        "template": pod_template(service, ctx, config_checksum),
    }
    if not service.stateful:
        spec["revisionHistoryLimit"] = 3
        return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta, "spec": spec}
    claims = []
    for v in service.volumes:
        if v.name in ctx.shared_volumes:
            continue
        claim: dict[str, Any] = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": v.size}}}
        if ctx.storage_class:
            claim["storageClassName"] = ctx.storage_class
        claims.append({"metadata": {"name": _volume_name(v.name)}, "spec": claim})
    spec.update({
        "serviceName": service.name,
        # A crash-looping pod must not block its own recreation (ESS does the same).
        "podManagementPolicy": "Parallel",
        "updateStrategy": {"type": "RollingUpdate"},
        "revisionHistoryLimit": 3,
    })
    if claims:
        spec["volumeClaimTemplates"] = claims
        # Deleting or scaling down the workload never deletes its data.
        spec["persistentVolumeClaimRetentionPolicy"] = {"whenDeleted": "Retain", "whenScaled": "Retain"}
    return {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": meta, "spec": spec}


def cluster_service(service: Service) -> list[dict[str, Any]]:
    ports = [{"name": p.name, "port": p.port, "targetPort": p.port, "protocol": p.protocol.upper()}
             for p in service.ports if not (p.public and p in media_ports(service))]
    if service.metrics_port:
        ports.append({"name": "metrics", "port": service.metrics_port, "targetPort": service.metrics_port,
                      "protocol": "TCP"})
    return ports


def services_for(service: Service, ctx: Context) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    ports = cluster_service(service)
    if ports:
        out.append({"apiVersion": "v1", "kind": "Service", "metadata": _meta(service.name, ctx, labels(service)),
                    "spec": {"type": "ClusterIP", "selector": selector(service), "ports": ports}})
    if exposes_media(service) and not host_network(service, ctx):
        public = [{"name": p.name, "port": p.host_port or p.port, "targetPort": p.port, "protocol": p.protocol.upper()}
                  for p in media_ports(service)]
        for r in service.port_ranges:
            # Port names allow 15 characters: name each range port by protocol and number.
            public += [{"name": f"{r.protocol[0]}{n}", "port": n, "targetPort": n, "protocol": r.protocol.upper()}
                       for n in range(r.start, r.end + 1)]
        out.append({"apiVersion": "v1", "kind": "Service",
                    "metadata": _meta(f"{service.name}-public", ctx, labels(service)),
                    # Local keeps the client's source address, which ICE needs, and skips a hop.
                    "spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local",
                             "selector": selector(service), "ports": public}})
    return out


def disruption_budget(service: Service, ctx: Context) -> dict[str, Any] | None:
    if not service.scalable:
        return None
    # maxUnavailable, not minAvailable: a one-replica role must still let a node drain.
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": _meta(service.name, ctx, labels(service)),
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector(service)}}}


def network_policy(service: Service, ctx: Context) -> dict[str, Any]:
    """Who may connect, mirroring the Docker target's private network.

    `allowed_clients` names the only pods that may connect (PostgreSQL, Redis). Otherwise any
    pod of the namespace may (the Docker network's members). Public HTTP ports also admit the
    ingress controller from its own namespace, metrics admit Prometheus from any namespace, and
    media ports admit everyone (clients reach them through the LoadBalancer).
    """
    private = [_np_port(p) for p in service.ports if not (p.public and p in media_ports(service))]
    rules: list[dict[str, Any]] = []
    if private:
        if service.allowed_clients is not None:
            peers: list[dict[str, Any]] = [{"podSelector": {"matchExpressions": [
                {"key": NAME_LABEL, "operator": "In", "values": sorted(service.allowed_clients)}]}}]
        else:
            peers = [{"podSelector": {}}]
        if service.allowed_clients is None or service.allowed_clients:
            rules.append({"from": peers, "ports": private})
    edge = [_np_port(p) for p in service.ports if p.public and p.name in EDGE_PORT_NAMES]
    if edge:
        rules.append({"from": [{"namespaceSelector": {}}], "ports": edge})
    if service.metrics_port:
        rules.append({"from": [{"namespaceSelector": {}}], "ports": [{"port": service.metrics_port, "protocol": "TCP"}]})
    public = [_np_port(p) for p in media_ports(service)]
    public += [{"port": r.start, "endPort": r.end, "protocol": r.protocol.upper()} for r in service.port_ranges]
    if public:
        rules.append({"ports": public})
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": _meta(service.name, ctx, labels(service)),
            "spec": {"podSelector": {"matchLabels": selector(service)}, "policyTypes": ["Ingress"],
                     "ingress": rules}}


def _np_port(port: Port) -> dict[str, Any]:
    return {"port": port.port, "protocol": port.protocol.upper()}


def render_service(service: Service, ctx: Context, config_checksum: pulumi.Input[str]) -> dict[str, dict[str, Any]]:
    """Every object of one service except its files' ConfigMaps/Secrets (see file_objects)."""
    objects = [env_secret(service, ctx), workload(service, ctx, config_checksum), *services_for(service, ctx),
               disruption_budget(service, ctx), network_policy(service, ctx)]
    return {manifest_key(o): o for o in objects if o is not None}


# ---------------------------------------------------------------- cluster-wide objects


def namespace(ctx: Context, services: Iterable[Service]) -> dict[str, Any]:
    # Pod Security admission: `baseline` forbids hostNetwork, so a host-networked SFU needs
    # `privileged`; everything else passes `baseline` (PostgreSQL starts as root).
    level = "privileged" if any(host_network(s, ctx) for s in services) else "baseline"
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": ctx.namespace, "labels": {
                "app.kubernetes.io/part-of": PART_OF, "app.kubernetes.io/managed-by": "pulumi",
                "pod-security.kubernetes.io/enforce": level,
                "pod-security.kubernetes.io/warn": "restricted"}}}


def shared_claims(services: Iterable[Service], ctx: Context) -> dict[str, dict[str, Any]]:
    claims: dict[str, dict[str, Any]] = {}
    for service in services:
        for v in service.volumes:
            if v.name not in ctx.shared_volumes or v.name in claims:
                continue
            # Several pods on several nodes mount it: the storage class must support RWX.
            spec: dict[str, Any] = {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": v.size}}}
            if ctx.storage_class:
                spec["storageClassName"] = ctx.storage_class
            claims[v.name] = {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                              "metadata": _meta(v.name, ctx, {"app.kubernetes.io/component": service.component}),
                              "spec": spec}
    return {manifest_key(c): c for c in claims.values()}


def served_hostnames(edge: Service, ctx: Context) -> list[str]:
    """Every virtual host the routing proxy serves, read from its own config (one source of truth)."""
    names: list[str] = []
    for f in edge.files:
        if isinstance(f.content, str) and not f.secret:
            for match in _SERVER_NAME_RE.finditer(f.content):
                names += [n for n in match.group(1).split() if n != "_" and n not in names]
    return names or list(ctx.default_hostnames)


def _ingress(edge: Service, ctx: Context, name: str, hosts: list[str], secret: str | None,
             issuer: str | None) -> dict[str, Any]:
    annotations = {
        "nginx.ingress.kubernetes.io/proxy-body-size": ctx.max_body,
        # Large uploads and slow federation peers (matrix-docker-ansible-deploy uses 300 s).
        "nginx.ingress.kubernetes.io/proxy-read-timeout": "300",
        "nginx.ingress.kubernetes.io/proxy-send-timeout": "300",
    }
    if issuer:
        annotations["cert-manager.io/cluster-issuer"] = issuer
    # The proxy stays plain behind the Ingress (components/tls/plan.py): its http port.
    backend = {"service": {"name": edge.name, "port": {"name": "http"}}}
    spec: dict[str, Any] = {"ingressClassName": ctx.ingress_class}
    if secret:
        spec["tls"] = [{"hosts": hosts, "secretName": secret}]
    spec["rules"] = [{"host": h, "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": backend}]}}
                     for h in hosts]
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": _meta(name, ctx, labels(edge), annotations), "spec": spec}


def ingresses(edge: Service, ctx: Context) -> list[dict[str, Any]]:
    """The Ingresses in front of the routing proxy: the Origin CA one for proxied hostnames,
    the cert-manager one for the others; one without hosts is left out."""
    if not any(p.name == "http" and p.public for p in edge.ports):
        raise ValueError(f"{edge.name}: the Ingress needs a public plain http port")
    hosts = served_hostnames(edge, ctx)
    if not ctx.tls:
        return [_ingress(edge, ctx, edge.name, hosts, None, None)] if hosts else []
    origin = [h for h in hosts if h in ctx.origin_ca_hosts]
    direct = [h for h in hosts if h not in ctx.origin_ca_hosts]
    out = []
    if origin:
        # No cert-manager annotation: an HTTP-01 challenge would end at Cloudflare's edge.
        out.append(_ingress(edge, ctx, edge.name + ORIGIN_CA_SUFFIX, origin, ORIGIN_CA_SECRET, None))
    if direct:
        out.append(_ingress(edge, ctx, edge.name, direct, TLS_SECRET, ctx.cert_manager_issuer))
    return out


def origin_ca_secret(ctx: Context, certificate: pulumi.Input[str], private_key: pulumi.Input[str]) -> dict[str, Any]:
    """The Origin CA Ingress's Secret, in the kubernetes.io/tls form ingress controllers read."""
    return {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": _meta(ORIGIN_CA_SECRET, ctx, {"app.kubernetes.io/component": "tls"}),
            "stringData": {"tls.crt": certificate, "tls.key": private_key}}


def edge_objects(edge: Service, ctx: Context,
                 origin_ca: tuple[pulumi.Input[str], pulumi.Input[str]] | None) -> dict[str, dict[str, Any]]:
    """The routing proxy's Ingresses, and the Origin CA Secret when an Ingress reads it.

    `origin_ca` is (certificate, private key). Without it an Origin CA Ingress is an error: it
    would point at a Secret nothing fills, and every proxied hostname would fail its handshake.
    """
    objects: dict[str, dict[str, Any]] = {}
    for obj in ingresses(edge, ctx):
        if obj["metadata"]["name"].endswith(ORIGIN_CA_SUFFIX):
            if origin_ca is None:
                raise ValueError("proxied hostnames need the Origin CA certificate (components/tls) "
                                 "before the proxy's Ingress is rendered")
            secret = origin_ca_secret(ctx, *origin_ca)
            objects[manifest_key(secret)] = secret
        objects[manifest_key(obj)] = obj
    return objects


def service_monitors(services: Iterable[Service], ctx: Context) -> dict[str, dict[str, Any]]:
    if not ctx.service_monitors:
        return {}
    groups: dict[tuple[str, str], Service] = {}
    for service in services:
        if service.metrics_port:
            groups.setdefault((service.component, service.labels.get(ROLE_LABEL, service.name)), service)
    out: dict[str, dict[str, Any]] = {}
    for (component, role), service in groups.items():
        match = {"app.kubernetes.io/component": component, "app.kubernetes.io/part-of": PART_OF}
        match.update({ROLE_LABEL: role} if ROLE_LABEL in service.labels else {NAME_LABEL: service.name})
        name = f"{component}-{role}".replace("_", "-") if ROLE_LABEL in service.labels else service.name
        obj = {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
               "metadata": _meta(name, ctx, {"app.kubernetes.io/component": component}),
               "spec": {"selector": {"matchLabels": match}, "namespaceSelector": {"matchNames": [ctx.namespace]},
                        "endpoints": [{"port": "metrics", "path": "/_synapse/metrics", "interval": "30s"}]}}
        out[manifest_key(obj)] = obj
    return out


def shared_volume_names(services: Iterable[Service]) -> set[str]:
    users: dict[str, set[str]] = {}
    for service in services:
        for v in service.volumes:
            users.setdefault(v.name, set()).add(service.name)
    return {name for name, who in users.items() if len(who) > 1}


def render(services: list[Service], ctx: Context,
           origin_ca: tuple[pulumi.Input[str], pulumi.Input[str]] | None = None) -> dict[str, dict[str, Any]]:
    """Every object for `services` (contents as given: strings, or Outputs under Pulumi);
    `origin_ca` is the Origin CA (certificate, private key) for the proxied hostnames' Ingress."""
    ctx = dataclasses.replace(ctx, shared_volumes=ctx.shared_volumes | shared_volume_names(services))
    objects: dict[str, dict[str, Any]] = {}
    ns = namespace(ctx, services)
    objects[manifest_key(ns)] = ns
    objects.update(file_objects(services, ctx))
    objects.update(shared_claims(services, ctx))
    for service in services:
        objects.update(render_service(service, ctx, checksum(service)))
    for service in services:
        if is_edge(service):
            objects.update(edge_objects(service, ctx, origin_ca))
    objects.update(service_monitors(services, ctx))
    return objects


# ---------------------------------------------------------------- Pulumi


_CONSTRUCTORS: dict[str, Any] = {
    "Namespace": k8s.core.v1.Namespace,
    "ConfigMap": k8s.core.v1.ConfigMap,
    "Secret": k8s.core.v1.Secret,
    "PersistentVolumeClaim": k8s.core.v1.PersistentVolumeClaim,
    "Service": k8s.core.v1.Service,
    "Deployment": k8s.apps.v1.Deployment,
    "StatefulSet": k8s.apps.v1.StatefulSet,
    "PodDisruptionBudget": k8s.policy.v1.PodDisruptionBudget,
    "NetworkPolicy": k8s.networking.v1.NetworkPolicy,
    "Ingress": k8s.networking.v1.Ingress,
}


def masked(service: Service) -> Service:
    """The service as the offline manifests show it: secret files and env replaced by MASK."""
    return dataclasses.replace(
        service,
        files=[dataclasses.replace(f, content=MASK) if f.secret else f for f in service.files],
        secret_env={k: MASK for k in service.secret_env},
    )


@dataclass
class _Seen:
    services: list[Service] = field(default_factory=list)
    created: set[str] = field(default_factory=set)


class KubernetesPlatform:
    kind = "kubernetes"

    def __init__(self, cfg: StackConfig):
        assert isinstance(cfg.target, KubernetesTarget)
        self.cfg = cfg
        self.target = cfg.target
        self.ctx = Context.of(cfg)
        # The offline render's view: manifest key -> object, secrets masked, values resolved.
        self.manifests: dict[str, dict[str, Any]] = {}
        self._provider: k8s.Provider | None = None
        self._checksum_key: pulumi.Output[str] | None = None
        self._namespace: k8s.core.v1.Namespace | None = None
        self._seen = _Seen()
        self._origin_ca: tuple[pulumi.Output[str], pulumi.Output[str]] | None = None
        self._origin_ca_parent: pulumi.Resource | None = None

    def use_origin_ca(self, certificate: pulumi.Output[str], private_key: pulumi.Output[str],
                      parent: pulumi.Resource) -> None:
        """The Origin CA certificate for the proxied hostnames' Ingress; its Secret is declared
        with that Ingress (then the namespace exists), under `parent` (the certificate's owner)."""
        self._origin_ca = (certificate, private_key)
        self._origin_ca_parent = parent

    # ------------------------------------------------------------ shared resources

    @property
    def checksum_key(self) -> pulumi.Output[str]:
        """The key of the pods' config checksums (see checksum)."""
        if self._checksum_key is None:
            from components import secrets as gen

            self._checksum_key = gen.password("pod-checksum-key", None, protect=self.cfg.protect)
        return self._checksum_key

    @property
    def provider(self) -> k8s.Provider:
        if self._provider is None:
            self._provider = k8s.Provider(
                "kubernetes",
                kubeconfig=self.target.kubeconfig,
                context=self.target.context,
                namespace=self.target.namespace,
                # Off unless asked: with it on, a refresh during a brief API outage would drop
                # every object from the state. Turn it on to tear down a cluster that is gone.
                delete_unreachable=self.target.delete_unreachable,
            )
        return self._provider

    def _opts(self, parent: pulumi.Resource | None, **extra: Any) -> pulumi.ResourceOptions:
        depends = [self._namespace] if self._namespace is not None else []
        return pulumi.ResourceOptions(parent=parent, provider=self.provider, depends_on=depends, **extra)

    def _declare(self, key: str, obj: dict[str, Any], parent: pulumi.Resource | None, **extra: Any) -> None:
        if key in self._seen.created:
            return
        self._seen.created.add(key)
        kind = obj["kind"]
        body = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind")}
        if kind == "Namespace":
            self._namespace = k8s.core.v1.Namespace(key, metadata=body["metadata"],
                                                    opts=pulumi.ResourceOptions(provider=self.provider))
            return
        if kind == "Secret":
            body["string_data"] = {k: pulumi.Output.secret(v) for k, v in body.pop("stringData").items()}
        if kind in _CONSTRUCTORS:
            _CONSTRUCTORS[kind](key, **body, opts=self._opts(parent, **extra))
        else:
            k8s.apiextensions.CustomResource(key, api_version=obj["apiVersion"], kind=kind, **body,
                                             opts=self._opts(parent, **extra))

    # ------------------------------------------------------------ services

    def run(self, services: list[Service], parent: pulumi.Resource) -> list[Service]:
        self._seen.services += services
        everything = self._seen.services
        ctx = dataclasses.replace(self.ctx, shared_volumes=frozenset(shared_volume_names(everything)))
        ns = namespace(ctx, everything)
        self._declare(manifest_key(ns), ns, None)
        self.manifests[manifest_key(ns)] = ns
        # Group objects hold every reader's files, so they are declared from all services so far.
        for key, obj in file_objects(everything, ctx).items():
            if obj["metadata"]["name"] in {config_object_name(s, f) for s in services for f in s.files}:
                self._declare(key, obj, parent)
        for key, obj in shared_claims(services, ctx).items():
            self._declare(key, obj, parent, protect=self.cfg.protect, retain_on_delete=self.cfg.protect)
        for service in services:
            owns_data = any(v.name not in ctx.shared_volumes for v in service.volumes)
            protect = {"protect": self.cfg.protect, "retain_on_delete": self.cfg.protect} if owns_data else {}
            for key, obj in render_service(service, ctx, checksum(service, self.checksum_key)).items():
                self._declare(key, obj, parent, **(protect if obj["kind"] == "StatefulSet" else {}))
            if is_edge(service):
                for key, obj in edge_objects(service, ctx, self._origin_ca).items():
                    owner = self._origin_ca_parent if obj["kind"] == "Secret" else parent
                    self._declare(key, obj, owner)
        for key, obj in service_monitors(services, ctx).items():
            self._declare(key, obj, parent)
        self._record(everything, ctx)
        return services

    def _record(self, services: list[Service], ctx: Context) -> None:
        """Fill `manifests` once every value is known (immediately under mocks)."""
        services = list(services)
        values: list[Any] = []
        for service in services:
            values += [f.content for f in service.files]
            values += list(service.env.values()) + list(service.secret_env.values())
        values.append(self.checksum_key)

        def resolved(flat: list[Any]) -> None:
            if len(services) < len(self._seen.services):
                return  # a later run() call renders a superset
            it = iter(flat)
            plain = []
            for service in services:
                files = [dataclasses.replace(f, content=next(it)) for f in service.files]
                env = {k: next(it) for k in service.env}
                secret_env = {k: next(it) for k in service.secret_env}
                plain.append(dataclasses.replace(service, files=files, env=env, secret_env=secret_env))
            # Checksums from the real contents, so they equal what the cluster sees.
            key = next(it)
            sums = {s.name: digest(((n, str(v)) for n, v in _checksum_inputs(s)), key) for s in plain}
            shown = [masked(s) for s in plain]
            objects = render(shown, ctx, (MASK, MASK) if self._origin_ca is not None else None)
            for service in shown:
                for key, obj in render_service(service, ctx, sums[service.name]).items():
                    objects[key] = obj
            self.manifests.clear()
            # A JSON round trip: plain, unshared values (YAML would otherwise emit anchors).
            self.manifests.update({k: json.loads(json.dumps(v)) for k, v in sorted(objects.items())})

        pulumi.Output.all(*values).apply(resolved)
