"""python -m render.diff --base REF --head REF|WORKTREE [--stack dev,staging,prod]

The offline diff: render every stack at two commits (under Pulumi's mocks, no credentials) and
print a Markdown summary of what changed: resources (added, removed, changed with the input keys
that differ), services, and the generated files, with a unified diff of every non-secret file,
and what the change costs: each changed container updated in place or replaced, and the routes
(read from the head's rendered nginx.conf) unavailable while it is replaced; Kubernetes rollouts.
It needs no secrets, so it runs for pull requests from forks too.

The comparison (`compare`, `markdown`) is pure: it reads two trees written by `python -m render`.
"""

from __future__ import annotations

import argparse
import difflib
import io
import json
import re
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
WORKTREE = "WORKTREE"
MASK = "[secret]"  # how resources.json shows a secret input (render.offline.MASK)
# Options that matter to a reviewer besides the inputs (protect on prod data, above all).
RESOURCE_OPTIONS = ("protect", "retainOnDelete", "deleteBeforeReplace", "parent", "provider")
# Limits that keep the summary inside a PR comment (GitHub refuses bodies above 65,536 chars).
MAX_DIFF_LINES = 80
MAX_CHARS = 60_000

CONTAINER = "docker:index/container:Container"
# The docker.Container inputs (Pulumi names) pulumi-docker updates in place: every attribute of the
# container schema without ForceNew. Read from internal/provider/resource_docker_container.go of
# kreuzwerker/terraform-provider-docker at tag v4.5.0, the `upstream` submodule of
# pulumi/pulumi-docker at v5.1.0 (unchanged after it in the snapshot read; the v5.2.0 tag was not in
# it: re-read on a pin bump). Every other input (image, command, envs, labels, uploads, ports,
# volumes, mounts, networksAdvanced, user, logOpts, ...) is ForceNew: a change replaces the
# container. Of these, resourceDockerContainerUpdate (resource_docker_container_funcs.go) applies
# to the running container only restart, maxRetryCount, cpuShares, memory, memoryReservation,
# cpuSet, memorySwap and the device_* throttles; the others change Pulumi's state alone (a
# changed healthcheck reaches Docker only with the next replacement). Computed-only attributes
# (exitCode, containerLogs, bridge, networkData) are no inputs.
DOCKER_IN_PLACE_INPUTS = frozenset({
    "restart", "maxRetryCount", "cpuShares", "cpuSet", "cpuPeriod", "cpuQuota",
    "memory", "memoryReservation", "memorySwap",
    "deviceReadBps", "deviceReadIops", "deviceWriteBps", "deviceWriteIops",
    "rm", "start", "mustRun", "wait", "waitTimeout", "attach", "logs", "removeVolumes",
    "destroyGraceSeconds", "containerReadRefreshTimeoutMilliseconds",
    "healthcheck", "tmpfs", "init",
})
# Options that replace a resource when they change (a new provider is a new resource).
REPLACING_OPTIONS = frozenset({"provider"})
UPDATED = "updated in place"
REPLACED = "replaced"
# How a replaced container is replaced: deleted before its replacement is created
# (deleteBeforeReplace: its service is down meanwhile), or its replacement created first and the
# old one deleted at the end of the update (a name of its own revision: it keeps serving).
DELETE_FIRST = "delete first"
NEW_FIRST = "new first"


# ---------------------------------------------------------------- the comparison


@dataclass
class ResourceChange:
    kind: str  # added | removed | changed
    type: str
    name: str
    keys: list[str] = field(default_factory=list)  # inputs / options that differ
    delete_first: bool = True  # the head's deleteBeforeReplace

    @property
    def effect(self) -> str | None:
        """For a changed container: updated in place, or replaced (any ForceNew input changed).
        With deleteBeforeReplace the old container is deleted before its replacement is created,
        so its service is down meanwhile; without it (a container named after its revision) the
        new one is created first and the old one deleted at the end of the update."""
        if self.kind != "changed" or self.type != CONTAINER:
            return None
        for key in self.keys:
            name = key.split(" ", 1)[0]
            if name.startswith("["):
                if name.strip("[]") in REPLACING_OPTIONS:
                    return REPLACED
            elif name not in DOCKER_IN_PLACE_INPUTS:
                return REPLACED
        return UPDATED


