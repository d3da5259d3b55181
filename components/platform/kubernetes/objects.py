"""Kubernetes objects for target-neutral services (spec.py), as plain dicts. Pure.

Values may be plain strings or Pulumi Outputs and pass through untouched, so the same dicts feed
both the Pulumi resources (platform.py) and the offline manifests.

Per service:
  - ConfigMap for plain files, Secret for secret files and secret env. Files that share a
    `group` (the shared homeserver.yaml) live in ONE object mounted by every reader (subPath);
    so does secret env that shares a `secret_env_group` (Synapse's database password).
  - Deployment, or StatefulSet when the service has volumes. A volume one service owns is a
    volumeClaimTemplate; a volume several services mount (the media store of several media
    workers) is one standalone ReadWriteMany claim.
  - A ClusterIP Service named like the service, so every address the components render
    (instance_map, upstreams) is the service name, as on a Docker network.
  - The pod template carries the sha256 of every file the pod reads: a config change rolls
    exactly the pods that read the changed file.
Cluster-wide: the Namespace, enforcing Pod Security `restricted`, and LoadBalancer Services (or
hostNetwork) for media ports. A pod that cannot be restricted lives in a namespace of its own,
named with its reason in POD_SECURITY_EXCEPTIONS. A role's
disruption budget, network policy and ServiceMonitor are roles.py's; the Ingresses in front of
the routing proxy are edge.py's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import math
import re
import shlex
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pulumi

from components.platform.spec import File, HealthCheck, Port, Service
from config.model import KubernetesTarget, StackConfig

MASK = "[secret]"
PART_OF = "matrix-stack"
NAME_LABEL = "app.kubernetes.io/name"
CHECKSUM_ANNOTATION = "matrix-stack/config-checksum"
# On the Service that carries a workload's metrics port: what its ServiceMonitor selects, so the
# same pods' other Services (LiveKit's public LoadBalancer) are not among its targets.
METRICS_LABEL = "matrix-stack/metrics"
EDGE_PORT_NAMES = ("https", "http")


@dataclass(frozen=True)
class Context:
    """What the renderer needs from the stack config."""

    namespace: str = "matrix"
    storage_class: str | None = None
    ingress_class: str = "nginx"
    cert_manager_issuer: str | None = None
    livekit_exposure: str = "load_balancer"
    service_monitors: bool = False
    prometheus_release: str | None = None
    # Synapse's max_upload_size: the Ingress body limit must not be lower (one value, every hop).
    max_body: str = "50M"
    # Volumes mounted by more than one service: standalone ReadWriteMany claims.
    shared_volumes: frozenset[str] = frozenset()
    # (volume, owner): volumes one workload owns (its claim template) that others only read; the
    # readers mount the owner's pod's claim on the owner's node (borrowed_volumes).
    borrowed: tuple[tuple[str, str], ...] = ()
    # Set when rendering an exception's namespace (POD_SECURITY_EXCEPTIONS): the stack's own
    # namespace, whose pods are the clients its network policies admit.
    clients_namespace: str | None = None
    # (service, namespace) for the services living outside the stack's namespace (their
    # exception's, POD_SECURITY_EXCEPTIONS): a policy naming them as peers names the namespace too.
    homes: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, cfg: StackConfig, shared_volumes: Iterable[str] = ()) -> Context:
        target = cfg.target
        assert isinstance(target, KubernetesTarget)
        return cls(
            namespace=target.namespace,
            storage_class=target.storage_class,
            ingress_class=target.ingress_class,
            cert_manager_issuer=target.cert_manager_issuer,
            livekit_exposure=target.livekit_exposure,
            service_monitors=target.service_monitors,
            prometheus_release=target.prometheus_release,
            max_body=cfg.synapse.max_upload_size,
            shared_volumes=frozenset(shared_volumes),
        )

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


def checksum_inputs(service: Service) -> list[tuple[str, pulumi.Input[str]]]:
    # Secret env counts as well as files: a rotated database password must roll its readers.
    return [(f.path, f.content) for f in service.files] + \
        [(f"env:{k}", v) for k, v in sorted(service.secret_env.items())]


def checksum(service: Service, key: pulumi.Input[str] | None = None) -> pulumi.Input[str]:
    """The checksum of what a pod reads: a string when every value is known and no key is given,
    else an Output. Keyed (an HMAC with a generated secret) under Pulumi, it is unmarked as
    secret: otherwise the whole pod template would show as secret in every diff."""
    pairs = checksum_inputs(service)
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
    return service.edge is not None


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
    labels: dict[str, dict[str, str]] = {}
    for service in services:
        for f in service.files:
            name = config_object_name(service, f)
            labels.setdefault(name, {}).update(f.object_labels)
            entries = grouped.setdefault(name, {})
            key = file_key(f.path)
            if key in entries and entries[key] is not f.content and entries[key] != f.content:
                raise ValueError(f"file group {name}: {f.path} differs between readers")
            entries[key] = f.content
            secret[name] = secret.get(name, False) or f.secret
            component.setdefault(name, service.component)
    objects: dict[str, dict[str, Any]] = {}
    for name, entries in grouped.items():
        meta = _meta(name, ctx, {**labels.get(name, {}), "app.kubernetes.io/component": component[name]})
        data = dict(sorted(entries.items()))
        if secret[name]:
            obj = {"apiVersion": "v1", "kind": "Secret", "metadata": meta, "type": "Opaque", "stringData": data}
        else:
            obj = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data}
        objects[manifest_key(obj)] = obj
    return objects


def env_secret_name(service: Service) -> str:
    return service.secret_env_group or f"{service.name}-env"


def env_secrets(services: Iterable[Service], ctx: Context) -> list[tuple[str, dict[str, Any]]]:
    """(first reader, Secret) for the secret env of `services`, one per `secret_env_group` or per
    service. Each pod refers only to the keys it reads; its checksum covers only their values."""
    grouped: dict[str, dict[str, Any]] = {}
    reader: dict[str, Service] = {}
    for service in services:
        if not service.secret_env:
            continue
        name = env_secret_name(service)
        entries = grouped.setdefault(name, {})
        reader.setdefault(name, service)
        for key, value in service.secret_env.items():
            if key in entries and entries[key] is not value and entries[key] != value:
                raise ValueError(f"secret env group {name}: {key} differs between readers")
            entries[key] = value
    return [(reader[name].name, {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                                 "metadata": _meta(name, ctx, {"app.kubernetes.io/component": reader[name].component}),
                                 "stringData": dict(sorted(entries.items()))})
            for name, entries in grouped.items()]


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
        owner = dict(ctx.borrowed).get(v.name)
        if v.cache:
            # Each pod's own cache: no claim, so nothing pins the pod to a node.
            volumes[vol] = {"name": vol, "emptyDir": {"sizeLimit": v.size}}
        elif v.name in ctx.shared_volumes:
            volumes[vol] = {"name": vol, "persistentVolumeClaim": {"claimName": v.name, "readOnly": v.read_only}}
        elif owner is not None and owner != service.name:
            # The claim its owner's StatefulSet made from its template: <template>-<pod>.
            volumes[vol] = {"name": vol, "persistentVolumeClaim": {"claimName": f"{vol}-{owner}-0", "readOnly": True}}
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
    env += [{"name": k, "valueFrom": {"secretKeyRef": {"name": env_secret_name(service), "key": k}}}
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
            # A probe may read the service's files (Synapse's database config, with its password).
            "resources": resources, "securityContext": container_security(service), "volumeMounts": mounts,
        })
    if service.init_args:
        init.append({
            "name": "check-config", "image": service.image, "imagePullPolicy": "IfNotPresent",
            "command": list(service.init_args), **({"env": env} if env else {}),
            "resources": resources, "securityContext": container_security(service), "volumeMounts": mounts,
        })
    for step in service.steps:
        # The step's own image and user; the service's files, volumes and scratch directories.
        runs_as = dataclasses.replace(service, image=step.image, user=step.user)
        init.append({
            "name": step.name, "image": step.image, "imagePullPolicy": "IfNotPresent",
            "command": list(step.command), **({"env": env} if env else {}),
            "resources": resources, "securityContext": container_security(runs_as), "volumeMounts": mounts,
        })
    if init:
        spec["initContainers"] = init
    if service.schedule:
        # A run that fails is the next schedule's to retry, not the kubelet's.
        spec["restartPolicy"] = "Never"
    lenders = sorted({owner for name, owner in ctx.borrowed if owner != service.name
                      and any(v.name == name for v in service.volumes)})
    if lenders:
        # A ReadWriteOnce claim serves the pods of one node: run beside the pod that owns it.
        spec["affinity"] = {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {NAME_LABEL: owner, "app.kubernetes.io/part-of": PART_OF}},
             "topologyKey": "kubernetes.io/hostname"} for owner in lenders]}}
    if host_network(service, ctx):
        # Media on the node's own addresses: no NAT between the SFU and the client's ICE candidates.
        spec.update({"hostNetwork": True, "dnsPolicy": "ClusterFirstWithHostNet"})
    return {
        "metadata": {"labels": labels(service), "annotations": {CHECKSUM_ANNOTATION: config_checksum}},
        "spec": spec,
    }


# ---------------------------------------------------------------- per-service objects


def cron_job(service: Service, ctx: Context, config_checksum: pulumi.Input[str]) -> dict[str, Any]:
    """A scheduled service: one Job per schedule tick, never two at once, a day to catch up on a
    missed tick; its volumes are standalone claims (shared_volume_names) or borrowed from their
    owner's pod (borrowed_volumes)."""
    meta = _meta(service.name, ctx, labels(service))
    return {"apiVersion": "batch/v1", "kind": "CronJob", "metadata": meta, "spec": {
        "schedule": service.schedule,
        "timeZone": "Etc/UTC",
        "concurrencyPolicy": "Forbid",
        "startingDeadlineSeconds": 86400,
        "successfulJobsHistoryLimit": 3,
        "failedJobsHistoryLimit": 3,
        "jobTemplate": {"metadata": {"labels": labels(service)}, "spec": {
            "backoffLimit": 0,
            "template": pod_template(service, ctx, config_checksum),
        }},
    }}


