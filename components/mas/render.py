"""The Matrix Authentication Service's config.yaml, its Synapse side and its database, rendered
from the typed config. Pure functions.

MAS does not refuse keys it does not know (its config structs do not deny unknown fields), so a
misspelt key would be silently ignored. Every key here is written by this module from a typed
setting, and tests/unit/test_mas.py validates each rendered file against MAS's own JSON schema
for the pinned version, closed so that an unknown key fails.

No secret is inline: MAS reads the encryption key, its signing keys, the homeserver's shared
secret, database, SMTP and upstream client secrets from files (its `*_file` keys).
"""

from __future__ import annotations

import hashlib
from typing import Any

from components import yaml_text
from components.network import LOOPBACK, PRIVATE_NETWORKS
from components.part import HOMESERVER_SECRETS_DIR, OAuthClient
from components.view import StackView
from config.model import (
    ClaimImport,
    MasBundledDatabase,
    StackConfig,
    UpstreamProvider,
)

SERVICE = "mas"
HTTP_PORT = 8080  # the image's own default web listener
HEALTH_PORT = 8081  # the image's default internal listener; bound on every address for probes
# A listener of its own for the `prometheus` resource, which serves what the telemetry section's
# Prometheus exporter collects (crates/config/src/sections/telemetry.rs at v1.22.0): apart from
# the web listener the proxy forwards to, so only the stack's scraper dials it.
METRICS_PORT = 8082
METRICS_PATH = "/metrics"
METRICS_JOB = "mas"

# The image reads MAS_CONFIG, else config.yaml in its WORKDIR (/); a directory of our own keeps
# the file beside the others a platform mounts.
CONFIG = "/conf/config.yaml"
SECRETS_DIR = "/secrets"
ENCRYPTION_FILE = f"{SECRETS_DIR}/encryption"
MATRIX_SECRET_FILE = f"{SECRETS_DIR}/matrix_secret"
DATABASE_PASSWORD_FILE = f"{SECRETS_DIR}/database_password"
SMTP_PASSWORD_FILE = f"{SECRETS_DIR}/smtp_password"
# Signing keys: kid -> file. RS256 is what clients expect by default; ES256 beside it.
SIGNING_KEYS = {"rsa-4096": f"{SECRETS_DIR}/keys/rsa-4096.pem", "ec-p256": f"{SECRETS_DIR}/keys/ec-p256.pem"}

DATABASE_NAME = "mas"
DATABASE_USER = "mas"
DATABASE_POOL = 10  # MAS's max_connections, counted into the bundled PostgreSQL's limit

# Synapse reads the shared secret from here (beside its own secrets).
SYNAPSE_SECRET_PATH = f"{HOMESERVER_SECRETS_DIR}/mas_shared_secret"

# Where the routing proxy may sit: Docker's private networks, a Kubernetes pod network, loopback.
TRUSTED_PROXIES = PRIVATE_NETWORKS + LOOPBACK

# Crockford's base32, the ULID alphabet.
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def client_secret_file(client: OAuthClient) -> str:
    return f"{SECRETS_DIR}/clients/{client.name}"


def clients_section(view: StackView) -> list[dict[str, Any]]:
    """The stack's own OAuth clients (other parts' services that log users in through MAS), each
    with its secret in a file."""
    return [{"client_id": client.client_id, "client_auth_method": "client_secret_basic",
             "client_name": client.name, "client_secret_file": client_secret_file(client),
             "redirect_uris": list(client.redirect_uris)} for client in view.oauth_clients]


def provider_secret_file(provider: UpstreamProvider) -> str:
    return f"{SECRETS_DIR}/upstream/{provider.name}"


def provider_id(cfg: StackConfig, provider: UpstreamProvider) -> str:
    """The provider's ULID: set, or derived from the server name and its name, so it stays the
    same across deploys (MAS keys its users' upstream links by it)."""
    if provider.id:
        return provider.id
    number = int.from_bytes(hashlib.sha256(f"{cfg.server_name}/{provider.name}".encode()).digest()[:16], "big")
    # 26 base32 digits hold 130 bits: the leading digit of a 128-bit number is 0-7, as a ULID's is.
    return "".join(_CROCKFORD[(number >> (5 * i)) & 31] for i in reversed(range(26)))


