"""Which services of a Docker host share one configuration check, and the script it runs. Pure.

A service with `init_args` (every Synapse process, MAS) is checked by a one-shot container before
its own container is (re)created. Services of one component on one host that run the same image
as the same user, with the same env and the same content at every path they share, are checked
together: one container holds all their files and runs each one's check in turn. Every member's
container waits for that one run, so a stack's Synapse processes are replaced only when all their
configurations pass (never half of them on a config the other half refuses), and a preview
declares one check per host instead of one per process.

An image without a shell (MAS is distroless) cannot run the script, and a group of one needs
none: both keep the service's own check, `<service>-check-config`, running `init_args` as given.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import pulumi

from config import images

from .spec import File, Service, Volume

SUFFIX = "check-config"
_Mounted = TypeVar("_Mounted", File, Volume)


def _first_per_path(items: Iterable[_Mounted]) -> list[_Mounted]:
    """The first item at each path, in order."""
    seen: dict[str, _Mounted] = {}
    for item in items:
        seen.setdefault(item.path, item)
    return list(seen.values())


@dataclass
class CheckGroup:
    """Services checked by one container: `name` is its resource and container name."""

    name: str
    host: str
    members: list[Service] = field(default_factory=list)

    @property
    def combined(self) -> bool:
        return len(self.members) > 1

    @property
    def files(self) -> list[File]:
        """Every member's files, each path once, in the order the members list them."""
        return _first_per_path(f for service in self.members for f in service.files)

    @property
    def volumes(self) -> list[Volume]:
        """Every member's volumes, each mount path once (the check creates the directories the
        configs name, such as the media store, on the volumes the services will use)."""
        return _first_per_path(v for service in self.members for v in service.volumes)

    @property
    def entrypoint(self) -> list[str]:
        if not self.combined:
            assert self.members[0].init_args
            return list(self.members[0].init_args)
        return ["/bin/sh", "-c", check_script([(s.name, s.init_args or ()) for s in self.members])]


def check_script(checks: Sequence[tuple[str, Sequence[str]]]) -> str:
    """A POSIX sh script that runs every (service, command) check, even after one fails, prints
    each service's name before its output and the names of the failing ones at the end, and
    exits 1 when any failed (the container's exit code, which the deployment turns into an error;
    its log is what the operator reads)."""
    lines = ["failed=''"]
    for name, command in checks:
        quoted = shlex.quote(name)
        lines.append(f"echo {shlex.quote(f'== {name}')}")
        lines.append(f'{shlex.join(command)} || failed="$failed "{quoted}')
    lines.append('if [ -n "$failed" ]; then echo "== the configuration check failed for:$failed" >&2; exit 1; fi')
    lines.append("echo '== every configuration passed'")
    return "\n".join(lines) + "\n"


def _same(a: pulumi.Input[str], b: pulumi.Input[str]) -> bool:
    # A rendered string compares by value; an Output (a secret, a derived value) only as the same
    # object, since its value is unknown until the deployment resolves it.
    return a is b or (isinstance(a, str) and isinstance(b, str) and a == b)


def _same_inputs(a: Mapping[str, pulumi.Input[str]], b: Mapping[str, pulumi.Input[str]]) -> bool:
    return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)


def agree(a: Service, b: Service) -> bool:
    """Whether one container can hold both services' files, env, user and volumes."""
    if (a.image, a.user, a.component) != (b.image, b.user, b.component):
        return False
    if not (_same_inputs(a.env, b.env) and _same_inputs(a.secret_env, b.secret_env)):
        return False
    files = {f.path: f for f in a.files}
    for f in b.files:
        mine = files.get(f.path)
        if mine is not None and not (mine.secret == f.secret and mine.mode == f.mode and _same(mine.content, f.content)):
            return False
    volumes = {v.path: v for v in a.volumes}
    return all(volumes.get(v.path, v) == v for v in b.volumes)


def has_shell(image: str) -> bool:
    try:
        return images.facts_for(image).shell
    except KeyError:  # an image outside the table: promise nothing it may lack
        return False


def check_groups(services: Sequence[Service], host_of: Callable[[str], str], several_hosts: bool,
                 shell: Callable[[str], bool] = has_shell) -> dict[str, CheckGroup]:
    """Each checked service's group, by service name. A service joins the first group of its
    host and component it agrees with; services are taken in the order given (start order)."""
    groups: list[CheckGroup] = []
    for service in services:
        if not service.init_args:
            continue
        host = host_of(service.name)
        group = next((g for g in groups if g.host == host and all(agree(m, service) for m in g.members)), None) \
            if shell(service.image) else None
        if group is None:
            group = CheckGroup(name="", host=host)
            groups.append(group)
        group.members.append(service)
    by_service: dict[str, CheckGroup] = {}
    names: set[str] = set()
    for i, group in enumerate(groups):
        first = group.members[0]
        if group.combined:
            # Named like the other per-host resources: by host only when there are several.
            base = f"{first.component}-{group.host}" if several_hosts else first.component
            earlier = [g for g in groups[:i] if g.combined and g.host == group.host
                       and g.members[0].component == first.component]
            group.name = f"{base}-{len(earlier) + 1}-{SUFFIX}" if earlier else f"{base}-{SUFFIX}"
        else:
            group.name = f"{first.name}-{SUFFIX}"
        if group.name in names:
            raise ValueError(f"two configuration checks would be named {group.name}")
        names.add(group.name)
        by_service.update({s.name: group for s in group.members})
    return by_service
