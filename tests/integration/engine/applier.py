"""Create what the program declares for Docker, through the Docker Engine API.

The program runs under Pulumi's mocks (render.offline, stand-in secrets); this applier takes the
recorded `docker:` resources (networks, volumes, images, containers) with their resolved inputs
and creates them on a real engine the way pulumi-docker (the Terraform docker provider) does.

Followed:
- dependency order: a resource is created after every resource it depends on (depends_on and
  the inputs that reference other resources), independent ones in parallel;
- networks (bridge driver) and named volumes by their declared names;
- images: `RemoteImage.name` must exist locally (no registry here; stand-ins are loaded first),
  and the container's `image` is the image id that resource outputs; an `Image` with a `build`
  is built by the engine from the project's recipe (its context and Dockerfile relative to the
  project, as `pulumi` runs the program there; its build args) under its `imageName`;
- containers: created, uploads copied in with their permissions and owner BEFORE start (the
  provider's upload step), then started; entrypoint, command, env, user, labels, working dir,
  health check (durations), restart policy, log driver and options, read-only root, tmpfs with
  options, capability drop/add, security options, volumes (read-only flag), the first advanced
  network attached at create with its aliases (later ones connected before start), published
  ports with their protocol and host IP (empty = every interface, as the provider does);
- `attach: true` with `must_run: false`: waits for the one-shot to exit; a non-zero exit stops
  the apply before any dependent is created (the program turns the exit code into an error);
- `must_run: false` without attach: started and not waited for;
- `start: false`: created (with its uploads) and never started;
- volumes with only a container path (anonymous) and `from_container` (VolumesFrom, `:ro`
  when read-only); `memory` (MB) and `cpu_shares`.

Changes (ChangeApplier): pulumi-docker's update of what an earlier apply created, see there.

Not followed (needs the Pulumi engine and its state): refresh, replacement triggers,
protect/retain_on_delete, destroy, providers for remote hosts (every resource goes to the one
engine given).
"""

from __future__ import annotations

import io
import re
import tarfile
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import docker
import docker.errors
from docker.types import LogConfig, Mount


class Registered(Protocol):
    """A declared resource: render.offline.Registered, or engine.declared.Declared (another
    commit's declarations)."""

    @property
    def urn(self) -> str: ...
    @property
    def type(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def dependencies(self) -> tuple[str, ...]: ...
    @property
    def delete_before_replace(self) -> bool: ...
    @property
    def property_dependencies(self) -> tuple[tuple[str, tuple[str, ...]], ...]: ...
    def plain_inputs(self) -> dict[str, Any]: ...


class Run(Protocol):
    @property
    def resources(self) -> Sequence[Registered]: ...

NETWORK = "docker:index/network:Network"
VOLUME = "docker:index/volume:Volume"
IMAGE = "docker:index/remoteImage:RemoteImage"
BUILT_IMAGE = "docker:index/image:Image"
CONTAINER = "docker:index/container:Container"
KINDS = (NETWORK, VOLUME, IMAGE, BUILT_IMAGE, CONTAINER)
PROJECT = Path(__file__).resolve().parents[3]
ONE_SHOT_TIMEOUT_S = 600


class ApplyError(RuntimeError):
    pass


def _ns(duration: str | None) -> int | None:
    """'15s', '1m30s', '500ms' -> nanoseconds (Go duration syntax, as the provider parses it)."""
    if not duration:
        return None
    units = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000, "m": 60_000_000_000, "h": 3_600_000_000_000}
    total = 0.0
    for number, unit in re.findall(r"([0-9.]+)(ns|us|ms|s|m|h)", duration):
        total += float(number) * units[unit]
    return int(total)


def _order(resources: Iterable[Registered]) -> list[Registered]:
    chosen = {r.urn: r for r in resources if r.type in KINDS}
    ordered: list[Registered] = []
    seen: set[str] = set()

    def visit(urn: str, path: tuple[str, ...]) -> None:
        if urn in seen or urn not in chosen:
            return
        if urn in path:
            raise ApplyError(f"dependency cycle: {' -> '.join(path + (urn,))}")
        for dep in sorted(chosen[urn].dependencies):
            visit(dep, path + (urn,))
        seen.add(urn)
        ordered.append(chosen[urn])

    for urn in sorted(chosen):
        visit(urn, ())
    return ordered


