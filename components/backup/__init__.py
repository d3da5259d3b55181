"""Backups: restic snapshots of every database the stack owns, the key files that cannot be
regenerated and the media store, on a schedule, with a restore procedure for the target
(README, "Backups"). render.py renders the jobs and the procedure; services.py describes them.
"""

from __future__ import annotations

from collections.abc import Mapping

import pulumi

from components.part import AFTER_CLUSTER, BuildContext, Component, Contribution, Part, ScheduledJob
from components.platform.spec import Service
from components.view import StackView
from config.model import S3Repository, SftpRepository, StackConfig

from . import render
from . import services as jobs

STAND_IN = "stand-in"
STACK_OUTPUTS = ("backup_repository_password", "backup_restore_procedure", "backup_snapshots_command")


class Backup(Part):
    name = "backup"
    switches = ("backup.enabled",)
    # After the cluster (and MAS): it reads the database passwords and key files they generate.
    stage = AFTER_CLUSTER
    reads = ("backup", "synapse.database", "synapse.media", "mas", "target", "backup_s3_access_key_id",
             "backup_s3_secret_access_key", "backup_sftp_private_key")

    def enabled(self, cfg: StackConfig) -> bool:
        return cfg.backup.enabled

    def database_readers(self, cfg: StackConfig) -> tuple[str, ...]:
        return (jobs.dump_service(cfg),)

    def scheduled_jobs(self, cfg: StackConfig) -> list[ScheduledJob]:
        return [ScheduledJob(render.METRICS_JOB, cfg.backup.schedule, "backup")]

    def backup_now(self, cfg: StackConfig) -> str:
        return render.backup_now_command(cfg)

    def secret_names(self, cfg: StackConfig) -> tuple[str, ...]:
        names = [jobs.PASSWORD]
        repo = cfg.backup.repository
        if isinstance(repo, S3Repository):
            names += ["s3_access_key_id", "s3_secret_access_key"]
        if isinstance(repo, SftpRepository):
            names.append("sftp_private_key")
        return tuple(names)

    def services(self, cfg: StackConfig, view: StackView, secrets: Mapping[str, pulumi.Input[str]]) -> list[Service]:
        # The databases' passwords and the key files are their parts' secrets: stand-ins in a check.
        databases = render.databases(view)
        shared = [*jobs.database_secrets(databases), *render.key_files(view)]
        values = {**dict.fromkeys(shared, STAND_IN), **secrets}
        return jobs.services(cfg, view, databases, values, [values[name] for name in jobs.database_secrets(databases)])

    def together(self, cfg: StackConfig, view: StackView, services: list[Service]) -> list[list[str]]:
        # The jobs mount the media store and share the scratch volume: one host with the
        # processes that hold the media store.
        media = list(view.media_store.services) if view.media_store is not None else []
        return [[*(s.name for s in services), *media]]

    def build(self, cfg: StackConfig, ctx: BuildContext) -> Contribution:
        from components import secrets as gen

        for text in render.warnings(cfg, ctx.view):
            pulumi.log.warn(text)
        component = Component("Backup", self.name)
        shared: dict[str, pulumi.Input[str]] = {}
        for built in ctx.built:
            shared.update(built.shared_secrets)
        values: dict[str, pulumi.Input[str]] = {
            jobs.PASSWORD: gen.password(f"{self.name}-repository-password", component, protect=cfg.protect)}
        databases = render.databases(ctx.view)
        # The databases' passwords and the key files, shared by the parts that own them.
        for name in [*jobs.database_secrets(databases), *render.key_files(ctx.view)]:
            values[name] = shared[name]
        if cfg.backup_s3_access_key_id is not None and cfg.backup_s3_secret_access_key is not None:
            values["s3_access_key_id"] = pulumi.Output.secret(cfg.backup_s3_access_key_id.get_secret_value())
            values["s3_secret_access_key"] = pulumi.Output.secret(cfg.backup_s3_secret_access_key.get_secret_value())
        if cfg.backup_sftp_private_key is not None:
            values["sftp_private_key"] = pulumi.Output.secret(cfg.backup_sftp_private_key.get_secret_value())
        stack = pulumi.get_stack()
        steps = render.restore_procedure(cfg, ctx.view, databases, stack)
        component.register_outputs({})
        return Contribution(
            parent=component,
            services=self.services(cfg, ctx.view, values),
            outputs={
                "backup_repository_password": values[jobs.PASSWORD],
                "backup_restore_procedure": render.procedure_text(steps),
                "backup_snapshots_command": render.snapshots_command(cfg),
            },
        )
