"""The Kubernetes adapter: declares one Pulumi resource per object of the whole graph, once, and
keeps a resolved copy (secrets masked) in `manifests` for the offline render."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from components.platform.contract import Graph
from components.platform.spec import EdgeCertificate, Service
from components.platform.targets import KubernetesCluster
from config.model import StackConfig

from . import EDGE_CERTIFICATE, owned_objects, render
from .objects import MASK, Context, checksum, checksum_inputs, digest, masked, shared_volume_names

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


class KubernetesPlatform(KubernetesCluster):
    def __init__(self, cfg: StackConfig):
        super().__init__(cfg)
        self.ctx = Context.of(cfg)
        self._manifests: dict[str, dict[str, Any]] = {}
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
        namespace: k8s.core.v1.Namespace | None = None
        declared: set[str] = set()
        for owner, key, obj in owned_objects(services, self.ctx, graph.edge_certificate, sums):
            if key in declared:
                continue
            declared.add(key)
            kind = obj["kind"]
            body = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind")}
            if kind == "Namespace":
                namespace = k8s.core.v1.Namespace(key, metadata=body["metadata"],
                                                  opts=pulumi.ResourceOptions(provider=self.provider))
                continue
            extra: dict[str, Any] = {}
            owns_data = kind == "StatefulSet" and any(
                v.name not in shared for s in services if s.name == owner for v in s.volumes)
            if kind == "PersistentVolumeClaim" or owns_data:
                extra = {"protect": self.cfg.protect, "retain_on_delete": self.cfg.protect}
            if kind == "Secret":
                body["string_data"] = {k: pulumi.Output.secret(v) for k, v in body.pop("stringData").items()}
            opts = pulumi.ResourceOptions(parent=parents[owner], provider=self.provider,
                                          depends_on=[namespace] if namespace is not None else [], **extra)
            if kind in _CONSTRUCTORS:
                _CONSTRUCTORS[kind](key, **body, opts=opts)
            else:
                k8s.apiextensions.CustomResource(key, api_version=obj["apiVersion"], kind=kind, **body, opts=opts)
        self._record(services, graph.edge_certificate)

    def _record(self, services: list[Service], held: EdgeCertificate | None) -> None:
        """Fill `manifests` once every value is known (immediately under mocks)."""
        values: list[Any] = []
        for service in services:
            values += [f.content for f in service.files]
            values += list(service.env.values()) + list(service.secret_env.values())
        values.append(self.checksum_key)

        def resolved(flat: list[Any]) -> None:
            it = iter(flat)
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
            self._manifests.clear()
            self._manifests.update({k: json.loads(json.dumps(v)) for k, v in sorted(rendered.items())})

        pulumi.Output.all(*values).apply(resolved)