def _upload_tar(uploads: list[dict[str, Any]]) -> bytes:
    """The provider's upload: one archive extracted at /, each file at its full path (missing
    parent directories are created) with the declared mode and owner."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for upload in uploads:
            content = str(upload.get("content", "")).encode()
            info = tarfile.TarInfo(upload["file"].lstrip("/"))
            info.size = len(content)
            info.mode = int(str(upload.get("permissions") or "0644"), 8)
            owner = str(upload.get("owner") or "")
            if owner:
                info.uid = int(owner.split(":")[0])
                info.gid = int(owner.split(":")[1]) if ":" in owner else 0
            info.mtime = int(time.time())
            tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


@dataclass
class Applied:
    containers: list[str] = field(default_factory=list)  # long-running, in creation order
    one_shots: dict[str, int] = field(default_factory=dict)  # name -> exit code
    created_only: list[str] = field(default_factory=list)  # never started (file holders)
    seconds: float = 0.0


class Applier:
    def __init__(self, client: docker.DockerClient, run: Run):
        self.client = client
        self.run = run
        self.resources = _order(run.resources)
        self.by_urn = {r.urn: r for r in self.resources}
        self._lock = threading.Lock()
        self.built: list[str] = []  # the images built, by name

    def containers(self) -> list[Registered]:
        return [r for r in self.resources if r.type == CONTAINER]

    def apply(self) -> Applied:
        """Every resource once its dependencies exist, independent ones in parallel (as the
        Pulumi engine does); the first failure stops everything that depends on it."""
        started = time.monotonic()
        applied = Applied()
        done: dict[str, Future[None]] = {}
        with ThreadPoolExecutor(max_workers=max(1, len(self.resources))) as pool:
            for resource in self.resources:
                deps = [done[d] for d in resource.dependencies if d in done]
                done[resource.urn] = pool.submit(self._create_after, resource, deps, applied)
            for future in done.values():
                future.result()
        order = {r.plain_inputs().get("name"): i for i, r in enumerate(self.resources)}
        applied.containers.sort(key=lambda n: order.get(n, 0))
        applied.seconds = time.monotonic() - started
        return applied

    def _create_after(self, resource: Registered, deps: list[Future[None]], applied: Applied) -> None:
        for dep in deps:
            dep.result()  # re-raises a dependency's failure: this one is not created
        inputs = resource.plain_inputs()
        if resource.type == NETWORK:
            self.client.networks.create(inputs["name"], driver=inputs.get("driver") or "bridge",
                                        internal=bool(inputs.get("internal")), check_duplicate=True)
        elif resource.type == VOLUME:
            self.client.volumes.create(name=inputs["name"], driver=inputs.get("driver") or "local")
        elif resource.type == BUILT_IMAGE:
            self.build_image(inputs)
        elif resource.type == IMAGE:
            try:
                self.client.images.get(inputs["name"])
            except docker.errors.ImageNotFound as exc:
                raise ApplyError(f"image {inputs['name']} is not in the engine (no registry to pull from)") from exc
        else:
            code = self.create_container(inputs)
            with self._lock:
                if code is None:
                    applied.containers.append(inputs["name"])
                else:
                    applied.one_shots[inputs["name"]] = code
                if inputs.get("start") is False:
                    applied.created_only.append(inputs["name"])

    def build_image(self, inputs: dict[str, Any]) -> None:
        build = inputs["build"]
        context = PROJECT / build["context"]
        dockerfile = (PROJECT / build.get("dockerfile", f"{build['context']}/Dockerfile")).relative_to(context)
        log: list[str] = []
        try:
            for chunk in self.client.api.build(path=str(context), dockerfile=str(dockerfile), tag=inputs["imageName"],
                                               buildargs=build.get("args") or {}, rm=True, forcerm=True, decode=True):
                log.append(str(chunk.get("stream") or ""))
                if chunk.get("error"):
                    raise ApplyError(f"building {inputs['imageName']} failed:\n{''.join(log)[-3000:]}{chunk['error']}")
        except docker.errors.APIError as exc:
            raise ApplyError(f"building {inputs['imageName']} failed: {exc}") from exc
        self.built.append(inputs["imageName"])

    def create_container(self, inputs: dict[str, Any]) -> int | None:
        """Create, upload, start. Returns the exit code of an attached one-shot, else None."""
        api = self.client.api
        name = inputs["name"]
        ports = inputs.get("ports") or []
        port_bindings: dict[str, list[tuple[str, int]]] = {}
        exposed: list[tuple[int, str]] = []
        for p in ports:
            key = f"{int(p['internal'])}/{p.get('protocol') or 'tcp'}"
            exposed.append((int(p["internal"]), p.get("protocol") or "tcp"))
            port_bindings.setdefault(key, []).append((p.get("ip") or "", int(p.get("external") or p["internal"])))
        volumes = inputs.get("volumes") or []
        # A volume with only a container path is anonymous (created with the image's content at
        # that path); one with from_container takes that container's volumes (`:ro` when read-only).
        mounts = [Mount(target=v["containerPath"], source=v.get("volumeName") or None, type="volume",
                        read_only=bool(v.get("readOnly"))) for v in volumes if v.get("containerPath")]
        # Host directories (node exporter's view of the host), read-only with their propagation.
        mounts += [Mount(target=m["target"], source=m["source"], type="bind", read_only=bool(m.get("readOnly")),
                         propagation=(m.get("bindOptions") or {}).get("propagation"))
                   for m in inputs.get("mounts") or () if m.get("type") == "bind"]
        volumes_from = [v["fromContainer"] + (":ro" if v.get("readOnly") else ":rw")
                        for v in volumes if v.get("fromContainer")]
        caps = inputs.get("capabilities") or {}
        health = inputs.get("healthcheck")
        restart = inputs.get("restart") or "no"
        host_config = api.create_host_config(
            port_bindings={k: [(ip, port) if ip else port for ip, port in v] for k, v in port_bindings.items()},
            mounts=mounts,
            restart_policy={"Name": restart} if restart != "no" else None,
            log_config=LogConfig(type=inputs.get("logDriver") or "json-file", config=inputs.get("logOpts") or {}),
            read_only=bool(inputs.get("readOnly")),
            tmpfs=inputs.get("tmpfs") or None,
            cap_drop=caps.get("drops") or None,
            cap_add=caps.get("adds") or None,
            security_opt=inputs.get("securityOpts") or None,
            network_mode=inputs.get("networkMode") or None,
            volumes_from=volumes_from or None,
            mem_limit=f"{int(inputs['memory'])}m" if inputs.get("memory") else None,
            cpu_shares=int(inputs["cpuShares"]) if inputs.get("cpuShares") else None,
        )
        networks = inputs.get("networksAdvanced") or []
        networking = None
        if networks:
            first = networks[0]
            networking = api.create_networking_config({
                first["name"]: api.create_endpoint_config(aliases=first.get("aliases") or None)})
        healthcheck = None
        if health:
            healthcheck = {
                "test": health.get("tests"),
                "interval": _ns(health.get("interval")),
                "timeout": _ns(health.get("timeout")),
                "retries": int(health.get("retries") or 0) or None,
                "start_period": _ns(health.get("startPeriod")),
            }
        labels = {item["label"]: item["value"] for item in inputs.get("labels") or []}
        container = api.create_container(
            image=inputs["image"],
            name=name,
            entrypoint=inputs.get("entrypoints") or None,
            command=inputs.get("command") or None,
            environment=inputs.get("envs") or None,
            user=inputs.get("user") or None,
            working_dir=inputs.get("workingDir") or None,
            labels=labels,
            ports=exposed or None,
            healthcheck=healthcheck,
            host_config=host_config,
            networking_config=networking,
        )
        cid = container["Id"]
        for extra in networks[1:]:
            api.connect_container_to_network(cid, extra["name"], aliases=extra.get("aliases") or None)
        if inputs.get("uploads"):
            api.put_archive(cid, "/", _upload_tar(inputs["uploads"]))
        if inputs.get("start") is False:
            return 0  # created only (a file holder)
        api.start(cid)
        if inputs.get("attach") and inputs.get("mustRun") is False:
            status = api.wait(cid, timeout=ONE_SHOT_TIMEOUT_S)
            code = int(status.get("StatusCode", -1))
            if code != 0:
                logs = api.logs(cid, tail=40).decode(errors="replace")
                raise ApplyError(f"one-shot container {name} exited with {code}:\n{logs}")
            return code
        if inputs.get("mustRun") is False:
            return 0
        return None


def remove_declared(client: docker.DockerClient, run: Run) -> None:
    """Remove what a previous apply of these declarations left (a clean slate): containers,
    then networks and volumes, by their declared names."""
    by_kind: dict[str, list[str]] = {}
    for r in _order(run.resources):
        by_kind.setdefault(r.type, []).append(str(r.plain_inputs().get("name", "")))
    for name in by_kind.get(CONTAINER, []):
        try:
            client.api.remove_container(name, force=True)
        except docker.errors.NotFound:
            pass
    for name in by_kind.get(NETWORK, []):
        for network in client.networks.list(names=[name]):
            network.remove()
    for name in by_kind.get(VOLUME, []):
        try:
            client.api.remove_volume(name, force=True)
        except docker.errors.NotFound:
            pass


# ---------------------------------------------------------------- changes: pulumi-docker's update


def _in_place_inputs() -> frozenset[str]:
    from render.diff import DOCKER_IN_PLACE_INPUTS
    return DOCKER_IN_PLACE_INPUTS


@dataclass
class Changed:
    """What applying new declarations over old ones did, by the declared (Pulumi) name."""

    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)  # in place: no engine call (state only)
    replaced: list[str] = field(default_factory=list)  # "name (delete first)" or "name (new first)"
    deleted: list[str] = field(default_factory=list)
    chained: list[str] = field(default_factory=list)  # deleted early by a delete-before-replace chain
    one_shots: dict[str, int] = field(default_factory=dict)  # container name -> exit code
    seconds: float = 0.0


class ChangeApplier(Applier):
    """Apply `new` over what `old` created, as `pulumi up` with pulumi-docker would:

    - a container whose inputs differ only in the provider's in-place inputs
      (render.diff.DOCKER_IN_PLACE_INPUTS) is updated in place; any other difference replaces it;
    - a replacement with delete_before_replace deletes the old container first, and before it
      every dependent an input of which comes from it and would be replaced (Pulumi's
      dependent replacements, found through the inputs' property dependencies, transitively);
      without it, the new container is created and the old one deleted at the end of the update,
      after every creation, with the resources the new declarations dropped (dependents first);
    - steps run in parallel once what they depend on is done, as the Pulumi engine runs them;
    - `wait`: the provider waits for the container to be healthy before it is done (within
      `wait_timeout` seconds) so what depends on it starts after.
    """

    def __init__(self, client: docker.DockerClient, old: Run, new: Run):
        super().__init__(client, new)
        self.old = {r.urn: r for r in _order(old.resources)}
        self.old_order = [r.urn for r in _order(old.resources)]
        self.in_place = _in_place_inputs()
        self.changed = Changed()
        self._deleted: set[str] = set()

    def _diff(self, urn: str) -> str:
        """create | same | update | replace."""
        if urn not in self.old:
            return "create"
        old, new = self.old[urn].plain_inputs(), self.by_urn[urn].plain_inputs()
        keys = {k for k in set(old) | set(new) if old.get(k) != new.get(k)}
        if not keys:
            return "same"
        if self.by_urn[urn].type != CONTAINER:
            return "replace"
        return "update" if keys <= self.in_place else "replace"

    def _chain(self, root: str, plan: dict[str, str]) -> list[str]:
        """The dependents Pulumi deletes before a delete-before-replace `root`: those with an
        input fed by it (or by one already in the chain) that the provider cannot update in
        place. Dependents first."""
        chain: list[str] = []
        frontier = {root}
        changed = True
        while changed:
            changed = False
            for r in self.resources:
                if r.urn in chain or r.urn == root or r.urn not in self.old:
                    continue
                fed = [key for key, urns in r.property_dependencies if frontier & set(urns)]
                if any(key not in self.in_place for key in fed):
                    chain.append(r.urn)
                    frontier.add(r.urn)
                    changed = True
        return list(reversed(chain))

    def _delete_old(self, urn: str) -> None:
        with self._lock:
            if urn in self._deleted:
                return
            self._deleted.add(urn)
        resource = self.old[urn]
        inputs = resource.plain_inputs()
        if resource.type == CONTAINER:
            try:
                self.client.api.stop(inputs["name"], timeout=10)
                self.client.api.remove_container(inputs["name"], force=True, v=bool(inputs.get("removeVolumes")))
            except docker.errors.NotFound:
                pass

    def _wait_healthy(self, name: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.client.api.inspect_container(name)["State"]
            if (state.get("Health") or {}).get("Status") == "healthy":
                return
            time.sleep(0.5)
        raise ApplyError(f"{name} not healthy within {timeout:.0f}s (wait)")

    def _step(self, resource: Registered, deps: list[Future[None]], plan: dict[str, str]) -> None:
        for dep in deps:
            dep.result()
        urn, kind = resource.urn, plan[resource.urn]
        if kind in ("same", "update"):
            if kind == "update":
                self.changed.updated.append(resource.name)
            return
        inputs = resource.plain_inputs()
        if kind == "replace":
            if resource.delete_before_replace:
                for dependent in self._chain(urn, plan):
                    if dependent not in self._deleted:
                        self.changed.chained.append(self.by_urn[dependent].name)
                    self._delete_old(dependent)
                self._delete_old(urn)
                self.changed.replaced.append(f"{resource.name} (delete first)")
            else:
                self.changed.replaced.append(f"{resource.name} (new first)")
        elif kind == "create":
            self.changed.created.append(resource.name)
        if resource.type != CONTAINER:
            applied = Applied()
            self._create_after(resource, [], applied)
            return
        code = self.create_container(inputs)
        if code is not None and inputs.get("mustRun") is False:
            self.changed.one_shots[inputs["name"]] = code
        if inputs.get("wait"):
            self._wait_healthy(inputs["name"], float(inputs.get("waitTimeout") or 60))

    def apply_change(self) -> Changed:
        started = time.monotonic()
        plan = {r.urn: self._diff(r.urn) for r in self.resources}
        # A dependent replaced through a delete-before-replace chain is replaced even when its
        # own inputs end up the same.
        for urn, kind in list(plan.items()):
            if kind == "replace" and self.by_urn[urn].delete_before_replace:
                for dependent in self._chain(urn, plan):
                    plan[dependent] = "replace"
        done: dict[str, Future[None]] = {}
        with ThreadPoolExecutor(max_workers=max(1, len(self.resources))) as pool:
            for resource in self.resources:
                deps = [done[d] for d in resource.dependencies if d in done]
                done[resource.urn] = pool.submit(self._step, resource, deps, plan)
            for future in done.values():
                future.result()
        # The end of the update: replaced containers created new first, then what is gone.
        leftovers = [urn for urn in reversed(self.old_order)
                     if (urn not in self.by_urn or plan.get(urn) == "replace") and urn not in self._deleted]
        for urn in leftovers:
            if urn not in self.by_urn:
                self.changed.deleted.append(self.old[urn].name)
            self._delete_old(urn)
        self.changed.seconds = time.monotonic() - started
        return self.changed


def long_running(run: Run) -> list[str]:
    """The names of the containers that keep running (no one-shot, no file holder)."""
    return [str(i["name"]) for i in (r.plain_inputs() for r in _order(run.resources) if r.type == CONTAINER)
            if i.get("mustRun") is not False and i.get("start") is not False]