@dataclass
class Cost:
    """What one change costs while it is applied."""

    name: str  # the container or Kubernetes workload
    effect: str  # updated in place | replaced | rolled
    unavailable: list[str] = field(default_factory=list)
    note: str = ""


@dataclass
class ServiceChange:
    kind: str
    name: str
    keys: list[str] = field(default_factory=list)


@dataclass
class FileChange:
    kind: str
    path: str  # <service>/<path in the container>, as under files/
    secret: bool
    diff: list[str] = field(default_factory=list)  # unified diff lines (empty for secret files)


@dataclass
class StackDiff:
    stack: str
    resources: list[ResourceChange] = field(default_factory=list)
    services: list[ServiceChange] = field(default_factory=list)
    files: list[FileChange] = field(default_factory=list)
    manifests: list[ServiceChange] = field(default_factory=list)
    costs: list[Cost] = field(default_factory=list)
    error: str | None = None

    @property
    def empty(self) -> bool:
        return not (self.resources or self.services or self.files or self.manifests or self.error)


@dataclass(frozen=True)
class Tree:
    """One rendered stack: the parsed resources.json / services.json and the files' text."""

    resources: list[dict[str, Any]]
    services: list[dict[str, Any]]
    files: dict[str, tuple[str, bool]]  # "<service>/<path>" -> (content, secret)
    manifests: dict[str, str]
    fingerprints: dict[str, dict[str, str]] = field(default_factory=dict)  # urn -> key -> hash

    @classmethod
    def empty(cls) -> Tree:
        return cls([], [], {}, {})

    @classmethod
    def load(cls, root: Path) -> Tree:
        resources = json.loads((root / "resources.json").read_text())
        services = json.loads((root / "services.json").read_text())
        files: dict[str, tuple[str, bool]] = {}
        for service in services:
            for f in service.get("files", []):
                key = f"{service['name']}/{f['path'].lstrip('/')}"
                files[key] = ((root / f["rendered"]).read_text(), bool(f.get("secret")))
        manifests = {}
        if (root / "manifests").is_dir():
            manifests = {p.stem: p.read_text() for p in sorted((root / "manifests").glob("*.yaml"))}
        fingerprints = {}
        if (root / "fingerprints.json").is_file():
            fingerprints = json.loads((root / "fingerprints.json").read_text())
        return cls(resources, services, files, manifests, fingerprints)


