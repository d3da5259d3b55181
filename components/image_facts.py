"""Health checks, users and capability sets derived from the image facts (config/images.py).

Components call these instead of writing `wget ...` or a uid by hand, so a check only ever calls
a program the image ships and a service keeps every capability its binaries carry.
"""

from __future__ import annotations

import re

from components.platform.spec import HealthCheck, Service
from config.images import ImageFacts, facts_for


def http_check(image: str, port: int | None = None, path: str | None = None, **timing: int) -> HealthCheck:
    """A health check on the image's HTTP health path (or `path`), on its port (or `port`).

    Docker runs the image's own health-check program, else wget, else curl. With none of them
    (a FROM scratch image without a checker) Docker gets no command and Kubernetes still probes
    the path over HTTP.
    """
    facts = facts_for(image)
    path = path or facts.health_path
    port = port or facts.port
    if path is None or port is None:
        raise ValueError(f"{image}: no health path or port in its facts")
    url = f"http://127.0.0.1:{port}{path}"
    command: tuple[str, ...]
    if facts.healthcheck_binary:
        command = (facts.healthcheck_binary,)
    elif facts.wget:
        command = ("wget", "-qO-", url)
    elif facts.curl:
        command = ("curl", "-fsS", url)
    else:
        command = ()
    return HealthCheck(command, http_path=path, http_port=port, **timing)


# The user a service whose image has none runs as: Pod Security's `restricted` level admits no
# root container, and these programs (static binaries, an unprivileged port) need no root.
NOBODY = "65534:65534"


def user(image: str) -> str | None:
    """The "uid:gid" the image runs its program as (None: root, the image has no user)."""
    return facts_for(image).user


def non_root_user(image: str) -> str:
    """The image's own user, else nobody: for images that run as root only for want of a USER."""
    return facts_for(image).user or NOBODY


def capabilities(image: str) -> tuple[str, ...]:
    """Capabilities a service dropping all others must keep: its binaries' file capabilities."""
    return facts_for(image).capabilities


# ---------------------------------------------------------------- what a command calls

_SHELL_SPLIT = re.compile(r"\|\||&&|[|;&]|\$\(|`|\bthen\b|\bdo\b|\belse\b")
_SHELL_KEYWORDS = {"if", "fi", "done", "while", "for", "exec", "!", "{", "}", ")", "("}


def programs_called(command: tuple[str, ...]) -> list[str]:
    """The programs a command runs: its first word, and for `sh -c SCRIPT` each command of the
    script (first word after a pipe, `;`, `&&`, `$(`, or `exec`)."""
    if not command:
        return []
    called = [command[0]]
    if command[0] in ("sh", "/bin/sh", "bash") and len(command) > 2 and command[1] == "-c":
        for segment in _SHELL_SPLIT.split(command[2]):
            words = [w for w in segment.replace("(", " ").replace(")", " ").split()
                     if not re.match(r"^\w+=", w)]
            while words and words[0] in _SHELL_KEYWORDS:
                words = words[1:]
            if words and not words[0].startswith(("$", '"', "'", ">", "<", "/dev/")):
                called.append(words[0])
    return called


def missing_programs(facts: ImageFacts, command: tuple[str, ...]) -> list[str]:
    """Programs `command` calls that the image does not ship."""
    have = facts.programs
    return [p for p in programs_called(command) if p.rsplit("/", 1)[-1] not in have and p not in have]


def violations(service: Service) -> list[str]:
    """How `service` breaks its image's facts: a health check calling a program the image lacks,
    a capability its binaries carry dropped, a user other than the image's own, an entrypoint
    that steps down itself deprived of the capabilities it needs, or one that needs a writable
    directory under a read-only root."""
    facts = facts_for(service.image)
    found: list[str] = []
    if service.health is not None:
        for program in missing_programs(facts, service.health.command):
            found.append(f"{service.name}: its health check calls {program}, which {facts.image} does not ship")
        if not service.health.command and not service.health.http_path:
            found.append(f"{service.name}: a health check with neither a command nor an HTTP path")
    if service.drop_capabilities:
        for cap in facts.capabilities:
            if cap not in service.capabilities_add:
                found.append(f"{service.name}: drops {cap}, which a binary of {facts.image} carries "
                             "(the kernel refuses to exec it)")
    if service.schedule and "crond" not in facts.programs:
        found.append(f"{service.name}: runs on a schedule, which Docker hosts run with BusyBox crond, and "
                     f"{facts.image} does not ship it")
    for step in service.steps:
        step_facts = facts_for(step.image)
        if step.user is not None and step_facts.user is not None and step.user != step_facts.user:
            found.append(f"{service.name}: its step {step.name} runs as {step.user}, but {step_facts.image}'s "
                         f"user is {step_facts.user}")
        for program in missing_programs(step_facts, step.command[:1]):
            found.append(f"{service.name}: its step {step.name} calls {program}, which {step_facts.image} does not ship")
    if (service.user is not None and facts.user is not None and service.user != facts.user
            and not service.other_user_because):
        found.append(f"{service.name}: runs as {service.user}, but {facts.image}'s user is {facts.user}")
    if (facts.writable_workdir and service.user is not None and service.user.split(":")[0] not in ("0", "root")
            and service.read_only_root and facts.writable_workdir not in service.writable_paths):
        found.append(f"{service.name}: {facts.image}'s entrypoint refuses to start unless {facts.writable_workdir} "
                     "is writable by its user, and the root is read-only without it among the writable paths")
    if facts.steps_down and service.user is None and service.entrypoint is None and service.drop_capabilities:
        found.append(f"{service.name}: {facts.image}'s entrypoint steps down from root itself and needs "
                     "its capabilities; run it as its user or keep them")
    return found
