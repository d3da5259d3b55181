"""Kubernetes target: services become Deployments or StatefulSets in one namespace.

- objects.py: the plain object dicts for each service and the namespace-wide ones (pure);
- roles.py: what a role's instances share: disruption budget, network policy, monitor (pure);
- edge.py: the Ingresses in front of the routing proxy and the held certificate's Secret (pure);
- platform.py: the adapter that declares one Pulumi resource per object (loads the SDK).

This module renders the whole graph (pure) and re-exports the builders tests and tools use.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping

import pulumi

from components.platform.spec import EdgeCertificate, Service

from .edge import ORIGIN_CA_SECRET, ORIGIN_CA_SUFFIX, TLS_SECRET, edge_objects, ingresses, origin_ca_secret
from .objects import (
    CHECKSUM_ANNOTATION,
    ENFORCED_LEVEL,
    MASK,
    METRICS_LABEL,
    NAME_LABEL,
    PART_OF,
    POD_SECURITY_EXCEPTIONS,
    Context,
    borrowed_volumes,
    checksum,
    checksum_inputs,
    config_object_name,
    digest,
    env_secrets,
    exception_namespace,
    external_name,
    file_key,
    file_objects,
    is_edge,
    labels,
    manifest_key,
    masked,
    namespace,
    namespaces,
    pod_security_exception,
    pod_template,
    render_service,
    shared_claims,
    shared_volume_names,
    workload,
)
from .roles import disruption_budgets, namespace_policies, network_policies, network_policy, roles, service_monitors

# The owner of an object that belongs to the held certificate rather than to a service.
EDGE_CERTIFICATE = ":edge-certificate"
Owned = tuple[str | None, str, dict]  # (owning service or EDGE_CERTIFICATE or None, key, object)


def owned_objects(services: list[Service], ctx: Context, held: EdgeCertificate | None = None,
            checksums: Mapping[str, pulumi.Input[str]] | None = None) -> Iterator[Owned]:
    """Every object of the graph once, with the service that owns it. `checksums` (service name ->
    config checksum) defaults to the plain sha256 of each service's files."""
    ctx = dataclasses.replace(ctx, shared_volumes=ctx.shared_volumes | shared_volume_names(services),
                              borrowed=tuple(sorted(borrowed_volumes(services).items())))
    for ns in namespaces(ctx, services):
        yield None, manifest_key(ns), ns
    # Pods that cannot pass the stack namespace's Pod Security level live in their exception's
    # namespace; a Service of the stack's namespace keeps their bare names resolving.
    moved: dict[str, list[Service]] = {}
    for service in services:
        exception = pod_security_exception(service, ctx)
        if exception is not None:
            moved.setdefault(exception_namespace(ctx, exception), []).append(service)
    away = {s.name for group in moved.values() for s in group}
    home = [s for s in services if s.name not in away]
    ctx = dataclasses.replace(ctx, homes=tuple((s.name, name) for name, group in moved.items() for s in group))
    yield from _owned_in(home, ctx, held, checksums, services)
    for name, group in moved.items():
        for service in group:
            alias = external_name(service, ctx, name)
            if alias is not None:
                yield service.name, f"{manifest_key(alias)}-{ctx.namespace}", alias
        yield from _owned_in(group, dataclasses.replace(ctx, namespace=name, clients_namespace=ctx.namespace),
                             held, checksums, services)


def _owned_in(services: list[Service], ctx: Context, held: EdgeCertificate | None,
              checksums: Mapping[str, pulumi.Input[str]] | None, everyone: list[Service]) -> Iterator[Owned]:
    """The objects of `services` in ctx's namespace; `everyone` is every service of the stack,
    in any namespace (the peers their network policies name)."""
    for obj in namespace_policies(everyone, ctx):
        # An exception's namespace has the same policies: its objects' keys name the namespace.
        suffix = f"-{ctx.namespace}" if ctx.clients_namespace else ""
        yield None, f"{manifest_key(obj)}{suffix}", obj
    readers: dict[str, str] = {}
    for service in services:
        for f in service.files:
            readers.setdefault(config_object_name(service, f), service.name)
    for key, obj in file_objects(services, ctx).items():
        yield readers[obj["metadata"]["name"]], key, obj
    for service in services:
        for key, obj in shared_claims([service], ctx).items():
            yield service.name, key, obj
    for owner, obj in [*env_secrets(services, ctx), *disruption_budgets(services, ctx),
                       *network_policies(services, ctx, everyone)]:
        yield owner, manifest_key(obj), obj
    for service in services:
        sum_ = checksums[service.name] if checksums is not None else checksum(service)
        for key, obj in render_service(service, ctx, sum_).items():
            yield service.name, key, obj
        if is_edge(service):
            for key, obj in edge_objects(service, ctx, held).items():
                yield (EDGE_CERTIFICATE if obj["kind"] == "Secret" else service.name), key, obj
    for key, obj in service_monitors(services, ctx).items():
        if obj["kind"] == "PrometheusRule":
            yield obj["metadata"]["name"], key, obj
            continue
        if obj["kind"] == "Probe":  # named after the service that schedules it
            yield next(s.name for s in services if s.probe_jobs and obj["metadata"]["name"].startswith(f"{s.name}-")), key, obj
            continue
        # Its selector names the workload's labels and the label of the Service it scrapes.
        match = {k: v for k, v in obj["spec"]["selector"]["matchLabels"].items() if k != METRICS_LABEL}
        owner = next(s.name for s in services if match.items() <= labels(s).items())
        yield owner, key, obj


def render(services: list[Service], ctx: Context, held: EdgeCertificate | None = None,
           checksums: Mapping[str, pulumi.Input[str]] | None = None) -> dict[str, dict]:
    """Every object for `services` (contents as given: strings, or Outputs under Pulumi), by key;
    `held` is the certificate the program holds for some of the edge's hostnames."""
    out: dict[str, dict] = {}
    for _owner, key, obj in owned_objects(services, ctx, held, checksums):
        out.setdefault(key, obj)
    return out


__all__ = [
    "CHECKSUM_ANNOTATION", "EDGE_CERTIFICATE", "ENFORCED_LEVEL", "MASK", "NAME_LABEL", "ORIGIN_CA_SECRET", "ORIGIN_CA_SUFFIX",
    "PART_OF", "POD_SECURITY_EXCEPTIONS", "TLS_SECRET", "Context", "checksum", "checksum_inputs", "digest", "edge_objects", "file_key", "file_objects",
    "ingresses", "labels", "manifest_key", "masked", "namespace", "namespace_policies", "namespaces", "network_policies", "network_policy", "owned_objects",
    "origin_ca_secret", "pod_template", "render", "render_service", "roles", "service_monitors", "workload",
]