def _changed_keys(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def _upload_paths(old: Any, new: Any) -> list[str]:
    """The container files whose upload differs (Docker `uploads` is a list keyed by `file`)."""

    def by_file(value: Any) -> dict[str, Any]:
        if not isinstance(value, list):
            return {}
        return {u.get("file", "?"): u for u in value if isinstance(u, dict)}

    a, b = by_file(old), by_file(new)
    return sorted(p for p in set(a) | set(b) if a.get(p) != b.get(p))


def compare_resources(
    base: list[dict[str, Any]],
    head: list[dict[str, Any]],
    base_fingerprints: Mapping[str, Mapping[str, str]] | None = None,
    head_fingerprints: Mapping[str, Mapping[str, str]] | None = None,
    changed_files: Mapping[str, list[str]] | None = None,
) -> list[ResourceChange]:
    """Resources keyed by URN. Inputs holding a secret are masked in resources.json; their
    fingerprints (fingerprints.json) tell whether they changed. `changed_files` (service name ->
    paths) names the files behind a masked `uploads` change of the container of that name."""
    old = {r["urn"]: r for r in base}
    new = {r["urn"]: r for r in head}
    old_fp, new_fp = base_fingerprints or {}, head_fingerprints or {}
    changes: list[ResourceChange] = []

    def order(urn: str) -> tuple[str, str]:
        r = old.get(urn) or new[urn]
        return r["type"], r["name"]

    for urn in sorted(set(old) | set(new), key=order):
        a, b = old.get(urn), new.get(urn)
        if a is None:
            assert b is not None
            changes.append(ResourceChange("added", b["type"], b["name"]))
            continue
        if b is None:
            changes.append(ResourceChange("removed", a["type"], a["name"]))
            continue
        a_in, b_in = a.get("inputs", {}), b.get("inputs", {})
        a_fp, b_fp = old_fp.get(urn, {}), new_fp.get(urn, {})
        keys = []
        for key in sorted(set(a_in) | set(b_in)):
            if a_in.get(key) == b_in.get(key) and a_fp.get(key) == b_fp.get(key):
                continue
            masked = a_in.get(key) == MASK and b_in.get(key) == MASK
            if key == "uploads":
                # A service's files are uploaded to its holder, `<service>-files`.
                paths = (changed_files or {}).get(b["name"].removesuffix("-files"), []) if masked else \
                    _upload_paths(a_in.get(key), b_in.get(key))
                keys.append(f"uploads ({', '.join(paths)})" if paths else "uploads")
            else:
                keys.append(f"{key} (secret)" if masked else key)
        keys += [f"[{opt}]" for opt in RESOURCE_OPTIONS if a.get(opt) != b.get(opt)]
        if keys:
            changes.append(ResourceChange("changed", b["type"], b["name"], keys,
                                          delete_first=bool(b.get("deleteBeforeReplace", True))))
    return changes


def compare_services(base: list[dict[str, Any]], head: list[dict[str, Any]]) -> list[ServiceChange]:
    old = {s["name"]: s for s in base}
    new = {s["name"]: s for s in head}
    changes: list[ServiceChange] = []
    for name in sorted(set(old) | set(new)):
        a, b = old.get(name), new.get(name)
        if a is None:
            changes.append(ServiceChange("added", name))
        elif b is None:
            changes.append(ServiceChange("removed", name))
        else:
            keys = _changed_keys(a, b)
            if keys:
                changes.append(ServiceChange("changed", name, keys))
    return changes


def compare_files(base: Mapping[str, tuple[str, bool]], head: Mapping[str, tuple[str, bool]]) -> list[FileChange]:
    changes: list[FileChange] = []
    for path in sorted(set(base) | set(head)):
        a, b = base.get(path), head.get(path)
        if a == b:
            continue
        secret = bool((a and a[1]) or (b and b[1]))
        kind = "added" if a is None else "removed" if b is None else "changed"
        lines: list[str] = []
        if not secret:
            lines = list(difflib.unified_diff(
                (a[0] if a else "").splitlines(), (b[0] if b else "").splitlines(),
                fromfile=f"a/{path}" if a else "/dev/null", tofile=f"b/{path}" if b else "/dev/null",
                lineterm="", n=2,
            ))
        changes.append(FileChange(kind, path, secret, lines))
    return changes


# ---------------------------------------------------------------- what a change costs


@dataclass
class Site:
    """One nginx server block: its hostnames and, per route ($synapse_route), the targets it
    proxies to: (pool or address, the request methods sent there, "" for every method)."""

    names: tuple[str, ...]
    routes: dict[str, list[tuple[str, str]]] = field(default_factory=dict)


@dataclass
class ProxyRoutes:
    """The routes of a rendered nginx.conf: pools (upstream -> servers' hosts) and sites."""

    pools: dict[str, list[str]] = field(default_factory=dict)
    sites: list[Site] = field(default_factory=list)

    def hosts(self, target: str) -> list[str]:
        return self.pools.get(target, [target])


def _host(address: str) -> str:
    return address.split("/", 1)[0].rsplit(":", 1)[0]


def parse_nginx(text: str) -> ProxyRoutes:
    """Upstream blocks, `map $request_method` pools, and each server's `set $synapse_route` +
    `proxy_pass` pairs (components/nginx.set_route, proxy_block)."""
    routes = ProxyRoutes()
    maps: dict[str, list[tuple[str, str]]] = {}
    pending: list[tuple[Site, str, str]] = []  # (site, route, proxy_pass target)
    stack: list[tuple[str, str]] = []  # (block kind, its name)
    site: Site | None = None
    server_route = location_route = "none"
    for raw in text.splitlines():
        line = raw.strip()
        words = line.rstrip(";{").split()
        if line.endswith("{"):
            kind = words[0] if words else ""
            name = words[1] if kind == "upstream" else words[-1] if kind == "map" else ""
            stack.append((kind, name))
            if kind == "server":
                site, server_route = Site(()), "none"
                routes.sites.append(site)
            elif kind == "location":
                location_route = server_route
            elif kind == "map" and words[1] == "$request_method":
                maps[name] = []
            continue
        if line == "}":
            if stack and stack.pop()[0] == "server":
                site = None
            continue
        kind, name = stack[-1] if stack else ("", "")
        if kind == "upstream" and words[:1] == ["server"]:
            routes.pools.setdefault(name, []).append(_host(words[1]))
        elif kind == "map" and name in maps and len(words) == 2:
            maps[name].append((words[0], words[1]))
        elif site is not None and words[:1] == ["server_name"]:
            site.names += tuple(words[1:])
        elif site is not None and words[:2] == ["set", "$synapse_route"]:
            if kind == "location":
                location_route = words[2]
            else:
                server_route = words[2]
        elif site is not None and words[:1] == ["proxy_pass"]:
            route = location_route if kind == "location" else server_route
            pending.append((site, route, re.sub(r"^https?://", "", words[1])))
    for site_, route, target in pending:
        targets = site_.routes.setdefault(route, [])
        if target.startswith("$") and target in maps:
            by_pool: dict[str, list[str]] = {}
            for method, pool in maps[target]:
                by_pool.setdefault(pool, []).append(method)
            for pool, sent in by_pool.items():
                targets.append((pool, "other methods" if "default" in sent else "/".join(sent)))
        else:
            address = target.split("/", 1)[0]
            targets.append((address if address in routes.pools else _host(address), ""))
    return routes


def _service_name(resource: Mapping[str, Any]) -> str:
    """The name others dial the container at: its network alias (a container replaced new
    first has a name of its own revision and the service's name as its alias)."""
    inputs = resource.get("inputs", {})
    for network in inputs.get("networksAdvanced") or []:
        if isinstance(network, dict) and network.get("aliases"):
            return str(network["aliases"][0])
    return str(inputs.get("name") or resource["name"])


def _sites_text(names: Iterable[str]) -> str:
    return ", ".join(_code(n) for n in names) or "the default server"


def _chained(changes: list[ResourceChange], containers: Mapping[str, Mapping[str, Any]]) -> dict[str, list[str]]:
    """Pulumi's delete-before-replace chains: before it deletes a container replaced with
    deleteBeforeReplace, it deletes (and then replaces) every container an input of which comes
    from it, unless the provider updates that input in place; transitively. name -> causes."""
    replaced_first = {c.name for c in changes if c.type == CONTAINER and c.effect == REPLACED and c.delete_first}
    urn_of = {name: r["urn"] for name, r in containers.items()}
    causes: dict[str, list[str]] = {}
    frontier = set(replaced_first)
    while True:
        urns = {urn_of[n]: n for n in frontier if n in urn_of}
        more: dict[str, list[str]] = {}
        for name, r in containers.items():
            if name in frontier:
                continue
            fed = {key: [urns[u] for u in deps if u in urns] for key, deps in r.get("inputDependencies", {}).items()}
            by = sorted({n for key, names in fed.items() if names and key not in DOCKER_IN_PLACE_INPUTS for n in names})
            if by:
                more[name] = by
        if not more:
            return causes
        causes.update(more)
        frontier |= set(more)


def container_costs(changes: list[ResourceChange], head: Tree, base: Tree | None = None) -> list[Cost]:
    """Each changed container: updated in place or replaced (delete first or new first), and for
    one deleted first the routes unavailable meanwhile, read from the head's rendered nginx.conf
    (the proxy is the service that owns it): a route is down while every server of a pool it
    proxies to is deleted first. A container replaced new first, a holder of files and the
    proxy's live configuration (applied by graceful reload) take nothing down."""
    containers = {r["name"]: r for r in head.resources if r["type"] == CONTAINER}
    services = {s["name"] for s in head.services}
    confs = {path.partition("/")[0]: text for path, (text, _secret) in head.files.items()
             if path.endswith("nginx.conf")}
    proxy = ProxyRoutes()
    for text in confs.values():
        parsed = parse_nginx(text)
        proxy.pools.update(parsed.pools)
        proxy.sites += parsed.sites
    by_name = {c.name: c for c in changes if c.effect is not None}
    effects = {name: c.effect or UPDATED for name, c in by_name.items()}
    first = {name: c.delete_first for name, c in by_name.items()}
    causes = _chained(changes, containers)
    for name in causes:
        effects[name] = REPLACED
        first[name] = True  # deleted before what it is chained to
    down_hosts = {_service_name(containers[n]) for n, e in effects.items()
                  if e == REPLACED and first.get(n, True) and n in containers and n in services}
    costs: list[Cost] = []
    for name, effect in sorted(effects.items()):
        resource = containers.get(name)
        labels = {x.get("label"): x.get("value") for x in (resource or {}).get("inputs", {}).get("labels") or []
                  if isinstance(x, dict)}
        cost = Cost(name, effect)
        costs.append(cost)
        if effect != REPLACED or resource is None:
            continue
        if name in causes:
            cost.effect = f"{REPLACED} ({DELETE_FIRST}) with {', '.join(_code(c) for c in causes[name])}"
        else:
            cost.effect = f"{REPLACED} ({DELETE_FIRST if first.get(name, True) else NEW_FIRST})"
        component = labels.get("matrix-stack.component")
        if component == "files":
            cost.note = f"holds the files of {_code(str(labels.get('matrix-stack.files-of')))}: nothing unavailable"
            continue
        if component == "live-files":
            cost.note = (f"delivers {_code(str(labels.get('matrix-stack.files-of')))}'s live files, which it "
                         "tests and applies by graceful reload: nothing unavailable (a refused file keeps the "
                         "old one serving and fails the update)")
            continue
        host = _service_name(resource)
        if host not in services:
            cost.note = "a one-shot task, no service: nothing unavailable"
            continue
        if not first.get(name, True) and name not in causes:
            cost.note = "the new container serves before the old one stops: nothing unavailable"
            continue
        if name in confs or host in confs:
            cost.unavailable = [f"all sites: {_sites_text(n for s in proxy.sites for n in s.names)}"]
            continue
        partial: dict[str, str] = {}
        for site in proxy.sites:
            down: list[str] = []
            for route, targets in site.routes.items():
                for target, methods in targets:
                    hosts = proxy.hosts(target)
                    if host not in hosts:
                        continue
                    gone = sum(h in down_hosts for h in hosts)
                    if gone == len(hosts):
                        label = f"{route} ({methods})" if methods else route
                        if label not in down:
                            down.append(label)
                    else:
                        partial[target] = (f"{_code(target)}: {gone} of {len(hosts)} instances down at once, "
                                           "the others keep serving its routes")
            routed = [r for r, targets in site.routes.items() if targets]
            if down and len(down) == len(routed) and all("(" not in d for d in down):
                cost.unavailable.append(f"{_sites_text(site.names)} (the whole site)")
            elif down:
                cost.unavailable.append(f"{_sites_text(site.names)}: {', '.join(down)}")
        cost.note = "; ".join(partial.values())
        if cost.unavailable or partial:
            continue
        if host not in services:
            cost.note = "a one-shot task, no service: nothing unavailable"
            continue
        # Not behind the proxy (a database, a cache, a background worker): the services that
        # depend on it lose it meanwhile. The proxy and the publisher of its routes depend on
        # every routed process only to start after them.
        urn = resource["urn"]
        dependents = sorted(_code(r["name"]) for r in containers.values()
                            if urn in r.get("dependsOn", []) and r["name"] in services
                            and _service_name(r) not in confs and r["name"] not in confs)
        if dependents:
            cost.unavailable = [f"to its dependents: {', '.join(dependents)}"]
        else:
            cost.note = "serves no public route: its work waits until it is back"
    if base is not None:
        # A removed process: deleted at the end of the update, after the proxy has applied the
        # routes without it.
        old = {r["name"]: r for r in base.resources if r["type"] == CONTAINER}
        for name in sorted(set(old) - set(containers)):
            if name in {s["name"] for s in base.services}:
                costs.append(Cost(name, "removed", note="deleted at the end of the update, once the proxy's "
                                                        "routes without it are applied: nothing unavailable"))
    return costs


_WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet")


def manifest_costs(base: Mapping[str, str], head: Mapping[str, str]) -> list[Cost]:
    """A changed pod template rolls its workload; a single-replica StatefulSet is down while its
    one pod restarts (its old pod stops before the new one starts)."""
    costs: list[Cost] = []
    for name in sorted(set(base) & set(head)):
        if base[name] == head[name]:
            continue
        old, new = yaml.safe_load(base[name]) or {}, yaml.safe_load(head[name]) or {}
        if new.get("kind") not in _WORKLOADS or old.get("kind") != new.get("kind"):
            continue
        spec, old_spec = new.get("spec", {}), old.get("spec", {})
        if spec.get("template") == old_spec.get("template"):
            continue
        cost = Cost(name, "rolled")
        replicas = spec.get("replicas", 1)
        if new["kind"] == "StatefulSet" and replicas == 1:
            cost.unavailable = ["down while its one pod restarts"]
        costs.append(cost)
    return costs


def compare(stack: str, base: Tree, head: Tree) -> StackDiff:
    manifests = [
        ServiceChange("added" if n not in base.manifests else "removed" if n not in head.manifests else "changed", n)
        for n in sorted(set(base.manifests) | set(head.manifests))
        if base.manifests.get(n) != head.manifests.get(n)
    ]
    files = compare_files(base.files, head.files)
    by_service: dict[str, list[str]] = {}
    for f in files:
        service, _, path = f.path.partition("/")
        by_service.setdefault(service, []).append("/" + path)
    resources = compare_resources(base.resources, head.resources, base.fingerprints, head.fingerprints, by_service)
    return StackDiff(
        stack,
        resources=resources,
        services=compare_services(base.services, head.services),
        files=files,
        manifests=manifests,
        costs=container_costs(resources, head, base) + manifest_costs(base.manifests, head.manifests),
    )


# ---------------------------------------------------------------- Markdown


def _count(items: Iterable[Any]) -> str:
    counts: dict[str, int] = {}
    for item in items:
        counts[item.kind] = counts.get(item.kind, 0) + 1
    return ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items())) or "none"


