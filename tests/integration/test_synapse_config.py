"""Synapse's own config loader accepts every process's files, for several topologies.

`python -m synapse.config -c shared -c worker` runs HomeServerConfig.load_config (including the
worker rules, e.g. a missing instance_map.main) without a database or network. It needs the
signing key and every *_path secret, so the rendered files are written out relocated exactly as
the boot harness does. The Docker target's shared check script (one container runs every
process's check) runs under a real sh with the same validator.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ..conftest import stack_raw
from .cluster import Relocation, boot_config, materialize, render, synapse_python


def _every_setting() -> dict[str, object]:
    """Every typed homeserver setting at once, and the parts that add homeserver keys (Element
    Call, coturn, ntfy), so Synapse itself judges all of them together."""
    raw = boot_config({"generic": 1, "event_persister": 1, "media_repository": 2})
    raw["server_name"] = "example.org"
    raw["tls"] = {"acme_email": "ops@example.org"}
    raw["element_call"] = {"enabled": True}
    raw["ntfy"] = {"enabled": True}
    raw["coturn"] = {"enabled": True, "external_ip": "192.0.2.7"}
    raw["smtp_password"] = "stand-in-smtp"
    raw["ldap_bind_password"] = "stand-in-ldap"
    syn = raw["synapse"]
    assert isinstance(syn, dict)
    syn.update({
        "registration": {"mode": "email"},
        "smtp": {"host": "smtp.example.org", "user": "matrix", "from_address": "Matrix <matrix@example.org>"},
        "ldap": {"uri": "ldaps://ldap.example.org", "base": "ou=people,dc=example,dc=org",
                 "bind_dn": "cn=synapse,dc=example,dc=org"},
        "url_previews": {"enabled": True, "ip_range_blacklist_extra": ["100.100.0.0/16"]},
        "federation": {"domain_whitelist": ["example.org", "matrix.org", "example.net"], "deny": ["evil.example"]},
        "admin_api_allowlist": ["10.0.0.0/8"],
        "max_upload_size": "80M",
    })
    return raw


TOPOLOGIES: dict[str, tuple[dict[str, object], tuple[str, ...]]] = {
    "monolith": (boot_config(None, preset="monolith"), ()),
    "seed-000": (boot_config(None, preset="seed-000"), ()),
    "custom": (boot_config({"sync": 2, "client_reader": 2, "event_creator": 1}), ()),
    "every-setting": (_every_setting(), ("smtp_password", "ldap_bind_password")),
}


def _check(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[int, str]:
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=120)
    return done.returncode, done.stdout + done.stderr


@pytest.mark.parametrize("topology", sorted(TOPOLOGIES))
def test_every_process_config_parses(topology: str) -> None:
    raw, secret_keys = TOPOLOGIES[topology]
    result = render(raw, secret_keys)
    base = Path(tempfile.mkdtemp(prefix=f"synapse-config-{topology}-"))
    try:
        reloc = materialize(result, base)
        jobs = []
        for entry in result.services:
            service = entry["service"]
            if service.entrypoint is None or "synapse.app" not in " ".join(service.entrypoint):
                continue
            # The same --config-path list the process is started with, handed to the validator.
            cmd = [synapse_python(), "-m", "synapse.config", *reloc.args(service.args)]
            env = dict(os.environ) | {k: v for k, (v, _s) in entry["env"].items()}
            jobs.append((service.name, cmd, env))
        expected_workers = sum(c for c in _counts(result).values())
        assert len(jobs) == 1 + expected_workers
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            outcomes = list(pool.map(lambda j: (j[0], *_check(j[1], j[2], base)), jobs))
        failed = [f"{name} (exit {rc}):\n{out}" for name, rc, out in outcomes
                  if rc != 0 or "Config parses OK!" not in out]
        assert not failed, "\n\n".join(failed)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _counts(result: object) -> dict[str, int]:
    from components.synapse.workers import counts_for

    workers = result.cfg.synapse.workers  # type: ignore[attr-defined]
    return counts_for(workers.preset, dict(workers.counts))


# ---------------------------------------------------------------- the Docker target's shared check

CHECK = "synapse-check-config"


def _shared_check(result: object, reloc: Relocation, bin_dir: Path) -> tuple[list[str], dict[str, str]]:
    """The rendered check container's command and env, with its container paths relocated and
    `python` on PATH being Synapse's."""
    inputs = result.by_name(CHECK).plain_inputs()  # type: ignore[attr-defined]
    shell, flag, script = inputs["entrypoints"]
    assert (shell, flag) == ("/bin/sh", "-c")
    script = re.sub(r"(?<= )/\S+", lambda m: reloc.path(m.group(0)), script)
    assert " /conf/" not in script
    bin_dir.mkdir(exist_ok=True)
    # A wrapper, not a symlink: a venv's python finds its packages through the path it runs as.
    wrapper = bin_dir / "python"
    wrapper.write_text(f'#!/bin/sh\nexec {shlex.quote(synapse_python())} "$@"\n')
    wrapper.chmod(0o755)
    env = dict(os.environ) | dict(e.split("=", 1) for e in inputs["envs"])
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    return [shell, flag, script], env


def _logged(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[int, str]:
    """Exit code and output, stdout and stderr interleaved as the container's log keeps them."""
    done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd,
                          timeout=600)
    return done.returncode, done.stdout


def test_the_shared_check_script_passes_every_dev_process_and_names_a_broken_one(tmp_path: Path) -> None:
    result = render(stack_raw("dev"))
    processes = list(result.deployment.outputs["synapse_processes"])
    assert len(processes) == 5
    reloc = materialize(result, tmp_path / "files")
    cmd, env = _shared_check(result, reloc, tmp_path / "bin")

    code, out = _logged(cmd, env, tmp_path)
    assert code == 0, out
    assert out.count("Config parses OK!") == len(processes), out
    for name in processes:
        assert f"== {name}\n" in out

    # One worker's file refused by Synapse: the check still runs every process, fails, and its
    # log names exactly that process.
    broken = "synapse-event-persister-1"
    path = Path(reloc.path(f"/conf/workers/{broken}.yaml"))
    path.write_text(path.read_text() + "worker_listeners: [{port: not-a-port, type: http}]\n")
    code, out = _logged(cmd, env, tmp_path)
    assert code == 1, out
    own = out[out.index(f"== {broken}\n"):out.index("== synapse-media-repository-1\n")]
    assert "Listener configuration is lacking a valid 'port' option" in own, out
    assert out.count("Config parses OK!") == len(processes) - 1, out
    assert f"== the configuration check failed for: {broken}\n" in out, out
