"""coturn's binary really executes under the capability set each target gives its container.

The coturn image gives /usr/bin/turnserver the file capability CAP_NET_BIND_SERVICE=+ep and runs
as nobody. The kernel refuses to exec a binary whose file-permitted capabilities are not all in
the bounding set, so a container that drops every capability never starts coturn. Here Debian's
turnserver gets the same file capability and is executed under the bounding set, user and
no_new_privs flag that the Docker container and the Kubernetes pod declare.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from components.coturn import render as coturn
from render import offline

from .calls import TURNSERVER_FILE_CAPS

# The capability set a container runtime (Docker, containerd, CRI-O) starts from.
RUNTIME_DEFAULT_CAPS = frozenset({
    "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE",
    "NET_RAW", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
})

NOBODY = "65534:65534"
BASE: dict[str, Any] = {"server_name": "example.org", "coturn": {"enabled": True, "external_ip": "198.51.100.9"}}
DOCKER = {**BASE, "tls": {"mode": "acme", "acme_email": "ops@example.org"},
          "target": {"kind": "docker", "hosts": [{"name": "one", "url": "ssh://deploy@one.example.org"}]}}
KUBERNETES = {**BASE, "tls": {"mode": "acme"},
              "target": {"kind": "kubernetes", "cert_manager_issuer": "letsencrypt"}}


def _bounding(drop: list[str], add: list[str]) -> set[str]:
    base = set() if "ALL" in drop else RUNTIME_DEFAULT_CAPS - set(drop)
    return base | set(add)


def docker_context(run: offline.Run) -> tuple[set[str], str, bool]:
    """(bounding set, uid:gid, no_new_privs) of coturn's Docker container."""
    [container] = [r for r in run.of_type("docker:index/container:Container") if r.name == coturn.SERVICE]
    inputs = container.plain_inputs()
    caps = inputs.get("capabilities") or {}
    nnp = "no-new-privileges:true" in (inputs.get("securityOpts") or [])
    return _bounding(caps.get("drops", []), caps.get("adds", [])), inputs["user"], nnp


def kubernetes_context(run: offline.Run) -> tuple[set[str], str, bool]:
    """(bounding set, uid:gid, no_new_privs) of coturn's pod."""
    [workload] = [r for r in run.resources if r.name in {f"deployment-{coturn.SERVICE}", f"statefulset-{coturn.SERVICE}"}]
    [container] = workload.plain_inputs()["spec"]["template"]["spec"]["containers"]
    sec = container["securityContext"]
    caps = sec.get("capabilities") or {}
    nnp = sec.get("allowPrivilegeEscalation") is False
    return _bounding(caps.get("drop", []), caps.get("add", [])), f"{int(sec['runAsUser'])}:{int(sec['runAsGroup'])}", nnp


def exec_under(binary: Path, bounding: set[str], user: str, no_new_privs: bool) -> subprocess.CompletedProcess[str]:
    uid, gid = user.split(":")
    caps = ",".join(["-all", *(f"+{c.lower()}" for c in sorted(bounding))])
    cmd = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", f"--bounding-set={caps}",
           "--inh-caps=-all", *(["--no-new-privs"] if no_new_privs else []), str(binary), "--version"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def turnserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    missing = [exe for exe in ("turnserver", "setcap", "setpriv") if shutil.which(exe) is None]
    if missing or os.geteuid() != 0:
        raise RuntimeError(f"needs root and {', '.join(missing) or 'the tools'}: scripts/test installs "
                           "coturn, libcap2-bin and util-linux")
    work = tmp_path_factory.mktemp("coturn-caps")
    os.chmod(work, 0o755)
    binary = work / "turnserver"
    shutil.copy(shutil.which("turnserver") or "", binary)
    os.chmod(binary, 0o755)
    subprocess.run(["setcap", TURNSERVER_FILE_CAPS, str(binary)], check=True)
    # The check itself must be able to fail: with no capability at all, the kernel refuses.
    refused = exec_under(binary, set(), NOBODY, True)
    assert refused.returncode != 0 and "Operation not permitted" in refused.stderr, refused
    yield binary


@pytest.mark.parametrize("target", ["docker", "kubernetes"])
def test_turnserver_executes_under_the_declared_capabilities(turnserver: Path, target: str) -> None:
    if target == "docker":
        bounding, user, nnp = docker_context(offline.run(DOCKER, stack="caps"))
    else:
        bounding, user, nnp = kubernetes_context(offline.run(KUBERNETES, stack="caps"))
    assert not user.startswith("0:"), user  # the image's unprivileged user, as the image runs it
    done = exec_under(turnserver, bounding, user, nnp)
    assert done.returncode == 0, (f"{target}: turnserver refused under bounding set {sorted(bounding)} as {user}: "
                                  f"{done.stderr.strip()}")
    assert done.stdout.strip()[:1].isdigit(), done.stdout  # it printed its version
