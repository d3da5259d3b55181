"""matrix-stack's CrossGuard rules, as plain validate functions.

Each rule is `validate(args, report_violation)` as pulumi-policy calls it: `args` has
`resource_type`, `props` (camelCase wire names), `name`, `urn`, `opts` (with `protect`) and
`get_config()`. Nothing here imports pulumi_policy at run time (only for type checking): the pack
runs in its own virtualenv (pulumi-policy pins old protobuf/grpcio), while the tests call these
functions from the project's venv with simple stand-in args. `__main__.py` wraps them in
ResourceValidationPolicy objects; never import it from tests, PolicyPack() blocks forever.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:  # pragma: no cover - types only
    from pulumi_policy import ReportViolation, ResourceValidationArgs
else:
    ReportViolation = Callable[..., None]
    ResourceValidationArgs = Any

# Type tokens.
DOCKER_CONTAINER = "docker:index/container:Container"
DOCKER_IMAGE = "docker:index/remoteImage:RemoteImage"
DOCKER_VOLUME = "docker:index/volume:Volume"
K8S_CONFIGMAP = "kubernetes:core/v1:ConfigMap"
K8S_SERVICE = "kubernetes:core/v1:Service"
K8S_PVC = "kubernetes:core/v1:PersistentVolumeClaim"
K8S_STATEFULSET = "kubernetes:apps/v1:StatefulSet"
K8S_INGRESS = "kubernetes:networking.k8s.io/v1:Ingress"
K8S_WORKLOADS = {
    "kubernetes:apps/v1:Deployment",
    K8S_STATEFULSET,
    "kubernetes:apps/v1:DaemonSet",
    "kubernetes:batch/v1:Job",
    "kubernetes:batch/v1:CronJob",
    "kubernetes:core/v1:Pod",
}

# The stateful backends that must never be reachable from outside the stack's network.
PRIVATE_SERVICES = ("synapse-postgres", "synapse-redis")
ADMIN_PREFIX = "/_synapse/admin"
# A path every admin-API location would serve: any location that matches it must refuse it.
ADMIN_PROBE = "/_synapse/admin/v1/server_version"
UNPINNED_TAGS = {"latest", "stable", "main", "master", "develop", "edge", "nightly"}
PROD_STACKS = {"prod", "production"}


# ---------------------------------------------------------------- helpers


def _unwrap(value: Any) -> Any:
    """Plain data from props: secret values (pulumi_policy.Secret, or the wire form) unwrapped."""
    if type(value).__name__ == "Secret" and hasattr(value, "value"):
        return _unwrap(value.value)
    if isinstance(value, dict):
        if value.get("4dabf18193072939515e22adb298388d") == "1b47061264138c4ac30d75fd1eb44270":
            return _unwrap(value.get("value"))
        return {k: _unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unwrap(v) for v in value]
    return value


def _props(args: Any) -> dict[str, Any]:
    props = _unwrap(getattr(args, "props", None) or {})
    return props if isinstance(props, dict) else {}


def _k8s_name(props: dict[str, Any]) -> str:
    metadata = props.get("metadata") or {}
    return str(metadata.get("name") or "")


def _files(args: Any, suffix: str) -> Iterator[tuple[str, str]]:
    """(where, text) of every file named `*suffix` the resource delivers (TargetResources.files)."""
    reader = _READERS.files.get(args.resource_type)
    if reader is not None:
        for where, name, content in reader(args, _props(args)):
            if name.endswith(suffix):
                yield where, content


def _stack(args: Any) -> str:
    """The stack being previewed: pulumi-policy has no stack name in args, so the pack reads it
    from policy config (`stack`), falling back to the resource URN (urn:pulumi:<stack>::...)."""
    get_config = getattr(args, "get_config", None)
    if callable(get_config):
        config = get_config() or {}
        if config.get("stack"):
            return str(config["stack"])
    urn = str(getattr(args, "urn", "") or "")
    parts = urn.split(":")
    return parts[2] if urn.startswith("urn:pulumi:") and len(parts) > 2 else ""


# ---------------------------------------------------------------- nginx


@dataclass(frozen=True)
class Location:
    modifier: str  # "", "=", "~", "~*", "^~"
    pattern: str
    body: str  # the block's own directives (nested blocks removed)


_LOCATION_RE = re.compile(r"\blocation\s+(=|~\*|~|\^~)?\s*(\"[^\"]*\"|'[^']*'|[^\s{]+)\s*\{")


def nginx_locations(text: str) -> list[Location]:
    """Every `location` block with its top-level directives (comments stripped)."""
    text = re.sub(r"#[^\n]*", "", text)
    found = []
    for match in _LOCATION_RE.finditer(text):
        depth, i, body = 1, match.end(), []
        while i < len(text) and depth:
            ch = text[i]
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            elif depth == 1:
                body.append(ch)
            i += 1
        found.append(Location(match.group(1) or "", match.group(2).strip("\"'"), "".join(body)))
    return found


def _matches(location: Location, path: str) -> bool:
    if location.modifier == "=":
        return path == location.pattern
    if location.modifier in ("~", "~*"):
        pattern = location.pattern.replace("(?<", "(?P<").replace("(?P<=", "(?<=").replace("(?P<!", "(?<!")
        try:
            return re.search(pattern, path, re.IGNORECASE if location.modifier == "~*" else 0) is not None
        except re.error:
            return ADMIN_PREFIX in location.pattern
    return path.startswith(location.pattern)


def _refuses(location: Location) -> bool:
    directives = [d.strip() for d in location.body.split(";")]
    return "deny all" in directives or any(re.fullmatch(r"return\s+4\d\d(\s.*)?", d) for d in directives)


_UPSTREAM_RE = re.compile(r"\bupstream\s+([^\s{]+)\s*\{([^}]*)\}")
_PROXY_PASS_RE = re.compile(r"\b(?:proxy_pass|uwsgi_pass|fastcgi_pass|grpc_pass)\s+([^;]+);")


def _synapse_upstreams(text: str) -> set[str]:
    """Upstream names whose name or servers mention synapse."""
    return {name for name, body in _UPSTREAM_RE.findall(text) if "synapse" in (name + body).lower()}


def _reaches_synapse(location: Location, synapse_upstreams: set[str]) -> bool:
    """Whether the location hands requests to Synapse (a variable target counts: it might)."""
    for target in _PROXY_PASS_RE.findall(location.body):
        host = re.sub(r"^[a-z]+://", "", target.strip()).split("/")[0].split(":")[0]
        if "$" in target or "synapse" in host.lower() or host in synapse_upstreams:
            return True
    return False


def admin_api_exposures(text: str) -> list[str]:
    """The locations that could serve the Synapse admin API without `deny all`: every location
    whose pattern names /_synapse/admin, and every other one that matches an admin path and
    passes it to Synapse (a `location /` proxying to Element Web serves no admin API)."""
    upstreams = _synapse_upstreams(re.sub(r"#[^\n]*", "", text))
    bad = []
    for location in nginx_locations(text):
        about_admin = ADMIN_PREFIX in location.pattern or (
            _matches(location, ADMIN_PROBE) and _reaches_synapse(location, upstreams))
        if about_admin and not _refuses(location):
            bad.append(f"location {location.modifier} {location.pattern}".replace("  ", " "))
    return bad


# ---------------------------------------------------------------- what each target's resources hold
#
# The rules are written once; what they read from a resource depends on the target's resource
# type, and each target says it here in one entry of TARGETS (the pack runs in its own
# virtualenv and imports nothing of the program, so it keeps its own table).

Files = Callable[[Any, dict[str, Any]], Iterator[tuple[str, str, str]]]  # (where, file name or key, text)
Pairs = Callable[[Any, dict[str, Any]], Iterator[tuple[str, str]]]
Messages = Callable[[Any, dict[str, Any]], Iterator[str]]


@dataclass(frozen=True)
class TargetResources:
    """What the rules read from one target's resources, by Pulumi type token."""

    files: dict[str, Files] = field(default_factory=dict)  # the files a resource delivers
    routes: dict[str, Pairs] = field(default_factory=dict)  # (where, path) a resource routes from outside
    exposures: dict[str, Messages] = field(default_factory=dict)  # a private service published
    images: dict[str, Pairs] = field(default_factory=dict)  # (where, image) a resource runs
    holds_data: dict[str, Callable[[dict[str, Any]], bool]] = field(default_factory=dict)