def _code(text: str) -> str:
    return "`" + text.replace("`", "'") + "`"


def _stack_markdown(d: StackDiff) -> list[str]:
    out = [f"### Stack {_code(d.stack)}", ""]
    if d.error:
        out += ["**Render failed:**", "", "```", d.error.strip()[-3000:], "```", ""]
    if d.empty:
        return out + ["No changes.", ""]
    if d.error and not (d.resources or d.services or d.files or d.manifests):
        return out
    out += [f"Resources: {_count(d.resources)}. Services: {_count(d.services)}. Files: {_count(d.files)}.", ""]
    if d.resources:
        out += ["| resource | type | change | inputs / [options] |", "|---|---|---|---|"]
        out += [f"| {_code(r.name)} | {_code(r.type)} | {r.kind} | {', '.join(r.keys)} |" for r in d.resources]
        out.append("")
    if d.services:
        out += ["| service | change | fields |", "|---|---|---|"]
        out += [f"| {_code(s.name)} | {s.kind} | {', '.join(s.keys)} |" for s in d.services]
        out.append("")
    if d.costs:
        out += _costs_markdown(d.costs)
    if d.manifests:
        out += ["Kubernetes manifests: " + ", ".join(f"{_code(m.name)} ({m.kind})" for m in d.manifests), ""]
    if d.files:
        out += _files_markdown(d.files)
    return out