def workload(service: Service, ctx: Context, config_checksum: pulumi.Input[str]) -> dict[str, Any]:
    if service.schedule:
        return cron_job(service, ctx, config_checksum)
    meta = _meta(service.name, ctx, labels(service))
    spec: dict[str, Any] = {
        "replicas": service.replicas,
        "selector": {"matchLabels": selector(service)},
        "template": pod_template(service, ctx, config_checksum),
    }
    if not service.stateful:
        spec["revisionHistoryLimit"] = 3
        if service.exclusive:
            # A rolling update would start the new pod beside the old one.
            spec["strategy"] = {"type": "Recreate"}
        return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta, "spec": spec}
    claims = []
    for v in service.volumes:
        if v.cache or v.name in ctx.shared_volumes or dict(ctx.borrowed).get(v.name, service.name) != service.name:
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
        scraped = {METRICS_LABEL: "true"} if service.metrics_port else {}
        out.append({"apiVersion": "v1", "kind": "Service",
                    "metadata": _meta(service.name, ctx, {**labels(service), **scraped}),
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


def render_service(service: Service, ctx: Context, config_checksum: pulumi.Input[str]) -> dict[str, dict[str, Any]]:
    """The workload and Services of one service (its files and secret env may be shared: see
    file_objects and env_secrets; its budget and policy are its role's: see roles.py)."""
    objects = [workload(service, ctx, config_checksum), *services_for(service, ctx)]
    return {manifest_key(o): o for o in objects}


# ---------------------------------------------------------------- cluster-wide objects


# The Pod Security level the stack's namespace enforces: every pod runs as a non-root user, with
# no capability but NET_BIND_SERVICE, no privilege escalation and the runtime's seccomp profile.
ENFORCED_LEVEL = "restricted"


@dataclass(frozen=True)
class PodSecurityException:
    """Pods that cannot pass ENFORCED_LEVEL, and why. They live in a namespace of their own
    (`<namespace>-<name>`) enforcing `level`, so they never lower the stack's namespace."""

    name: str
    level: str
    reason: str
    applies: Callable[[Service, Context], bool]


# Every exception, with its reason: tests/integration/test_pod_security.py holds each pod of a
# rendered stack to ENFORCED_LEVEL, and each pod here to its own level.
POD_SECURITY_EXCEPTIONS: tuple[PodSecurityException, ...] = (
    PodSecurityException(
        "host-network", "privileged",
        "LiveKit with livekit_exposure: host_network serves media on the node's own addresses, so "
        "there is no NAT between the SFU and its clients' ICE candidates; hostNetwork shares the "
        "node's network namespace, which baseline and restricted both forbid",
        host_network),
)


def pod_security_exception(service: Service, ctx: Context) -> PodSecurityException | None:
    return next((e for e in POD_SECURITY_EXCEPTIONS if e.applies(service, ctx)), None)


def exception_namespace(ctx: Context, exception: PodSecurityException) -> str:
    return f"{ctx.namespace}-{exception.name}"


def _namespace(name: str, level: str, reason: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": {
        "app.kubernetes.io/part-of": PART_OF, "app.kubernetes.io/managed-by": "pulumi",
        "pod-security.kubernetes.io/enforce": level,
        "pod-security.kubernetes.io/warn": "restricted"}}
    if reason:
        meta["annotations"] = {"matrix-stack/pod-security-exception": reason}
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": meta}


def namespace(ctx: Context, services: Iterable[Service] = ()) -> dict[str, Any]:
    """The stack's namespace: Pod Security admission enforces ENFORCED_LEVEL on its every pod."""
    return _namespace(ctx.namespace, ENFORCED_LEVEL)


def namespaces(ctx: Context, services: Iterable[Service]) -> list[dict[str, Any]]:
    """The stack's namespace, and one per exception some service falls under."""
    services = list(services)
    out = [namespace(ctx)]
    for exception in POD_SECURITY_EXCEPTIONS:
        if any(exception.applies(s, ctx) for s in services):
            out.append(_namespace(exception_namespace(ctx, exception), exception.level, exception.reason))
    return out


def external_name(service: Service, ctx: Context, target_namespace: str) -> dict[str, Any] | None:
    """A Service in the stack's namespace naming `service`'s own Service in another namespace: the
    addresses the components render (the proxy's upstreams, webhooks) stay its bare name. The
    cluster's DNS domain is assumed to be the default, cluster.local."""
    ports = cluster_service(service)
    if not ports:
        return None
    return {"apiVersion": "v1", "kind": "Service", "metadata": _meta(service.name, ctx, labels(service)),
            "spec": {"type": "ExternalName",
                     "externalName": f"{service.name}.{target_namespace}.svc.cluster.local",
                     "ports": ports}}


def shared_claims(services: Iterable[Service], ctx: Context) -> dict[str, dict[str, Any]]:
    claims: dict[str, dict[str, Any]] = {}
    for service in services:
        for v in service.volumes:
            if v.cache or v.name not in ctx.shared_volumes or v.name in claims:
                continue
            # Several pods on several nodes mount it: the storage class must support RWX.
            spec: dict[str, Any] = {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": v.size}}}
            if ctx.storage_class:
                spec["storageClassName"] = ctx.storage_class
            claims[v.name] = {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                              "metadata": _meta(v.name, ctx, {"app.kubernetes.io/component": service.component}),
                              "spec": spec}
    return {manifest_key(c): c for c in claims.values()}



def borrowed_volumes(services: Iterable[Service]) -> dict[str, str]:
    """volume -> owner, for volumes that one long-running, single-replica workload writes and
    others only read (the backup reading a monolith's media store). The owner keeps its claim
    template, so switching a reader on never swaps the owner's data for an empty claim."""
    writers: dict[str, list[Service]] = {}
    read: set[str] = set()
    for service in services:
        for v in service.volumes:
            if v.cache:
                continue
            if v.read_only:
                read.add(v.name)
            else:
                writers.setdefault(v.name, []).append(service)
    return {name: who[0].name for name, who in writers.items()
            if name in read and len(who) == 1 and not who[0].schedule and who[0].replicas == 1}


def shared_volume_names(services: Iterable[Service]) -> set[str]:
    """Volumes that are standalone claims: mounted by several services, or by a scheduled one
    (a CronJob has no claim templates), unless borrowed from their one owner."""
    services = list(services)
    users: dict[str, set[str]] = {}
    scheduled: set[str] = set()
    for service in services:
        for v in service.volumes:
            if v.cache:
                continue  # each pod's own (pod_volumes)
            users.setdefault(v.name, set()).add(service.name)
            if service.schedule:
                scheduled.add(v.name)
    shared = {name for name, who in users.items() if len(who) > 1} | scheduled
    return shared - set(borrowed_volumes(services))


def masked(service: Service) -> Service:
    """The service as the offline manifests show it: secret files and env replaced by MASK."""
    return dataclasses.replace(
        service,
        files=[dataclasses.replace(f, content=MASK) if f.secret else f for f in service.files],
        secret_env={k: MASK for k in service.secret_env},
    )

