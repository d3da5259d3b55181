"""The Ingresses in front of the routing proxy, and the Secret of the certificate the program
holds. Pure.

Hostnames whose certificate the program holds (Cloudflare Origin CA for proxied names, or the
operator's provided one) share one Ingress whose TLS Secret carries it (cert-manager's HTTP-01
challenge would end at Cloudflare's edge); every other hostname is reached directly and shares
one Ingress whose certificate cert-manager issues. The proxy behind both speaks plain HTTP.
"""

from __future__ import annotations

from typing import Any

import pulumi

from components.platform.spec import EdgeCertificate, Service

from .objects import Context, _meta, labels, manifest_key

# cert-manager's Secret for the directly reached hostnames (the name predates the split, so
# existing stacks keep their issued certificate).
TLS_SECRET = "matrix-stack-tls"
ORIGIN_CA_SECRET = "matrix-stack-origin-ca-tls"
ORIGIN_CA_SUFFIX = "-origin-ca"


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


def ingresses(edge: Service, ctx: Context, held: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """The Ingresses in front of the routing proxy: one for the hostnames whose certificate the
    program holds (`held`), one cert-manager fills for the others; one without hosts is left out."""
    assert edge.edge is not None
    if not any(p.name == "http" and p.public for p in edge.ports):
        raise ValueError(f"{edge.name}: the Ingress needs a public plain http port")
    hosts = list(edge.edge.hostnames)
    if not edge.edge.tls:
        return [_ingress(edge, ctx, edge.name, hosts, None, None)] if hosts else []
    origin = [h for h in hosts if h in held]
    direct = [h for h in hosts if h not in held]
    out = []
    if origin:
        # No cert-manager annotation: an HTTP-01 challenge would end at Cloudflare's edge.
        out.append(_ingress(edge, ctx, edge.name + ORIGIN_CA_SUFFIX, origin, ORIGIN_CA_SECRET, None))
    if direct:
        out.append(_ingress(edge, ctx, edge.name, direct, TLS_SECRET, ctx.cert_manager_issuer))
    return out


def origin_ca_secret(ctx: Context, certificate: pulumi.Input[str], private_key: pulumi.Input[str]) -> dict[str, Any]:
    """The held certificate's Secret, in the kubernetes.io/tls form ingress controllers read."""
    return {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": _meta(ORIGIN_CA_SECRET, ctx, {"app.kubernetes.io/component": "tls"}),
            "stringData": {"tls.crt": certificate, "tls.key": private_key}}


def edge_objects(edge: Service, ctx: Context, held: EdgeCertificate | None) -> dict[str, dict[str, Any]]:
    """The routing proxy's Ingresses, and the held certificate's Secret when an Ingress reads it."""
    objects: dict[str, dict[str, Any]] = {}
    for obj in ingresses(edge, ctx, held.hostnames if held is not None else ()):
        if obj["metadata"]["name"].endswith(ORIGIN_CA_SUFFIX):
            assert held is not None
            secret = origin_ca_secret(ctx, held.certificate, held.private_key)
            objects[manifest_key(secret)] = secret
        objects[manifest_key(obj)] = obj
    return objects