def public_base(cfg: StackConfig) -> str:
    return cfg.url("auth") + "/"


def synapse_endpoint(view: StackView) -> str:
    """Synapse's client API as MAS dials it: main's own listener on the private network (MAS's
    /_synapse/mas calls are served by main)."""
    assert view.homeserver is not None
    return view.homeserver.internal_url


def mas_endpoint() -> str:
    """MAS as Synapse dials it (token introspection): its web listener on the private network."""
    return f"http://{SERVICE}:{HTTP_PORT}/"


def http_section(cfg: StackConfig) -> dict[str, Any]:
    web = ["discovery", "human", "oauth", "compat", "graphql", "assets"]
    return {
        "public_base": public_base(cfg),
        "trusted_proxies": list(TRUSTED_PROXIES),
        "listeners": [
            {"name": "web", "resources": [{"name": name} for name in web],
             "binds": [{"host": "0.0.0.0", "port": HTTP_PORT}]},
            {"name": "internal", "resources": [{"name": "health"}],
             "binds": [{"host": "0.0.0.0", "port": HEALTH_PORT}]},
            {"name": "metrics", "resources": [{"name": "prometheus"}],
             "binds": [{"host": "0.0.0.0", "port": METRICS_PORT}]},
        ],
    }


def database_section(cfg: StackConfig, view: StackView) -> dict[str, Any]:
    db = cfg.mas.database
    if isinstance(db, MasBundledDatabase):
        server = view.database_server
        assert server is not None
        section: dict[str, Any] = {"host": server.service, "port": server.port,
                                   "username": DATABASE_USER, "database": DATABASE_NAME}
    else:
        section = {"host": db.host, "port": db.port, "username": db.user, "database": db.name,
                   "ssl_mode": db.sslmode}
    section["password_file"] = DATABASE_PASSWORD_FILE
    section["max_connections"] = DATABASE_POOL
    return section


def matrix_section(cfg: StackConfig, view: StackView) -> dict[str, Any]:
    return {"kind": "synapse", "homeserver": cfg.server_name, "endpoint": synapse_endpoint(view),
            "secret_file": MATRIX_SECRET_FILE}


def secrets_section() -> dict[str, Any]:
    return {"encryption_file": ENCRYPTION_FILE,
            "keys": [{"kid": kid, "key_file": path} for kid, path in SIGNING_KEYS.items()]}


def passwords_section(cfg: StackConfig) -> dict[str, Any]:
    section: dict[str, Any] = {"enabled": cfg.mas.passwords}
    if cfg.mas.import_synapse_passwords:
        # Synapse's hashes are bcrypt over NFKC-normalised passwords; new hashes are argon2id
        # (MAS hashes with the highest version and upgrades old hashes at login).
        section["schemes"] = [{"version": 1, "algorithm": "bcrypt", "unicode_normalization": True},
                              {"version": 2, "algorithm": "argon2id"}]
    return section


def email_section(cfg: StackConfig) -> dict[str, Any]:
    """Through the stack's SMTP settings (synapse.smtp), or nowhere."""
    smtp = cfg.synapse.smtp
    if smtp is None:
        return {"transport": "blackhole"}
    mode = "tls" if smtp.force_tls else "starttls" if smtp.require_transport_security else "plain"
    section: dict[str, Any] = {"from": smtp.from_address, "reply_to": smtp.from_address, "transport": "smtp",
                               "mode": mode, "hostname": smtp.host, "port": smtp.port}
    if smtp.user:
        section["username"] = smtp.user
        section["password_file"] = SMTP_PASSWORD_FILE
    return section


def account_section(cfg: StackConfig) -> dict[str, Any]:
    """The stack's registration policy (synapse.registration.mode), now MAS's to enforce."""
    mode = cfg.synapse.registration.mode
    mail = cfg.synapse.smtp is not None
    return {
        # While migrating, MAS's database must stay empty until syn2mas imports into it.
        "password_registration_enabled": cfg.mas.passwords and mode != "closed" and not cfg.mas.syn2mas,
        "password_registration_email_required": mode == "email",
        "password_registration_token_required": mode == "token",
        # Both send a code by mail: without SMTP they could never complete.
        "password_recovery_enabled": cfg.mas.passwords and mail,
        "email_change_allowed": mail,
    }


