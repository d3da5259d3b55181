"""MAS as target-neutral services, from the typed config and its secrets. Pure: `secrets` maps
each name of secret_names(cfg) to a value (Pulumi Outputs in a deployment, stand-in strings in
checks and tests); values only ever land in secret files or secret env.
"""

from __future__ import annotations

from collections.abc import Mapping

import pulumi

from components import image_facts
from components.network import host_network
from components.part import derive
from components.platform.spec import File, Port, Resources, Service
from components.view import StackView
from config import images
from config.model import ExternalPostgres, MasBundledDatabase, StackConfig

from . import render

COMPONENT = "mas"
GENERATED = ("encryption", "rsa", "ec", "matrix")
# The bundled PostgreSQL's superuser password (the Synapse cluster's "postgres" secret): the
# database setup creates MAS's role and database with it.
SUPERUSER = "postgres"
# What the database setup runs as: the postgres image's own user (psql needs no root).
POSTGRES_IMAGE_USER = images.facts_for(images.POSTGRES).user
CLIENT_STAND_IN = "stand-in"


def provider_secret(name: str) -> str:
    return f"upstream:{name}"


def secret_names(cfg: StackConfig) -> tuple[str, ...]:
    """Every secret MAS reads: generated ones, the database password (generated for the bundled
    database, the secret config key otherwise), SMTP's and the upstream client secrets."""
    names = [*GENERATED, "database"]
    if isinstance(cfg.mas.database, MasBundledDatabase):
        names.append(SUPERUSER)
    smtp = cfg.synapse.smtp
    if smtp is not None and smtp.user:
        names.append("smtp")
    names += [provider_secret(p.name) for p in cfg.mas.upstream_oauth2 if p.needs_secret]
    return tuple(names)


def _secret(path: str, value: pulumi.Input[str]) -> File:
    return File(path, value, secret=True, mode=0o400)


def mas_service(cfg: StackConfig, view: StackView, secrets: Mapping[str, pulumi.Input[str]]) -> Service:
    image = cfg.mas.image
    files = [
        File(render.CONFIG, render.config_yaml(cfg, view)),
        _secret(render.ENCRYPTION_FILE, secrets["encryption"]),
        _secret(render.SIGNING_KEYS["rsa-4096"], secrets["rsa"]),
        _secret(render.SIGNING_KEYS["ec-p256"], secrets["ec"]),
        _secret(render.MATRIX_SECRET_FILE, secrets["matrix"]),
        _secret(render.DATABASE_PASSWORD_FILE, secrets["database"]),
    ]
    if "smtp" in secrets and cfg.synapse.smtp is not None and cfg.synapse.smtp.user:
        files.append(_secret(render.SMTP_PASSWORD_FILE, secrets["smtp"]))
    for provider in cfg.mas.upstream_oauth2:
        if provider.needs_secret:
            files.append(_secret(render.provider_secret_file(provider), secrets[provider_secret(provider.name)]))
    for client in view.oauth_clients:
        # MAS generates each client's secret in its build; a check sees a stand-in.
        files.append(_secret(render.client_secret_file(client), secrets.get(client.secret, CLIENT_STAND_IN)))
    if cfg.mas.syn2mas:
        # syn2mas reads Synapse's database as MAS's own role (granted read access in this mode;
        # its database claim), with that role's password in the Synapse config it reads.
        files.append(_secret(render.SYN2MAS_SYNAPSE_CONFIG,
                             derive(secrets["database"], lambda pw: render.syn2mas_synapse_config(cfg, view, pw))))
    return Service(
        name=render.SERVICE,
        component=COMPONENT,
        image=image,
        args=("server",),
        env={"MAS_CONFIG": render.CONFIG},
        files=files,
        ports=[Port("http", render.HTTP_PORT), Port("health", render.HEALTH_PORT)],
        # No shell, wget or curl in the image: Docker has nothing to run (the platform's restart
        # policy still restarts a crashed MAS), Kubernetes probes the health listener.
        health=image_facts.http_check(image, render.HEALTH_PORT),
        user=image_facts.user(image),
        read_only_root=True,
        writable_paths=("/tmp",),
        resources=Resources(cpu_request="100m", memory_request="128Mi", memory_limit="1Gi"),
        # MAS's own config check, before every (re)start: a config MAS cannot load never replaces
        # a running one.
        init_args=(*images.facts_for(image).entrypoint, "config", "check"),
        # The routing proxy forwards clients; Synapse introspects tokens; the stack's OAuth
        # clients redeem their codes.
        allowed_clients=(*((view.edge_service,) if view.edge_service else ()),
                         *(view.homeserver.processes if view.homeserver else ()),
                         *(name for client in view.oauth_clients for name in client.services)),
        egress_internet=("upstream OIDC providers", "SMTP"),
        # An external database given by address may be private (a name is reached as internet).
        egress_networks=external_database_networks(cfg),
        metrics_port=render.METRICS_PORT,
        metrics_path=render.METRICS_PATH,
        metrics_labels=(("job", render.METRICS_JOB), ("role", "mas")),
    )


def external_database_networks(cfg: StackConfig) -> tuple[str, ...]:
    """The addresses of the external databases MAS dials (its own; Synapse's too for syn2mas)."""
    hosts = [db.host for db in (cfg.mas.database, cfg.synapse.database if cfg.mas.syn2mas else None)
             if isinstance(db, ExternalPostgres)]
    return tuple(dict.fromkeys(cidr for host in hosts for cidr in host_network(host)))


def services(cfg: StackConfig, view: StackView, secrets: Mapping[str, pulumi.Input[str]]) -> list[Service]:
    return [mas_service(cfg, view, secrets)]