def _costs_markdown(costs: list[Cost]) -> list[str]:
    out = ["What it costs (a container replaced delete first is down until its replacement is up; one "
           "replaced new first keeps serving; the proxy applies a new nginx.conf by graceful reload):", ""]
    for c in costs:
        line = f"- {_code(c.name)}: **{c.effect}**"
        if c.unavailable:
            line += "; unavailable meanwhile: " + "; ".join(c.unavailable)
        if c.note:
            line += "; " + c.note
        out.append(line)
    return out + [""]


def _files_markdown(files: list[FileChange]) -> list[str]:
    """One block per distinct change: the same homeserver.yaml edit in ten services shows once."""
    out: list[str] = []
    groups: dict[tuple[str, ...], list[FileChange]] = {}
    for f in files:
        key = tuple(line for line in f.diff if not line.startswith(("--- ", "+++ ")))
        groups.setdefault((f.kind, str(f.secret), *key), []).append(f)
    for _key, members in groups.items():
        first = members[0]
        names = ", ".join(_code(m.path) for m in members)
        if first.secret:
            out += [f"- {names}: {first.kind} (secret: content not shown)", ""]
            continue
        body = [line for line in first.diff if not line.startswith(("--- ", "+++ "))]
        shown = body[:MAX_DIFF_LINES]
        more = len(body) - len(shown)
        title = f"{names}: {first.kind}" + (f" ({len(members)} files, same change)" if len(members) > 1 else "")
        out += ["<details open>" if len(body) <= 20 else "<details>", f"<summary>{title}</summary>", "", "```diff"]
        out += [line.replace("```", "'''") for line in shown]
        if more:
            out.append(f"... {more} more lines")
        out += ["```", "</details>", ""]
    return out


