"""The Kubernetes adapter: declares one Pulumi resource per object of the whole graph, once, and
offers a resolved copy (secrets masked) in `manifests` for the offline render."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from components.platform import gates
from components.platform.contract import Graph
from components.platform.kubernetes_cluster import KubernetesCluster
from components.platform.spec import EdgeCertificate, Service
from config.model import StackConfig

from . import EDGE_CERTIFICATE, owned_objects, render
from .objects import MASK, Context, checksum, checksum_inputs, digest, masked, shared_volume_names

# The objects a service's pods roll out from: what its gates run before.
_WORKLOADS = ("Deployment", "StatefulSet", "CronJob")
_CONSTRUCTORS: dict[str, Any] = {
    "Namespace": k8s.core.v1.Namespace,
    "ConfigMap": k8s.core.v1.ConfigMap,
    "Secret": k8s.core.v1.Secret,
    "PersistentVolumeClaim": k8s.core.v1.PersistentVolumeClaim,
    "Service": k8s.core.v1.Service,
    "Deployment": k8s.apps.v1.Deployment,
    "StatefulSet": k8s.apps.v1.StatefulSet,
    "CronJob": k8s.batch.v1.CronJob,
    "PodDisruptionBudget": k8s.policy.v1.PodDisruptionBudget,
    "NetworkPolicy": k8s.networking.v1.NetworkPolicy,
    "Ingress": k8s.networking.v1.Ingress,
}


class _Manifests(Mapping[str, Mapping[str, Any]]):
    """Rendered on first read, from the settled Outputs: only the offline render and tests read
    them, after the run, so `pulumi up` never spends time on them."""

    def __init__(self) -> None:
        self._render: Callable[[], dict[str, dict[str, Any]]] | None = None
        self._objects: dict[str, dict[str, Any]] | None = None

    def _rendered(self) -> dict[str, dict[str, Any]]:
        if self._objects is None:
            self._objects = self._render() if self._render is not None else {}
        return self._objects

    def __getitem__(self, key: str) -> Mapping[str, Any]:
        return self._rendered()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._rendered())

    def __len__(self) -> int:
        return len(self._rendered())


def _settled(values: list[Any]) -> list[Any]:
    """The values of Inputs whose Outputs have all resolved (the run is over)."""

    async def values_of() -> list[Any]:
        return [await v.future() if isinstance(v, pulumi.Output) else v for v in values]

    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(values_of())
    finally:
        loop.close()


class KubernetesPlatform(KubernetesCluster):
    def __init__(self, cfg: StackConfig):
        super().__init__(cfg)
        self.ctx = Context.of(cfg)
        self._manifests = _Manifests()
        self._provider: k8s.Provider | None = None
        self._checksum_key: pulumi.Output[str] | None = None

    @property
    def manifests(self) -> Mapping[str, Mapping[str, Any]]:
        return self._manifests

    @property
    def checksum_key(self) -> pulumi.Output[str]:
        """The key of the pods' config checksums (see objects.checksum)."""
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

    def realize(self, graph: Graph) -> None:
        services = [s for s, _parent in graph.services]
        parents: dict[str | None, pulumi.Resource | None] = {s.name: p for s, p in graph.services}
        parents[EDGE_CERTIFICATE] = graph.edge_certificate_owner
        parents[None] = None
        shared = shared_volume_names(services)
        sums = {s.name: checksum(s, self.checksum_key) for s in services}
        namespaces: list[k8s.core.v1.Namespace] = []
        by_name = {s.name: s for s in services}
        workloads: dict[str, pulumi.Resource] = {}
        gated: list[tuple[str, str, dict[str, Any], str, pulumi.Resource | None, dict[str, Any]]] = []
        declared: set[str] = set()
        for owner, key, obj in owned_objects(services, self.ctx, graph.edge_certificate, sums):
            if key in declared:
                continue
            declared.add(key)
            kind = obj["kind"]
            body = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind")}
            if kind == "Namespace":
                namespaces.append(k8s.core.v1.Namespace(key, metadata=body["metadata"],
                                                        opts=pulumi.ResourceOptions(provider=self.provider)))
                continue
            extra: dict[str, Any] = {}
            owns_data = kind == "StatefulSet" and any(
                v.name not in shared for s in services if s.name == owner for v in s.volumes)
            if kind == "PersistentVolumeClaim" or owns_data:
                extra = {"protect": self.cfg.protect, "retain_on_delete": self.cfg.protect}
            if kind == "Secret":
                body["string_data"] = {k: pulumi.Output.secret(v) for k, v in body.pop("stringData").items()}
            parent = parents[owner]
            if parent is not None and (aliases := graph.aliases(parent)):
                extra["aliases"] = aliases
            if kind in _WORKLOADS and owner in by_name and by_name[owner].gates:
                # Declared last, after the workloads its gates wait for (spec.Gate).
                gated.append((key, kind, body, owner, parent, extra))
                continue
            opts = pulumi.ResourceOptions(parent=parent, provider=self.provider,
                                          depends_on=list(namespaces), **extra)
            if kind in _CONSTRUCTORS:
                created = _CONSTRUCTORS[kind](key, **body, opts=opts)
                if kind in _WORKLOADS and owner is not None:
                    workloads[owner] = created
            else:
                k8s.apiextensions.CustomResource(key, api_version=obj["apiVersion"], kind=kind, **body, opts=opts)
        for key, kind, body, owner, parent, extra in gated:
            # The gates run before the workload rolls out, after the workloads they name are
            # ready (pulumi-kubernetes awaits a rollout before it calls a workload created).
            runs_first = [gates.declare(gate, parent, [workloads[n] for n in gate.after if n in workloads])
                          for gate in by_name[owner].gates]
            opts = pulumi.ResourceOptions(parent=parent, provider=self.provider,
                                          depends_on=[*namespaces, *runs_first], **extra)
            workloads[owner] = _CONSTRUCTORS[kind](key, **body, opts=opts)
        self._record(services, graph.edge_certificate)

    def _record(self, services: list[Service], held: EdgeCertificate | None) -> None:
        """Make `manifests` render from every value once read (after the run, under mocks)."""
        values: list[Any] = []
        for service in services:
            values += [f.content for f in service.files]
            values += list(service.env.values()) + list(service.secret_env.values())
        values.append(self.checksum_key)

        def resolved() -> dict[str, dict[str, Any]]:
            it = iter(_settled(values))
            plain = []
            for service in services:
                files = [dataclasses.replace(f, content=next(it)) for f in service.files]
                env = {k: next(it) for k in service.env}
                secret_env = {k: next(it) for k in service.secret_env}
                plain.append(dataclasses.replace(service, files=files, env=env, secret_env=secret_env))
            # Checksums from the real contents, so they equal what the cluster sees.
            key = next(it)
            sums = {s.name: digest(((n, str(v)) for n, v in checksum_inputs(s)), key) for s in plain}
            shown_held = dataclasses.replace(held, certificate=MASK, private_key=MASK) if held else None
            rendered = render([masked(s) for s in plain], self.ctx, shown_held, sums)
            # A JSON round trip: plain, unshared values (YAML would otherwise emit anchors).
            return {k: json.loads(json.dumps(v)) for k, v in sorted(rendered.items())}

        self._manifests._render = resolved