def _claim(claim: ClaimImport) -> dict[str, Any]:
    out: dict[str, Any] = {"action": claim.action}
    if claim.template is not None:
        out["template"] = claim.template
    return out


def provider_section(cfg: StackConfig, provider: UpstreamProvider) -> dict[str, Any]:
    claims = provider.claims
    imports: dict[str, Any] = {}
    if claims.subject is not None:
        imports["subject"] = {"template": claims.subject}
    imports.update({"localpart": _claim(claims.localpart), "displayname": _claim(claims.displayname),
                    "email": _claim(claims.email), "skip_confirmation": claims.skip_confirmation})
    out: dict[str, Any] = {"id": provider_id(cfg, provider), "issuer": provider.issuer,
                           "client_id": provider.client_id}
    if provider.human_name:
        out["human_name"] = provider.human_name
    if provider.brand_name:
        out["brand_name"] = provider.brand_name
    if provider.synapse_idp_id:
        out["synapse_idp_id"] = provider.synapse_idp_id
    out["token_endpoint_auth_method"] = provider.token_endpoint_auth_method
    if provider.needs_secret:
        out["client_secret_file"] = provider_secret_file(provider)
    out["scope"] = " ".join(provider.scopes)
    out["claims_imports"] = imports
    # A token-gated stack gates sign-ups through a provider too.
    out["registration_token_required"] = cfg.synapse.registration.mode == "token"
    return out


def config(cfg: StackConfig, view: StackView) -> dict[str, Any]:
    """MAS's config.yaml."""
    conf: dict[str, Any] = {
        "http": http_section(cfg),
        "database": database_section(cfg, view),
        "matrix": matrix_section(cfg, view),
        "secrets": secrets_section(),
        "passwords": passwords_section(cfg),
        "email": email_section(cfg),
        "account": account_section(cfg),
        # Metrics to the `prometheus` resource of the metrics listener (http_section).
        "telemetry": {"metrics": {"exporter": "prometheus"}},
    }
    if view.oauth_clients:
        conf["clients"] = clients_section(view)
    if cfg.mas.upstream_oauth2:
        conf["upstream_oauth2"] = {"providers": [provider_section(cfg, p) for p in cfg.mas.upstream_oauth2]}
    return conf


def config_yaml(cfg: StackConfig, view: StackView) -> str:
    return yaml_text.dump(config(cfg, view), sort_keys=False, default_flow_style=False, width=1000)


# ---------------------------------------------------------------- Synapse's side


def homeserver(cfg: StackConfig) -> dict[str, Any]:
    """Synapse's keys when MAS owns logins: the stable section (Synapse 1.163), and QR login
    (MSC4108 rendezvous, which Synapse allows only with MAS). Synapse's own password login and
    registration are turned off in homeserver.registration_keys."""
    return {
        "matrix_authentication_service": {"enabled": True, "endpoint": mas_endpoint(),
                                          "secret_path": SYNAPSE_SECRET_PATH},
        "experimental_features": {"msc4108_enabled": True},
    }


# The compatibility layer (MAS's reverse-proxy guide): these client API paths go to MAS, before
# any Synapse route can match them.
COMPAT_PATTERN = "^/_matrix/client/(.*)/(login|logout|refresh)"


# ---------------------------------------------------------------- syn2mas


# A secret file: it carries the database password syn2mas connects with (database.args.password,
# the only place its Synapse config reader takes one from).
SYN2MAS_SYNAPSE_CONFIG = f"{SECRETS_DIR}/synapse-for-syn2mas.yaml"
# The Synapse settings syn2mas reads (crates/syn2mas/src/synapse_reader/config at MAS's tag).
SYN2MAS_READS = ("password_config", "bcrypt_rounds", "allow_guest_access", "enable_registration_captcha",
                 "enable_3pid_changes", "user_consent", "login_via_existing_session", "cas_config",
                 "saml2_config", "jwt_config", "oidc_config", "oidc_providers")