def _private(name: str) -> bool:
    return name in PRIVATE_SERVICES


def _container_uploads(args: Any, props: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    for upload in props.get("uploads") or []:
        content = upload.get("content") if isinstance(upload, dict) else None
        if isinstance(content, str):
            yield f"{props.get('name', args.name)}:{upload['file']}", str(upload.get("file", "")), content


def _container_ports(args: Any, props: dict[str, Any]) -> Iterator[str]:
    name = str(props.get("name") or args.name)
    if _private(name) and props.get("ports"):
        yield f"container {name} publishes ports {props['ports']!r}: keep it on the private network"


def _remote_image(args: Any, props: dict[str, Any]) -> Iterator[tuple[str, str]]:
    yield f"RemoteImage {args.name}", str(props.get("name") or "")


DOCKER = TargetResources(
    files={DOCKER_CONTAINER: _container_uploads},
    exposures={DOCKER_CONTAINER: _container_ports},
    images={DOCKER_IMAGE: _remote_image},
    holds_data={DOCKER_VOLUME: lambda props: True},
)


def _configmap_data(args: Any, props: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    # The Kubernetes adapter flattens paths into keys ending in the file's name.
    for key, content in sorted((props.get("data") or {}).items()):
        if isinstance(content, str):
            yield f"ConfigMap {_k8s_name(props) or args.name}:{key}", str(key), content


def _ingress_paths(args: Any, props: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for rule in (props.get("spec") or {}).get("rules") or []:
        for path in ((rule or {}).get("http") or {}).get("paths") or []:
            yield f"Ingress {args.name}", str((path or {}).get("path") or "")


def _service_type(args: Any, props: dict[str, Any]) -> Iterator[str]:
    name = _k8s_name(props) or args.name
    if any(name == s or name.startswith(s + "-") for s in PRIVATE_SERVICES):
        kind = (props.get("spec") or {}).get("type") or "ClusterIP"
        if kind != "ClusterIP":
            yield f"Service {name} is of type {kind}: it must be ClusterIP"


def _pod_images(args: Any, props: dict[str, Any]) -> Iterator[tuple[str, str]]:
    spec = props.get("spec") or {}
    if args.resource_type == "kubernetes:batch/v1:CronJob":
        spec = ((spec.get("jobTemplate") or {}).get("spec")) or {}
    pod = spec if args.resource_type == "kubernetes:core/v1:Pod" else ((spec.get("template") or {}).get("spec") or {})
    for group in ("initContainers", "containers"):
        for container in pod.get(group) or []:
            yield f"{args.name} container {container.get('name', '?')}", str(container.get("image") or "")


KUBERNETES = TargetResources(
    files={K8S_CONFIGMAP: _configmap_data},
    routes={K8S_INGRESS: _ingress_paths},
    exposures={K8S_SERVICE: _service_type},
    images=dict.fromkeys(K8S_WORKLOADS, _pod_images),
    holds_data={K8S_PVC: lambda props: True,
                K8S_STATEFULSET: lambda props: bool((props.get("spec") or {}).get("volumeClaimTemplates"))},
)

TARGETS = {"docker": DOCKER, "kubernetes": KUBERNETES}


def _merged(targets: dict[str, TargetResources]) -> TargetResources:
    merged = TargetResources()
    for resources in targets.values():
        for table in ("files", "routes", "exposures", "images", "holds_data"):
            getattr(merged, table).update(getattr(resources, table))
    return merged


_READERS = _merged(TARGETS)
# The types whose resources may hold data (the protection rule's scope).
STATEFUL_TYPES = set(_READERS.holds_data)


# ---------------------------------------------------------------- the rules


def no_public_admin_api(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    """Every proxy location that matches /_synapse/admin must `deny all` (an allowlist may come
    before it); no Ingress may route /_synapse/admin past the proxy."""
    for where, text in _files(args, "nginx.conf"):
        for location in admin_api_exposures(text):
            report_violation(f"{where}: '{location}' serves the Synapse admin API without 'deny all'", None)
    reader = _READERS.routes.get(args.resource_type)
    for where, value in reader(args, _props(args)) if reader is not None else ():
        if value.startswith(ADMIN_PREFIX) or value.startswith("/_synapse/adm"):
            report_violation(f"{where}: path {value} exposes the Synapse admin API", None)


def registration_needs_token_or_captcha(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    """`enable_registration: true` only with a registration token, a captcha or a required 3PID."""
    for where, text in _files(args, "homeserver.yaml"):
        try:
            config = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            report_violation(f"{where}: homeserver.yaml does not parse: {exc}", None)
            continue
        if not isinstance(config, dict) or config.get("enable_registration") is not True:
            continue
        if (config.get("registration_requires_token") is True
                or config.get("enable_registration_captcha") is True
                or config.get("registrations_require_3pid")):
            continue
        report_violation(
            f"{where}: enable_registration is true without registration_requires_token, "
            "enable_registration_captcha or registrations_require_3pid (open registration invites spam)",
            None,
        )


def database_and_redis_private(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    """PostgreSQL and Redis are never published: no Docker ports, only ClusterIP Services."""
    reader = _READERS.exposures.get(args.resource_type)
    for message in reader(args, _props(args)) if reader is not None else ():
        report_violation(message, None)


def image_problem(image: str) -> str | None:
    """Why `image` is not pinned, or None: it needs a digest or an explicit, non-moving tag."""
    if "@sha256:" in image:
        return None
    last = image.rsplit("/", 1)[-1]
    if ":" not in last:
        return "has no tag (means latest)"
    tag = last.rsplit(":", 1)[1]
    if tag.lower() in UNPINNED_TAGS:
        return f"uses the moving tag '{tag}'"
    return None


def images_pinned(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    """Docker images and Kubernetes container images name a version tag or a digest."""
    reader = _READERS.images.get(args.resource_type)
    for where, image in reader(args, _props(args)) if reader is not None else ():
        problem = image_problem(image) if image else "has no image"
        if problem:
            report_violation(f"{where}: image '{image}' {problem}; pin a version tag or digest", None)


def holds_data(args: Any) -> bool:
    """Volumes and PVCs, and StatefulSets that own volume claim templates (one that only mounts a
    shared claim holds nothing itself: the claim is what must be protected)."""
    judge = _READERS.holds_data.get(args.resource_type)
    return judge is not None and judge(_props(args))


def stateful_protected_in_prod(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    """In prod, Docker volumes, Kubernetes PVCs and data-owning StatefulSets carry `protect`."""
    if not holds_data(args) or _stack(args) not in PROD_STACKS:
        return
    opts = getattr(args, "opts", None)
    if not getattr(opts, "protect", False):
        report_violation(f"{args.resource_type} {args.name} holds data but is not protected in {_stack(args)} "
                         "(set matrix-stack:protect: true)", None)


@dataclass(frozen=True)
class Rule:
    name: str
    description: str
    validate: Callable[[Any, Any], None]


RULES = [
    Rule("no-public-admin-api", "The Synapse admin API is refused on every public route.", no_public_admin_api),
    Rule("registration-needs-token-or-captcha",
         "Open registration requires a registration token, a captcha or a 3PID.",
         registration_needs_token_or_captcha),
    Rule("database-and-redis-private", "PostgreSQL and Redis are never published outside the stack.",
         database_and_redis_private),
    Rule("images-pinned", "Every image names a version tag or a digest, never latest.", images_pinned),
    Rule("stateful-protected-in-prod", "Volumes, StatefulSets and PVCs are protected in prod.",
         stateful_protected_in_prod),
]
