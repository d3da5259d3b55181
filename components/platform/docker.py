"""Docker target: services become containers on Docker hosts (the local engine or ssh://).

One provider, private network and image pull per host; named volumes for state; config files
uploaded to a never-started holder per container whose volumes the container mounts read-only
(its root stays read-only), so a changed file replaces exactly the containers that read it.
What every container is held to, and the exemptions: docker_hardening.py.

Changes keep serving:
- A holder's name carries a digest of its files, and holders are created before the old ones
  are deleted: a holder never takes part in a delete-before-replace chain (Pulumi deletes first
  every dependent an input of which refers to a delete-before-replace resource, so a fixed-name
  holder would stop its container, and the shared configuration check every Synapse process,
  before anything new exists).
- Live files (spec.File.live: the proxy's nginx.conf) never restart their service: they reach
  a named volume the service mounts read-only, through a one-shot publisher that runs after the
  services they route to are healthy and waits until the service has applied them (the proxy
  tests, reloads and drains; a refused config fails the publisher and leaves the old one
  serving).
- A service that may run twice for a moment (spec.Service.start_before_stop: Synapse's
  interchangeable workers) is replaced new before old: its container name carries a digest of
  its inputs, its network alias stays the service's name, so the proxy resolves both instances
  while they overlap and follows the new one; Pulumi creates the new container, waits for it to
  be healthy (`wait`) and deletes the old one at the end of the update. Every other service
  keeps its fixed name and is replaced delete-before-replace (fixed names, host ports, and
  processes that must never run twice: main and the stream writers), one restart.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import shlex
import typing
from pathlib import Path

import pulumi
import pulumi_docker as docker

from config import images
from config.model import DockerHost, StackConfig

from . import gates
from .contract import Graph
from .docker_checks import CheckGroup, check_groups
from .docker_hardening import HELPER_MEMORY_MB, NO_NEW_PRIVILEGES, cpu_shares, megabytes
from .docker_hosts import DockerHosts
from .spec import File, HealthCheck, ImageBuild, Service, Volume, Wait

NETWORK = "matrix-stack"
NOBODY = "65534:65534"


def tmpfs_options(user: str | None) -> str:
    """A scratch directory under a read-only root, owned by the service's user: Docker mounts a
    HostConfig.Tmpfs root's, and where the image has that directory it keeps the image's mode
    (PostgreSQL's /var/run/postgresql, 2775) over `mode`, so only the owner makes it writable."""
    options = "rw,noexec,nosuid,size=256m,mode=1777"
    uid, _, gid = (user or "").partition(":")
    if uid.isdigit() and gid.isdigit():
        options += f",uid={uid},gid={gid}"
    return options
LOG_OPTS = {"max-size": "20m", "max-file": "5"}


def start_command(waits: tuple[Wait, ...], command: list[str]) -> list[str]:
    """The container's command behind health-gated waits: Docker starts every container of a
    rebooted host at once and never waits on health, so each one waits for what it needs."""
    lines = [f"until {shlex.join(w.command)} >/dev/null 2>&1; do echo 'waiting for {w.service}'; sleep 2; done"
             for w in waits]
    return ["/bin/sh", "-c", "\n".join([*lines, 'exec "$@"']), command[0], *command]


def ready_within_s(health: HealthCheck) -> int:
    """How long Docker's health check may take to call a (re)created container healthy: its start
    period (a migration runs inside main's), then every retry."""
    return health.start_period_s + health.retries * (health.interval_s + health.timeout_s)


# The never-started container that holds a service's files: the service's name and this.
FILES_HOLDER_SUFFIX = "-files"
CRONTABS = "/etc/crontabs"


def scheduled(service: Service) -> Service:
    """A scheduled service as the container Docker runs: BusyBox crond in the foreground (PID 1)
    runs the service's command on its schedule as the service's user, the output going to the
    container's log (a job inherits crond's stdout and stderr: its crontab sets no MAILTO).
    crond takes a job's user from the name of its crontab file, which must be root's and name a
    user of the image's /etc/passwd (ImageFacts.user_names); it sets that user and its groups
    itself (initgroups fails for anyone but root), so crond alone runs as root, with SETUID and
    SETGID and no other capability (container_user). The service's files stay its user's."""
    if not service.schedule:
        return service
    if service.steps:
        raise ValueError(f"{service.name}: steps need a pod; on Docker run them as a service of their own")
    names = images.facts_for(service.image).user_names
    if service.user is not None and service.user not in names:
        raise ValueError(f"{service.name}: runs its jobs as {service.user}, which {service.image}'s /etc/passwd "
                         f"does not name (known: {', '.join(sorted(names)) or 'none'}); crond needs a name")
    crontab_user = names[service.user] if service.user is not None else "root"
    command = shlex.join([*(service.entrypoint or ()), *service.args])
    return dataclasses.replace(
        service,
        entrypoint=("crond", "-f", "-d", "8", "-c", CRONTABS),
        args=(),
        files=[*service.files, File(f"{CRONTABS}/{crontab_user}", f"{service.schedule} {command}\n")],
        capabilities_add=tuple(sorted({*service.capabilities_add, "SETGID", "SETUID"})),
    )


def container_user(service: Service) -> str | None:
    """The user a service's container starts as: a scheduled one's crond is root (it starts each
    job as the service's user, see `scheduled`)."""
    return None if service.schedule else service.user


def _check_passed(service: str, code: int | None) -> str:
    # attach=True makes the provider wait for the check and record its exit code; a failure must
    # stop the update before the service's container is replaced.
    if code not in (None, 0):
        raise RuntimeError(f"{service}: the configuration check exited with {code}; see its container's logs")
    return "passed"


def _check_label(check: docker.Container, name: str) -> pulumi.Input[str]:
    """The label a checked service carries: "passed", once its check has passed. A preview
    cannot run a replaced check, and its unknown exit code would show every service sharing that
    check as replaced; the update itself waits for the check and keeps the label when it passes."""
    if pulumi.runtime.is_dry_run():
        return "passed"
    return check.exit_code.apply(functools.partial(_check_passed, name))


def _labels(labels: dict[str, pulumi.Input[str]]) -> list[docker.ContainerLabelArgs]:
    return [docker.ContainerLabelArgs(label=k, value=v) for k, v in sorted(labels.items())]


def _helper_settings(labels: dict[str, pulumi.Input[str]], adds: tuple[str, ...] = ()) -> dict[str, typing.Any]:
    """What every helper container (a one-shot that runs to completion, or a file holder that
    never starts) shares: never restarted, its logs rotated, no capability but `adds`, no new
    privileges, and labels that say what it is."""
    return dict(
        must_run=False,
        restart="no",
        log_driver="json-file",
        log_opts=LOG_OPTS,
        capabilities=docker.ContainerCapabilitiesArgs(drops=["ALL"], adds=list(adds) or None),
        security_opts=[NO_NEW_PRIVILEGES],
        labels=_labels(labels),
    )


def _uploads(files: list[File], user: str | None) -> list[docker.ContainerUploadArgs]:
    return [
        docker.ContainerUploadArgs(
            file=f.path,
            content=pulumi.Output.secret(f.content) if f.secret else f.content,
            permissions=oct(f.mode)[2:].zfill(4),
            owner=user.split(":")[0] if (f.secret and user) else None,
        )
        for f in files
    ]


def file_dirs(files: list[File]) -> list[str]:
    """The directories the files live in, none under another: each becomes one anonymous volume
    of the service's file holder."""
    dirs: list[str] = []
    for d in sorted({f.path.rsplit("/", 1)[0] or "/" for f in files}):
        if not any(d == kept or d.startswith(kept.rstrip("/") + "/") for kept in dirs):
            dirs.append(d)
    assert "/" not in dirs, "a file directly under / cannot be held in a volume"
    return dirs


def _envs(service: Service) -> tuple[list[str], list[pulumi.Output[str]]]:
    """The service's plain env as NAME=value strings, and its secret env as secret Outputs."""
    envs = [f"{k}={v}" for k, v in sorted(service.env.items())]
    secret_envs: list[pulumi.Output[str]] = [
        pulumi.Output.secret(pulumi.Output.concat(k, "=", v)) for k, v in sorted(service.secret_env.items())
    ]
    return envs, secret_envs


def _file_digests(files: list[File]) -> dict[str, pulumi.Input[str]]:
    """A label per plain file with its content's sha256. One secret upload makes Pulumi store the
    whole `uploads` list as secret, so without these a preview could not say which file changed."""
    digests: dict[str, pulumi.Input[str]] = {}
    for f in files:
        if f.secret:
            continue
        digests[f"matrix-stack.file.{f.path}"] = _sha256(f.content)
    return digests


def _sha256(content: pulumi.Input[str]) -> pulumi.Input[str]:
    # Most contents are rendered strings: hashed now, without an Output to resolve.
    if isinstance(content, str):
        return hashlib.sha256(content.encode()).hexdigest()
    return pulumi.Output.from_input(typing.cast(pulumi.Output[str], content)).apply(_sha256)


def _digest(parts: list[pulumi.Input[typing.Any]]) -> pulumi.Input[str]:
    """The first 8 hex digits of the sha256 of `parts` (reprs of plain values, Input strings):
    a name that changes whenever they do. Not secret although a secret goes into it: 32 bits
    of a digest over the whole input reveal nothing of a generated secret."""
    def of(values: list[typing.Any]) -> str:
        return hashlib.sha256("\0".join(map(str, values)).encode()).hexdigest()[:8]

    if all(isinstance(p, str) for p in parts):
        return of(parts)
    return pulumi.Output.unsecret(pulumi.Output.all(*parts).apply(of))


def _named(prefix: str, digest: pulumi.Input[str], suffix: str = "") -> pulumi.Input[str]:
    if isinstance(digest, str):
        return f"{prefix}-{digest}{suffix}"
    return pulumi.Output.concat(prefix, "-", digest, suffix)


LIVE_SUFFIX = "-live"
# The publisher's own mount of the service's live volume.
PUBLISHED = "/published"
LIVE_APPLY_TIMEOUT_S = 300


def live_files_dir(files: list[File]) -> str | None:
    dirs = {f.path.rsplit("/", 1)[0] for f in files if f.live}
    assert len(dirs) <= 1, f"live files share one directory: {sorted(dirs)}"
    return next(iter(dirs), None)


def publish_script(files: list[File], applied_url: str) -> str:
    """The live files' publisher: each file replaced atomically (a rename in the volume), then a
    wait until the service answers, at `applied_url`, the digest of what it applies."""
    live = sorted(f.path for f in files if f.live)
    lines = ["set -eu"]
    for path in live:
        name = path.rsplit("/", 1)[1]
        lines.append(f"cp {shlex.quote(path)} {PUBLISHED}/.{name}.new && mv -f {PUBLISHED}/.{name}.new {PUBLISHED}/{name}")
    lines += [
        f"want=$(cat {' '.join(shlex.quote(p) for p in live)} | sha256sum | cut -d' ' -f1)",
        f"i=0; until [ \"$(wget -qO- {applied_url} 2>/dev/null)\" = \"$want\" ]; do",
        f"  i=$((i+1)); if [ $i -gt {LIVE_APPLY_TIMEOUT_S} ]; then",
        f"    echo \"not applied within {LIVE_APPLY_TIMEOUT_S}s: refused (see the service's log) or not running\" >&2; exit 1",
        "  fi; sleep 1",
        "done",
        "echo \"applied $want\"",
    ]
    return "\n".join(lines)


def start_order(services: list[Service]) -> list[Service]:
    """The services with every one a service waits for, gates after or routes to declared before
    it (the container's and its live files' dependencies name those containers), else as given."""
    by_name = {s.name: s for s in services}
    ordered: list[Service] = []
    placed: set[str] = set()

    def place(service: Service, path: tuple[str, ...]) -> None:
        if service.name in placed:
            return
        assert service.name not in path, f"start order cycle: {' -> '.join((*path, service.name))}"
        for name in (*(w.service for w in service.waits), *service.routes_to,
                     *(name for gate in service.gates for name in gate.after)):
            if name in by_name:
                place(by_name[name], (*path, service.name))
        placed.add(service.name)
        ordered.append(service)

    for service in services:
        place(service, ())
    return ordered


class DockerPlatform(DockerHosts):
    def __init__(self, cfg: StackConfig):
        self._graph = Graph()
        super().__init__(cfg)
        self._providers: dict[str, docker.Provider] = {}
        self._networks: dict[str, docker.Network] = {}
        self._images: dict[tuple[str, str], docker.RemoteImage] = {}
        # Images no registry ships, by reference: each host builds them itself (ImageBuild).
        self._builds: dict[str, ImageBuild] = {}
        self._built: dict[tuple[str, str], docker.Image] = {}
        self._volumes: dict[tuple[str, str], docker.Volume] = {}
        # (service, port) pairs another host dials: published on the owning host's address.
        self._cross_host_ports: set[tuple[str, int]] = set()
        self._containers: dict[str, docker.Container] = {}
        self._volume_owners: dict[tuple[str, str], docker.Container] = {}
        self._check_groups: dict[str, CheckGroup] = {}  # service name -> its configuration check
        self._checks: dict[str, docker.Container] = {}  # check name -> its container
        self._data_stores: list[Service] = []

    # ------------------------------------------------------------ per-host resources

    def provider(self, host: DockerHost) -> docker.Provider:
        if host.name not in self._providers:
            self._providers[host.name] = docker.Provider(
                f"docker-{host.name}", host=host.url, ssh_opts=host.ssh_opts or None
            )
        return self._providers[host.name]

    def _opts(self, host: DockerHost, parent: pulumi.Resource | None, **extra: object) -> pulumi.ResourceOptions:
        aliases = self._graph.aliases(parent) if parent is not None else []
        if aliases:
            extra["aliases"] = aliases
        return pulumi.ResourceOptions(provider=self.provider(host), parent=parent, **extra)  # type: ignore[arg-type]

    def network(self, host: DockerHost) -> docker.Network:
        if host.name not in self._networks:
            self._networks[host.name] = docker.Network(
                f"network-{host.name}", name=NETWORK, driver="bridge", opts=self._opts(host, None)
            )
        return self._networks[host.name]

    def store_network(self, host: DockerHost, store: str) -> docker.Network:
        """The network of the data store `store` (Service.data_store) on `host`, joined by the
        store and its allowed clients alone: internal (no route out) unless another host dials
        the store through a published port, which an internal network cannot publish."""
        key = f"{host.name}/{store}"
        if key not in self._networks:
            published = any(name == store for name, _port in self._cross_host_ports)
            self._networks[key] = docker.Network(
                f"network-{host.name}-{store}", name=f"{NETWORK}-{store}", driver="bridge", internal=not published,
                opts=self._opts(host, None))
        return self._networks[key]

    def _networks_of(self, service: Service, host: DockerHost) -> list[docker.ContainerNetworksAdvancedArgs]:
        """A data store joins its own network, not the stack's; every other service the stack's
        network. Each also joins the network of each data store that admits it (a pooler in front
        of a database is a data store that the database admits)."""
        def joined(network: docker.Network) -> docker.ContainerNetworksAdvancedArgs:
            return docker.ContainerNetworksAdvancedArgs(name=network.name, aliases=[service.name])

        own = self.store_network(host, service.name) if service.data_store else self.network(host)
        return [joined(own)] + [
            joined(self.store_network(host, store.name)) for store in self._data_stores
            if service.name in (store.allowed_clients or ()) and self.docker_host(store.name).name == host.name]

    def image(self, host: DockerHost, ref: str) -> docker.RemoteImage:
        key = (host.name, ref)
        if key not in self._images:
            safe = ref.replace("/", "-").replace(":", "-").replace("@", "-").replace(".", "-")
            built = self.built_image(host, ref, safe)
            self._images[key] = docker.RemoteImage(
                f"image-{host.name}-{safe}", name=built.image_name if built else ref, keep_locally=True,
                opts=self._opts(host, None, depends_on=[built]) if built else self._opts(host, None),
            )
        return self._images[key]

    def built_image(self, host: DockerHost, ref: str, safe: str) -> docker.Image | None:
        """The image `ref` built on `host` from its recipe, when no registry ships it: kept on the
        host, never pushed. Its name carries every version the recipe pins (the build args), so a
        new pin is a new image, and the containers running it are replaced."""
        build = self._builds.get(ref)
        if build is None:
            return None
        key = (host.name, ref)
        if key not in self._built:
            # Relative to the project, where `pulumi` runs the program: the same inputs on every
            # machine, so a preview shows no change where the recipe has none.
            dockerfile = Path(build.dockerfile)
            self._built[key] = docker.Image(
                f"build-{host.name}-{safe}",
                image_name=ref,
                build=docker.DockerBuildArgs(context=str(dockerfile.parent), dockerfile=str(dockerfile),
                                             args=dict(build.args)),
                skip_push=True,
                opts=self._opts(host, None),
            )
        return self._built[key]

    def volume(self, host: DockerHost, name: str) -> docker.Volume:
        key = (host.name, name)
        if key not in self._volumes:
            self._volumes[key] = docker.Volume(
                f"volume-{host.name}-{name}",
                name=self.volume_name(name),
                opts=self._opts(host, None, protect=self.cfg.protect, retain_on_delete=self.cfg.protect),
            )
        return self._volumes[key]

    # ------------------------------------------------------------ services

    @property
    def manifests(self) -> dict[str, dict[str, object]]:
        return {}  # containers have no manifests; the offline render lists services and files

    def realize(self, graph: Graph) -> None:
        self._graph = graph
        services = [s for s, _parent in graph.services]
        for service in services:
            if service.build is not None:
                known = self._builds.setdefault(service.image, service.build)
                if known != service.build:
                    raise ValueError(f"{service.image}: two recipes for one image name")
        for service in services:
            for name, port in service.reaches:
                if self.reach(service.name, name, port)[2]:
                    self._cross_host_ports.add((name, port))
        parents = {s.name: parent for s, parent in graph.services}
        self._data_stores = [s for s in services if s.data_store]
        ordered = [scheduled(s) for s in start_order(services)]
        self._check_groups = check_groups(ordered, self._host_name, several_hosts=len(self.target.hosts) > 1)
        for service in ordered:
            self._container(service, parents[service.name])

    def _host_name(self, service: str) -> str:
        return self.docker_host(service).name

    def _volume_owner(self, host: DockerHost, volume: Volume, image: str, parent: pulumi.Resource) -> docker.Container:
        """A one-shot container that hands a fresh volume to the user the service runs as."""
        key = (host.name, volume.name)
        if key not in self._volume_owners:
            self._volume_owners[key] = docker.Container(
                f"{volume.name}-owner",
                name=f"matrix-stack-{volume.name}-owner",
                image=self.image(host, image).image_id,
                entrypoints=["chown", *(["-R"] if volume.owner_recursive else []), str(volume.owner), volume.path],
                user="0:0",  # docker_hardening.EXCEPTIONS: only root may give a file away
                volumes=[docker.ContainerVolumeArgs(volume_name=self.volume(host, volume.name).name,
                                                    container_path=volume.path)],
                read_only=True,  # it writes only the volume's inodes
                memory=HELPER_MEMORY_MB,
                network_mode="none",
                **_helper_settings({"matrix-stack.component": "volume-owner"}, adds=("CHOWN",)),
                opts=self._opts(host, parent, delete_before_replace=True),
            )
        return self._volume_owners[key]

    def _files_holder(self, name: str, image: str, files: list[File], user: str | None, host: DockerHost,
                      parent: pulumi.Resource, resource: str | None = None) -> docker.Container:
        """A container that is never started and holds `files` for the container named `name`.

        pulumi-docker writes uploads with `docker cp` to "/" before the container starts, and Docker
        refuses that on a read-only root even when every file lands in a volume. So the files go
        to this holder instead: one anonymous volume per directory they live in (created with the
        image's content at that path, so /app or /etc/nginx keep the rest of the image's files),
        which the service mounts read-only (`volumes_from`). Its root stays writable, which no
        process ever uses (docker_hardening.EXCEPTIONS). Its name carries a digest of the files,
        user and image: changed files make a new holder, created before the old one is deleted
        (no delete-before-replace chain, see the module), and the service that mounts it by name
        is replaced. Docker removes a deleted holder's volumes with it (remove_volumes).
        """
        dirs = file_dirs(files)
        digest = _digest([image, user or "", repr(dirs),
                          *(part for f in files for part in (f.path, oct(f.mode), str(f.secret), f.content))])
        return docker.Container(
            resource or f"{name}{FILES_HOLDER_SUFFIX}",
            name=_named(name, digest, FILES_HOLDER_SUFFIX),
            image=self.image(host, image).image_id,
            entrypoints=["/nonexistent"],  # never started
            start=False,
            uploads=_uploads(files, user),
            volumes=[docker.ContainerVolumeArgs(container_path=d) for d in dirs],
            remove_volumes=True,
            user=user or NOBODY,  # never runs; the uploads carry their own owners
            memory=HELPER_MEMORY_MB,
            network_mode="none",
            **_helper_settings({"matrix-stack.component": "files", "matrix-stack.files-of": name,
                                **_file_digests(files)}),
            opts=self._opts(host, parent),
        )

    def _container(self, service: Service, parent: pulumi.Resource) -> docker.Container:
        host = self.docker_host(service.name)
        bind = host.published_address
        ports = [
            docker.ContainerPortArgs(internal=p.port, external=p.host_port or p.port, protocol=p.protocol, ip=bind)
            for p in service.ports
            if p.public
        ]
        ports += [
            docker.ContainerPortArgs(internal=p.port, external=p.port, protocol=p.protocol, ip=host.address)
            for p in service.ports
            if not p.public and (service.name, p.port) in self._cross_host_ports
        ]
        for r in service.port_ranges:
            ports += [docker.ContainerPortArgs(internal=n, external=n, protocol=r.protocol, ip=bind)
                      for n in range(r.start, r.end + 1)]
        fixed = [f for f in service.files if not f.live]
        live = [f for f in service.files if f.live]
        volumes = list(service.volumes)
        live_dir = live_files_dir(live)
        if live_dir is not None:
            # The live files' own volume: the publisher writes it, the service only reads it.
            volumes.append(Volume(f"{service.name}{LIVE_SUFFIX}", live_dir, read_only=True, owner=service.user))
        holder = self._files_holder(service.name, service.image, fixed, service.user, host, parent) if fixed else None
        envs, secret_envs = _envs(service)
        health = service.health
        owners = [self._volume_owner(host, v, service.image, parent) for v in volumes if v.owner]
        waited = [self._containers[w.service] for w in service.waits if w.service in self._containers]
        entrypoint = list(service.entrypoint) if service.entrypoint else None
        command = list(service.args) if service.args else None
        if service.waits:
            assert entrypoint, f"{service.name}: waits need an explicit entrypoint to wrap"
            entrypoint, command = start_command(service.waits, [*entrypoint, *(command or [])]), None
        # Live files are left out: their change must not touch the container's inputs.
        labels: dict[str, pulumi.Input[str]] = {"matrix-stack.component": service.component,
                                                "matrix-stack.service": service.name, **service.labels,
                                                **_file_digests(fixed)}
        gated = [gates.declare(gate, parent, [self._containers[n] for n in gate.after if n in self._containers])
                 for gate in service.gates]
        checks = []
        if service.init_args:
            group = self._check_groups[service.name]
            check = self._config_check(group, host, parent)
            checks.append(check)
            labels["matrix-stack.config-check"] = _check_label(check, group.name if group.combined else service.name)
        # Pulumi waits for a container to be healthy before it goes on to what depends on it (the
        # publisher of the proxy's routes, the deletion of the instance it replaces). Not a service
        # with live files: it becomes healthy only once its files are published, after it.
        waits_healthy = bool(health and health.command and not live)
        volume_args = [
            docker.ContainerVolumeArgs(
                volume_name=self.volume(host, v.name).name, container_path=v.path, read_only=v.read_only
            )
            for v in volumes
        ] + ([docker.ContainerVolumeArgs(from_container=holder.name, read_only=True)] if holder else [])
        name: pulumi.Input[str] = service.name
        if service.start_before_stop:
            assert not any(p.public for p in service.ports) and not service.port_ranges, \
                f"{service.name}: a host port cannot be held by two containers at once"
            # Whatever replaces the container changes the name: the digest of its inputs.
            name = _named(service.name, _digest([
                service.image, repr(entrypoint), repr(command), *envs, *secret_envs, repr(service.ports),
                repr(volumes), service.user or "", repr(service.read_only_root), repr(service.writable_paths),
                repr(service.capabilities_add), repr(service.drop_capabilities), repr(health),
                *(part for k, v in sorted(labels.items()) for part in (k, v)),
                *([holder.name] if holder else []),
            ]))
        container = docker.Container(
            service.name,
            name=name,
            image=self.image(host, service.image).image_id,
            entrypoints=entrypoint,
            command=command,
            envs=pulumi.Output.all(*envs, *secret_envs) if secret_envs else envs,
            ports=ports,
            volumes=volume_args,
            # Host directories, read-only; rslave: mounts the host makes later appear below them.
            mounts=[docker.ContainerMountArgs(
                type="bind", source=source, target=path, read_only=True,
                bind_options=docker.ContainerMountBindOptionsArgs(propagation="rslave"))
                for source, path in service.host_paths] or None,
            # The aliases are the service's name, whatever the container's: the name others dial.
            networks_advanced=self._networks_of(service, host),
            healthcheck=docker.ContainerHealthcheckArgs(
                tests=["CMD", *health.command],
                interval=f"{health.interval_s}s",
                timeout=f"{health.timeout_s}s",
                retries=health.retries,
                start_period=f"{health.start_period_s}s",
            # No command: the image has nothing to check with (Kubernetes still probes over HTTP).
            ) if health and health.command else None,
            # Created only once healthy, so what depends on it is (re)created after it is ready:
            # Synapse's workers after main has migrated the schema of a new release, while the
            # old workers keep serving; the old instance of a new-first service deleted after its
            # replacement serves. wait/wait_timeout update in place (no replacement).
            wait=waits_healthy or None,
            wait_timeout=ready_within_s(health) if waits_healthy and health else None,
            restart="unless-stopped",
            log_driver="json-file",
            log_opts=LOG_OPTS,
            user=container_user(service),
            # The files come from the holder's volumes, so the root stays read-only with them.
            read_only=service.read_only_root,
            tmpfs={path: tmpfs_options(service.user) for path in service.writable_paths} or None,
            capabilities=docker.ContainerCapabilitiesArgs(drops=["ALL"], adds=list(service.capabilities_add))
            if service.drop_capabilities else None,
            security_opts=[NO_NEW_PRIVILEGES],
            memory=megabytes(service.resources.memory_limit),
            cpu_shares=cpu_shares(service.resources.cpu_request),
            labels=_labels(labels),
            # Fixed names and host ports cannot exist twice: replace by deleting first, unless
            # the service may overlap with its replacement (see the module).
            opts=self._opts(host, parent, delete_before_replace=not service.start_before_stop,
                            depends_on=[*owners, *waited, *gated, *checks, *([holder] if holder else [])]),
        )
        self._containers[service.name] = container
        if live:
            self._live_publisher(service, live, container, host, parent)
        return container

    def _live_publisher(self, service: Service, live: list[File], container: docker.Container, host: DockerHost,
                        parent: pulumi.Resource) -> docker.Container:
        """The one-shot that hands the service its live files (see the module): it runs after the
        service and every service it routes to exist (those healthy, through `wait`), copies
        each file from its holder into the service's live volume with an atomic rename, and
        waits until the service applies them. Replaced with its holder, so it runs whenever a
        live file changes; the service's own inputs never do."""
        assert service.live_applied_url, f"{service.name}: live files need live_applied_url"
        live_dir = live_files_dir(live)
        holder = self._files_holder(f"{service.name}{LIVE_SUFFIX}", service.image, live, service.user, host, parent)
        routed = [self._containers[name] for name in service.routes_to if name in self._containers]
        volume = self.volume(host, f"{service.name}{LIVE_SUFFIX}")
        name = f"{service.name}{LIVE_SUFFIX}-publish"
        return docker.Container(
            name,
            name=name,
            image=self.image(host, service.image).image_id,
            entrypoints=["/bin/sh", "-c", publish_script(live, service.live_applied_url)],
            volumes=[docker.ContainerVolumeArgs(from_container=holder.name, read_only=True),
                     docker.ContainerVolumeArgs(volume_name=volume.name, container_path=PUBLISHED)],
            networks_advanced=[docker.ContainerNetworksAdvancedArgs(name=self.network(host).name)],
            user=service.user,
            read_only=True,
            attach=True,
            memory=HELPER_MEMORY_MB,
            **_helper_settings({"matrix-stack.component": "live-files", "matrix-stack.files-of": service.name,
                                "matrix-stack.live-dir": live_dir or "", **_file_digests(live)}),
            opts=self._opts(host, parent, delete_before_replace=True,
                            depends_on=[container, holder, *routed]),
        )

    def _config_check(self, group: CheckGroup, host: DockerHost, parent: pulumi.Resource) -> docker.Container:
        """The group's one-shot check (Service.init_args, components/platform/docker_checks.py)
        with the files and env its services get: replaced whenever any of them changes, and
        attached, so the provider waits for its exit before any member's own container is
        (re)created. Its name carries a digest of its inputs and the new check runs before the
        old one is deleted: every member's label reads its exit code, so a delete-before-replace
        check would have Pulumi delete every member first (see the module)."""
        if group.name in self._checks:
            return self._checks[group.name]
        first = group.members[0]
        files = group.files
        envs, secret_envs = _envs(first)
        volumes = group.volumes
        owners = [self._volume_owner(host, v, first.image, parent) for v in volumes if v.owner]
        holder = self._files_holder(group.name, first.image, files, first.user, host, parent) if files else None
        digest = _digest([first.image, repr(group.entrypoint), *envs, *secret_envs, repr(volumes),
                          first.user or "", repr(first.writable_paths), *([holder.name] if holder else [])])
        self._checks[group.name] = docker.Container(
            group.name,
            name=_named(group.name, digest),
            image=self.image(host, first.image).image_id,
            entrypoints=group.entrypoint,
            envs=pulumi.Output.all(*envs, *secret_envs) if secret_envs else envs,
            # Synapse's check creates the directories its config names (the media store).
            volumes=[docker.ContainerVolumeArgs(volume_name=self.volume(host, v.name).name, container_path=v.path,
                                                read_only=v.read_only) for v in volumes]
            + ([docker.ContainerVolumeArgs(from_container=holder.name, read_only=True)] if holder else []),
            user=first.user,
            read_only=True,
            tmpfs={path: tmpfs_options(first.user) for path in first.writable_paths} or None,
            memory=max(megabytes(m.resources.memory_limit) for m in group.members),
            attach=True,
            network_mode="none",
            **_helper_settings({"matrix-stack.component": "config-check", **_file_digests(files)}),
            opts=self._opts(host, parent, depends_on=[*owners, *([holder] if holder else [])]),
        )
        return self._checks[group.name]
