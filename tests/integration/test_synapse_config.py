"""Synapse's own config loader accepts every process's files, for several topologies.

`python -m synapse.config -c shared -c worker` runs HomeServerConfig.load_config (including the
worker rules, e.g. a missing instance_map.main) without a database or network. It needs the
signing key and every *_path secret, so the rendered files are written out relocated exactly as
the boot harness does.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from .cluster import boot_config, materialize, render, synapse_python


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
