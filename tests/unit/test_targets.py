"""Targets by registry, operations by contract: a third target, registered in the test tree alone,
builds a whole stack with backups and MAS through the real program under Pulumi's mocks, and the
operator's procedures (the restore, syn2mas, the admin commands) are written in its verbs.

The config side: the target union in config/model.py is schema, and a stack config names one of
its members. Rather than rebuild StackConfig around a wider union in the test process (a global
change to a pydantic class every later test would see), the test parses a real stack config and
swaps its validated `target` for a test-only model of the new kind; then it runs every rule, the
config's and the stack's, against the swapped config, as the loader would."""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import pydantic
import pytest

import stack
from components import checks
from components.backup import render as backup
from components.checks import view_of
from components.mas import render as mas
from components.platform import make_platform, targets
from components.platform.contract import (
    Graph,
    Handover,
    Host,
    OneShot,
    OperatorStep,
    Session,
    Terms,
    Workload,
)
from config.checks import Finding
from config.model import StackConfig
from config.rules import RULES as CONFIG_RULES
from render import offline
from render.__main__ import write

KIND = "nomad-like"
SFTP = {"kind": "sftp", "host": "vault.example.net", "user": "backup", "path": "/srv/restic",
        "known_hosts": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExampleHostKeyReplaceItWithSshKeyscanOutput"}
RAW: dict[str, Any] = {"server_name": "example.org", "tls": {"acme_email": "ops@example.org"},
                       "backup": {"enabled": True, "repository": SFTP}, "mas": {"enabled": True},
                       "backup_sftp_private_key": "-----BEGIN OPENSSH PRIVATE KEY-----\nx\n-----END OPENSSH PRIVATE KEY-----"}
SECRET_KEYS = ("backup_sftp_private_key",)


class NomadLikeConfig(pydantic.BaseModel):
    """The new target's config: what a member of config.model's target union would be."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)
    kind: Literal["nomad-like"] = KIND
    region: str = "global"
    http_port: int = 80  # every target's config tells the port clients reach HTTP on


class NomadLike:
    """A trivial Target: facts from the config, verbs as nomad-ish command lines."""

    kind = KIND
    terms = Terms(place="region", workloads="jobs", volume="host volume", starts_in_order=False)
    scheduled_steps = True  # a task group runs prestart tasks
    reports_volume_usage = True
    shares_caches = False

    def __init__(self, cfg: StackConfig):
        self.cfg = cfg

    def reach(self, consumer: str, service: str, port: int) -> tuple[str, int, bool]:
        return f"{service}.service.consul", port, False

    def proxy_terminates_tls(self) -> bool:
        return self.cfg.tls_mode != "none"

    def per_machine(self, service: str) -> tuple[str, ...]:
        return ()

    def trusted_proxy_ranges(self) -> tuple[str, ...]:
        return ()

    def public_port(self, scheme: str) -> int:
        return 443 if scheme == "https" else 80

    def proxy_host_port(self, scheme: str) -> int | None:
        return None

    def certificate_problems(self, direct_hostnames: Sequence[str]) -> list[Finding]:
        return []

    def placement_problems(self, services: Sequence[str], together: Sequence[Sequence[str]]) -> list[Finding]:
        return []

    def host_of(self, service: str) -> Host | None:
        return None

    def volume_name(self, volume: str) -> str:
        return f"nomad-{volume}"

    def admin_command(self, service: str, stateful: bool, command: str) -> str:
        return f"nomad alloc exec -i -t -task {service} {command}"

    def exec_command(self, service: str, stateful: bool, command: str, *, stdin: bool = False) -> str:
        return f"nomad alloc exec{' -i' if stdin else ''} -task {service} {command}"

    def stop(self, services: Sequence[Workload], label: str | None = None) -> list[str]:
        return [f"nomad job stop {' '.join(s.name for s in services)}"]

    def start(self, services: Sequence[Workload], stack: str) -> list[str]:
        return [f"nomad job run {s.name}.nomad" for s in services]

    def hand_over(self, handover: Handover) -> Session:
        return Session(
            before=(OperatorStep(f"{handover.secrets_text} as a Nomad variable.",
                                 f"nomad var put nomad/jobs/{handover.name} "
                                 + " ".join(f'{k}="${k}"' for k in handover.secret_env)),),
            after=(OperatorStep("Remove the variable.", f"nomad var purge nomad/jobs/{handover.name}"),),
            files={name: f"/local/{name}" for name, _path in handover.files})

    def run_scheduled(self, service: str, command: str, user: str | None) -> str:
        return f"nomad job periodic force {service}"

    def run_once(self, run: OneShot) -> str:
        mounts = " ".join(f"-volume {self.volume_name(m.volume)}:{m.path}" for m in run.mounts)
        return f"nomad job dispatch {run.name} -image {run.image} {mounts} -- {shlex.join(run.args)}".replace("  ", " ")


class NomadLikePlatform(NomadLike):
    """Its adapter: realize records the services instead of declaring resources."""

    realized: list[str]

    @property
    def manifests(self) -> Mapping[str, Mapping[str, Any]]:
        return {}

    def realize(self, graph: Graph) -> None:
        NomadLikePlatform.realized = [service.name for service, _parent in graph.services]


@pytest.fixture
def nomad_like(monkeypatch: pytest.MonkeyPatch) -> StackConfig:
    """The one registration, and a stack config whose target is of the new kind."""
    monkeypatch.setitem(targets.TARGETS, KIND, targets.Registration(NomadLike, lambda: NomadLikePlatform))
    cfg = stack.parse(RAW, SECRET_KEYS).model_copy(update={"target": NomadLikeConfig()})
    monkeypatch.setattr(stack, "parse", lambda raw, secret_keys=(): cfg)  # offline.run parses through it
    return cfg


def test_every_rule_judges_the_new_target_through_the_registry(nomad_like: StackConfig) -> None:
    assert isinstance(make_platform(nomad_like), NomadLikePlatform)
    findings = [finding for rule in (*CONFIG_RULES, *checks.RULES) for finding in rule.run(nomad_like)]
    assert findings == []


def test_a_third_target_builds_a_stack_with_backups_and_mas_in_its_own_verbs(nomad_like: StackConfig,
                                                                            tmp_path: Path) -> None:
    run = offline.run(RAW, stack="test", secret_keys=SECRET_KEYS)
    names = [s.name for s in run.deployment.services]
    assert NomadLikePlatform.realized == names
    assert {"synapse-main", "synapse-postgres", "mas", "backup", "backup-check"} <= set(names)
    # Its scheduled services run steps: the dump is the backup job's step, not a service.
    assert backup.DUMP_SERVICE not in names
    assert [step.name for s in run.deployment.services if s.name == backup.BACKUP_SERVICE for step in s.steps] == ["dump"]
    write(run, tmp_path / "out")  # the offline render writes it too

    outputs = run.deployment.outputs
    procedure = outputs["backup_restore_procedure"]
    for verb in ("nomad var put nomad/jobs/backup-restore RESTIC_PASSWORD=\"$RESTIC_PASSWORD\"",
                 "nomad job dispatch backup-restore -image restic/restic",
                 "sftp.command=ssh -i /local/sftp-key",  # where the target put the handed-over file
                 "nomad job stop synapse-main synapse-proxy mas",
                 "nomad alloc exec -i -task synapse-postgres pg_restore -U synapse",
                 "-volume nomad-synapse-media:/media_store",
                 "# 9. Restore the media store into its host volume",
                 "Start Synapse again with the stack's replica counts.\nnomad job run synapse-main.nomad",
                 "nomad var purge nomad/jobs/backup-restore"):
        assert verb in procedure, verb
    assert "docker" not in procedure and "kubectl" not in procedure
    assert outputs["backup_snapshots_command"] in procedure

    syn2mas = outputs["mas_syn2mas_commands"]
    assert "nomad job stop synapse-main\nnomad alloc exec -task synapse-postgres pg_dump -U synapse -Fc synapse" in syn2mas
    assert "nomad alloc exec -i -t -task mas mas-cli syn2mas check" in syn2mas
    assert outputs["mas_create_admin_command"] == "nomad alloc exec -i -t -task mas mas-cli manage register-user --admin admin"
    assert syn2mas == "\n\n".join(mas.syn2mas_commands(nomad_like, view_of(nomad_like)[0]))


def test_an_unregistered_kind_is_named_with_the_registry() -> None:
    cfg = stack.parse(RAW, SECRET_KEYS).model_copy(update={"target": NomadLikeConfig()})
    with pytest.raises(KeyError, match="no target of kind 'nomad-like' is registered"):
        targets.target_of(cfg)