def markdown(diffs: list[StackDiff], base: str = "base", head: str = "head") -> str:
    lines = [f"## Offline render diff: {_code(base)} → {_code(head)}", ""]
    changed = [d.stack for d in diffs if not d.empty]
    lines += [f"Stacks compared: {', '.join(_code(d.stack) for d in diffs) or 'none'}; "
              f"with changes: {', '.join(_code(s) for s in changed) or 'none'}.", ""]
    lines += ["Rendered under Pulumi's mocks (`python -m render`): generated secrets are stand-ins, "
              "secret files and values are never shown.", ""]
    for d in diffs:
        lines += _stack_markdown(d)
    text = "\n".join(lines).rstrip() + "\n"
    if len(text) > MAX_CHARS:
        cut = text[:MAX_CHARS]
        cut = cut[: cut.rfind("\n")]
        if cut.count("```") % 2:
            cut += "\n```"
        if cut.count("<details") > cut.count("</details>"):
            cut += "\n</details>"
        text = cut + "\n\n*Summary truncated: run `python -m render.diff` locally for the rest.*\n"
    return text


# ---------------------------------------------------------------- rendering two commits


def _checkout(ref: str, into: Path) -> Path:
    """The tree of `ref` (git archive: no checkout, no worktree bookkeeping), or this work tree."""
    if ref == WORKTREE:
        return ROOT
    archive = subprocess.run(["git", "archive", "--format=tar", ref], cwd=ROOT, capture_output=True, check=False)
    if archive.returncode != 0:
        raise SystemExit(f"render.diff: cannot read {ref!r}: {archive.stderr.decode().strip()}")
    into.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")
    return into