def syn2mas_synapse_config(cfg: StackConfig, view: StackView, password: str) -> str:
    """Synapse's settings as syn2mas reads them (the homeserver's own, from the view), except
    that it reads Synapse's database as MAS's role (granted read access meanwhile), with that
    role's `password`."""
    assert view.homeserver is not None
    conf = view.homeserver.tool_config(view.database_server)
    conf["database"]["args"]["user"] = DATABASE_USER
    conf["database"]["args"]["password"] = password
    conf.update({k: cfg.synapse.extra_config[k] for k in SYN2MAS_READS if k in cfg.synapse.extra_config})
    return yaml_text.dump(conf, sort_keys=False, default_flow_style=False, width=1000)


# ---------------------------------------------------------------- operator commands


def mas_cli(cfg: StackConfig, args: str) -> str:
    """`mas-cli <args>` run inside the running MAS service, on this stack's target (it reads
    MAS_CONFIG from the service's environment)."""
    from components.platform.targets import target_of

    return target_of(cfg).admin_command(SERVICE, False, f"mas-cli {args}")


def create_admin_command(cfg: StackConfig, user: str = "admin") -> str:
    """Registers the first MAS admin. Interactive: mas-cli asks for the password and the other
    attributes, so no password lands in a process list or a shell history."""
    return mas_cli(cfg, f"manage register-user --admin {user}")


def syn2mas_commands(cfg: StackConfig, view: StackView) -> list[str]:
    """The ordered migration of an existing Synapse's users, devices, sessions and upstream links
    into MAS (MAS's docs/setup/migration.md), in this stack's target's operator verbs; docs/mas.md
    explains each step. Every command runs where the operator runs `pulumi`."""
    from components.platform.contract import Workload

    assert view.homeserver is not None
    target = view.target
    writers = {w.service: w.stateful for w in view.writers}
    synapse = [Workload(name, writers.get(name, False)) for name in view.homeserver.processes]
    # The homeserver's database: the claim its processes hold.
    database = next(c for c in view.databases if set(view.homeserver.processes) <= set(c.clients))
    synapse_conf = f"--synapse-config {SYN2MAS_SYNAPSE_CONFIG}"
    pg_dump = f"pg_dump -U {database.user} -Fc {database.database}"
    if database.external is not None:
        # The operator's own server: pg_dump from where the operator runs pulumi.
        ext = database.external
        dump = f"pg_dump -h {ext.host} -p {ext.port} -U {database.user} -Fc {database.database}"
    else:
        assert view.database_server is not None
        dump = target.exec_command(view.database_server.service, True, pg_dump)
    # Every Synapse process carries its role's label (a target may stop them by it).
    stop = "\n".join(target.stop(synapse, label="matrix-stack.synapse-role"))
    return [
        "# 1. Start MAS beside Synapse's own logins (migration mode), accepting Synapse's password hashes.\n"
        "#    This output exists from here on.\n"
        "pulumi config set --path matrix-stack:mas.enabled true\n"
        "pulumi config set --path matrix-stack:mas.syn2mas true\n"
        "pulumi config set --path matrix-stack:mas.import_synapse_passwords true\n"
        "pulumi up",
        "# 2. Check the migration (Synapse keeps serving); resolve every error it lists.\n"
        + mas_cli(cfg, f"syn2mas check {synapse_conf}"),
        "# 3. Rehearse: a full import into MAS, rolled back at the end.\n"
        + mas_cli(cfg, f"syn2mas migrate {synapse_conf} --dry-run"),
        "# 4. Stop Synapse (downtime starts), back up its database as it now stays, and import.\n"
        f"{stop}\n{dump} > synapse-before-mas.dump\n" + mas_cli(cfg, f"syn2mas migrate {synapse_conf}"),
        "# 5. Hand logins to MAS: Synapse delegates, the proxy routes login/logout/refresh to MAS, MAS's read\n"
        "#    access to Synapse's database is revoked, and --refresh brings back what step 4 stopped.\n"
        "pulumi config set --path matrix-stack:mas.syn2mas false\n"
        "pulumi up --refresh",
    ]
