"""What every container on a Docker host is held to, and the one table of exceptions. Pure.

Every container (long-running or one-shot) runs with a read-only root, a non-root user, every
capability dropped (only what its image's binaries carry added back), `no-new-privileges` and a
memory limit, and holds no secret in its environment. A container that cannot is listed in
EXCEPTIONS with the property it breaks and why; the unit test over the rendered inputs and the
engine test over `docker inspect` both read this table, so an exception is written once, here.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from typing import Literal

Property = Literal["read_only_root", "non_root_user", "cap_drop_all", "no_new_privileges", "memory_limit",
                   "no_secret_env", "no_host_mount"]
PROPERTIES: tuple[Property, ...] = ("read_only_root", "non_root_user", "cap_drop_all", "no_new_privileges",
                                    "memory_limit", "no_secret_env", "no_host_mount")

NO_NEW_PRIVILEGES = "no-new-privileges:true"
# The memory of one-shot helpers (volume owner, file holder): chown and nothing else.
HELPER_MEMORY_MB = 64


@dataclass(frozen=True)
class Exemption:
    container: str  # a container name, or an fnmatch pattern of names
    property: Property
    reason: str


EXCEPTIONS: tuple[Exemption, ...] = (
    # One-shot helpers: each keeps the one fact its job needs.
    Exemption("matrix-stack-*-owner", "non_root_user",
               "chowns a fresh volume to the service's user: only root may give a file away (CAP_CHOWN, "
               "the one capability it keeps)"),
    Exemption("matrix-stack-*-owner", "cap_drop_all", "keeps CHOWN, its one job"),
    Exemption("*-files", "read_only_root",
               "never started: holds the service's uploaded files in anonymous volumes the service mounts "
               "read-only. pulumi-docker copies uploads with `docker cp` to \"/\", which Docker refuses "
               "on a read-only root even when every file lands in a volume"),
    # Scheduled services: BusyBox crond as PID 1, each job as the service's user (nobody).
    Exemption("backup", "non_root_user",
              "BusyBox crond (PID 1) starts each job as its crontab's user itself and refuses to as "
              "anyone but root (initgroups); the jobs run as nobody"),
    Exemption("backup-check", "non_root_user",
              "BusyBox crond (PID 1) starts each job as its crontab's user itself and refuses to as "
              "anyone but root (initgroups); the jobs run as nobody"),
    Exemption("backup", "cap_drop_all", "keeps SETUID and SETGID: crond sets each job's user and groups"),
    Exemption("backup-check", "cap_drop_all", "keeps SETUID and SETGID: crond sets each job's user and groups"),
    # node exporter: disk space of the host's filesystems, where Docker keeps the volumes.
    Exemption("node-exporter*", "no_host_mount",
              "mounts the host's / read-only at /host (rslave) to statfs its filesystems, Docker's volume "
              "directory among them: Docker reports no volume usage, and no named volume shows the "
              "filesystem of the others"),
)


def excepted(container: str, prop: Property) -> bool:
    """Whether the table excuses `container` from `prop`."""
    return any(e.property == prop and fnmatch.fnmatchcase(container, e.container) for e in EXCEPTIONS)


_QUANTITY = re.compile(r"^([0-9.]+)([KMGT]i?)?$")
_FACTOR = {None: 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
           "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def megabytes(quantity: str) -> int:
    """A Kubernetes memory quantity ("512Mi", "4Gi", "1G") as Docker's `memory`, in MB (MiB)."""
    match = _QUANTITY.match(quantity)
    if not match:
        raise ValueError(f"not a memory quantity: {quantity!r}")
    return max(1, int(float(match[1]) * _FACTOR[match[2]]) // 2**20)


def cpu_shares(quantity: str) -> int:
    """A Kubernetes CPU request ("250m", "2") as Docker's relative `cpu_shares`: 1024 per core
    (Docker's default weight is one core's), at least 2 (the kernel's minimum)."""
    cores = float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)
    return max(2, round(cores * 1024))