def _stacks_in(tree: Path) -> set[str]:
    return {p.name[len("Pulumi."):-len(".yaml")] for p in tree.glob("Pulumi.*.yaml")}


def _render(tree: Path, stack: str, out: Path) -> tuple[Tree, str | None]:
    """Render `stack` from the source tree `tree` with this interpreter (the same venv)."""
    if stack not in _stacks_in(tree):
        return Tree.empty(), None  # the stack is new (or gone) on this side: everything added/removed
    done = subprocess.run([sys.executable, "-m", "render", "--stack", stack, "--out", str(out)],
                          cwd=tree, capture_output=True, text=True, check=False, timeout=600)
    if done.returncode != 0:
        return Tree.empty(), (done.stderr or done.stdout).strip() or f"exit status {done.returncode}"
    return Tree.load(out), None


def run(base: str, head: str, stacks: list[str] | None) -> tuple[list[StackDiff], bool]:
    """(diffs, ok): ok is False when the head does not render."""
    ok = True
    diffs = []
    with tempfile.TemporaryDirectory(prefix="render-diff-") as tmp:
        work = Path(tmp)
        base_tree = _checkout(base, work / "base-src")
        head_tree = _checkout(head, work / "head-src")
        names = stacks or sorted(_stacks_in(base_tree) | _stacks_in(head_tree))
        for stack in names:
            old, base_error = _render(base_tree, stack, work / "base" / stack)
            new, head_error = _render(head_tree, stack, work / "head" / stack)
            if head_error:
                ok = False
                d = StackDiff(stack, error=f"head: {head_error}")
            else:
                d = compare(stack, old, new)
                if base_error:
                    d.error = f"base did not render (everything is shown as added): {base_error}"
            diffs.append(d)
    return diffs, ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m render.diff", description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="git ref to compare from")
    parser.add_argument("--head", default=WORKTREE, help=f"git ref to compare to, or {WORKTREE} (default)")
    parser.add_argument("--stack", default="", help="comma-separated stacks (default: every Pulumi.<stack>.yaml)")
    parser.add_argument("--output", type=Path, help="also write the Markdown here")
    args = parser.parse_args(argv)
    stacks = [s.strip() for s in args.stack.split(",") if s.strip()] or None
    diffs, ok = run(args.base, args.head, stacks)
    text = markdown(diffs, args.base, args.head)
    if args.output:
        args.output.write_text(text)
    sys.stdout.write(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
