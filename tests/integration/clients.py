"""The Element X readiness check (python -m render.check_clients), run as its users run it: a
separate process against the deployment's public URL, the password in its environment."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping

from render import check_clients

from .cluster import ROOT, Cluster

REQUIREMENTS = ("well-known", "sliding-sync", "sliding-sync-request", "login", "rtc-transports", "media")


def run_check(cluster: Cluster, server_url: str, user: str, password: str, *extra: str,
              env: Mapping[str, str] | None = None) -> tuple[int, str]:
    """(exit status, output) of the check logged in as `user`, in the cluster's view of DNS;
    `env`: more environment (how a federation test resolves its names, say)."""
    cmd = cluster.resolving([sys.executable, "-m", "render.check_clients", server_url, "--user", user, *extra])
    done = subprocess.run(cmd, cwd=ROOT, env=os.environ | dict(env or {}) | {check_clients.PASSWORD_ENV: password},
                          capture_output=True, text=True, timeout=300)
    return done.returncode, done.stdout + done.stderr


def verdicts(output: str) -> dict[str, str]:
    """requirement -> PASS/FAIL/SKIP, from the check's output lines."""
    found = {}
    for line in output.splitlines():
        status, _, rest = line.partition(" ")
        if status in ("PASS", "FAIL", "SKIP"):
            found[rest.split(":", 1)[0]] = status
    return found
