"""The config's own rules across fields: each names the keys it reads, and runs only when they
validated (config/checks.py). The loader runs them first, in this order, before the rules its
caller hands it (the stack-wide ones of components/checks.py, from stack.parse and stack.load).
"""

from __future__ import annotations

import re

from .checks import Finding, Rules
from .model import (
    BundledDatabase,
    DockerTarget,
    ExternalDatabase,
    MasBundledDatabase,
    S3Repository,
    SftpRepository,
    StackConfig,
)

RULES = Rules()
check = RULES.check


@check("synapse.smtp", "smtp_password")
def _smtp_password(cfg: StackConfig) -> list[Finding]:
    smtp = cfg.synapse.smtp
    if smtp and smtp.user and cfg.smtp_password is None:
        return [("smtp_password", None, "required when synapse.smtp.user is set; set it with --secret")]
    return []


@check("synapse.database", "database_password")
def _database_password(cfg: StackConfig) -> list[Finding]:
    if isinstance(cfg.synapse.database, ExternalDatabase) and cfg.database_password is None:
        return [("database_password", None, "required with an external database; set it with --secret")]
    return []


@check("cloudflare", "cloudflare_api_token")
def _cloudflare(cfg: StackConfig) -> list[Finding]:
    found: list[Finding] = []
    if cfg.cloudflare.enabled and not cfg.cloudflare.zone:
        found.append(("cloudflare.zone", None, "required when cloudflare.enabled"))
    if cfg.cloudflare.enabled and not cfg.cloudflare.origin_ip:
        found.append(("cloudflare.origin_ip", None, "required when cloudflare.enabled: the address DNS records point at"))
    if cfg.cloudflare.enabled and cfg.cloudflare_api_token is None:
        found.append(("cloudflare_api_token", None, "required when cloudflare.enabled; set it with --secret"))
    return found


@check("synapse.ldap", "ldap_bind_password")
def _ldap_bind_password(cfg: StackConfig) -> list[Finding]:
    if cfg.synapse.ldap and cfg.synapse.ldap.bind_dn and cfg.ldap_bind_password is None:
        return [("ldap_bind_password", None, "required when synapse.ldap.bind_dn is set; set it with --secret")]
    return []


@check("element_web", "cloudflare.enabled", "cloudflare.account_id")
def _pages(cfg: StackConfig) -> list[Finding]:
    found: list[Finding] = []
    web = cfg.element_web
    if web.enabled and web.mode == "pages":
        if not cfg.cloudflare.enabled:
            found.append(("element_web.mode", web.mode, "'pages' needs cloudflare.enabled: true"))
        if not cfg.cloudflare.account_id:
            found.append(("cloudflare.account_id", None, "required when element_web.mode is 'pages'"))
        if web.source is None:
            found.append(("element_web.source", None, "required when element_web.mode is 'pages' (owner, repo)"))
    return found


ELEMENT_CALL_NEEDS_FEDERATION = (
    "false on a localhost stack: Element Call cannot work there. lk-jwt-service checks every caller's "
    "OpenID token by a federation request to the server name (well-known, SRV, then port 8448 over TLS), "
    "which '{server}' cannot answer from inside its container, and the LIVEKIT_URL it calls to create "
    "rooms (the SFU's public ws:// URL) resolves to that container, not the proxy. Leave "
    "element_call.enabled unset or false, or use a server name with public DNS and TLS"
)


@check("element_call.enabled", "server_name")
def _element_call_needs_federation(cfg: StackConfig) -> list[Finding]:
    if cfg.element_call.enabled and cfg.local:
        return [("element_call.enabled", True, ELEMENT_CALL_NEEDS_FEDERATION.format(server=cfg.server_name))]
    return []


@check("tls", "server_name", "cloudflare.enabled", "target")
def _acme_email(cfg: StackConfig) -> list[Finding]:
    if cfg.tls_mode == "acme" and not cfg.tls.acme_email and isinstance(cfg.target, DockerTarget):
        return [("tls.acme_email", None, "required when the proxy gets its certificate from ACME")]
    return []


# Synapse settings MAS replaces: Synapse 1.163 refuses to start with any of them beside
# matrix_authentication_service (synapse/config/mas.py, check_config_conflicts).
SYNAPSE_AUTH_KEYS = ("password_config", "password_providers", "oidc_providers", "oidc_config", "saml2_config",
                     "cas_config", "jwt_config", "enable_registration_captcha", "login_via_existing_session",
                     "refresh_token_lifetime", "nonrefreshable_access_token_lifetime", "session_lifetime",
                     "enable_3pid_changes", "user_consent")


@check("mas.enabled", "mas.syn2mas", "synapse.ldap", "synapse.extra_config")
def _mas_replaces_synapse_logins(cfg: StackConfig) -> list[Finding]:
    if not cfg.mas.owns_logins:
        return []
    found: list[Finding] = []
    if cfg.synapse.ldap is not None:
        found.append(("synapse.ldap", cfg.synapse.ldap.uri,
                      "must be unset with mas.enabled: MAS owns password logins and Synapse refuses password "
                      "providers beside it; reach LDAP through an OIDC bridge (Dex, say) as a "
                      "mas.upstream_oauth2 provider"))
    for key in SYNAPSE_AUTH_KEYS:
        if key in cfg.synapse.extra_config:
            found.append((f"synapse.extra_config.{key}", None,
                          "contradicts mas.enabled: MAS owns logins, registration and sessions, and Synapse "
                          "refuses this setting beside it; configure it in MAS's typed settings (mas.*) instead"))
    return found


@check("mas", "mas_client_secrets", "mas_database_password", "synapse.database.kind")
def _mas_settings(cfg: StackConfig) -> list[Finding]:
    mas = cfg.mas
    if not mas.enabled:
        return []
    found: list[Finding] = []
    secrets = cfg.mas_client_secrets or {}
    names = [p.name for p in mas.upstream_oauth2]
    for i, provider in enumerate(mas.upstream_oauth2):
        where = f"mas.upstream_oauth2[{i}]"
        if not provider.issuer:
            found.append((f"{where}.issuer", None, f"required for provider '{provider.name}': the OIDC issuer "
                          "URL MAS discovers the provider's endpoints and keys from"))
        elif not provider.issuer.startswith("https://"):
            found.append((f"{where}.issuer", provider.issuer, "must be an https:// URL"))
        if not provider.client_id:
            found.append((f"{where}.client_id", None, f"required for provider '{provider.name}': the client id "
                          "the provider issued for this MAS"))
        if names.count(provider.name) > 1:
            found.append((f"{where}.name", provider.name, "must be unique among mas.upstream_oauth2"))
        if provider.needs_secret and provider.name not in secrets:
            found.append(("mas_client_secrets", None, f"needs an entry '{provider.name}' (the provider's client "
                          "secret); set the whole object with --secret"))
    for name in sorted(set(secrets) - set(names)):
        found.append(("mas_client_secrets", None, f"names '{name}', which is no mas.upstream_oauth2 provider"))
    if not mas.passwords and not mas.upstream_oauth2:
        found.append(("mas.passwords", False, "nobody could log in: keep passwords on or add a "
                      "mas.upstream_oauth2 provider"))
    bundled = isinstance(mas.database, MasBundledDatabase)
    if bundled and not isinstance(cfg.synapse.database, BundledDatabase):
        found.append(("mas.database.kind", "bundled", "needs the bundled PostgreSQL (synapse.database.kind: "
                      "bundled); with an external Synapse database give MAS an external one too"))
    if not bundled and cfg.mas_database_password is None:
        found.append(("mas_database_password", None, "required with an external MAS database; set it with --secret"))
    if mas.syn2mas:
        if not mas.import_synapse_passwords:
            found.append(("mas.import_synapse_passwords", False, "must be true with mas.syn2mas: the imported "
                          "users keep Synapse's bcrypt hashes until they next log in"))
        if not (bundled and isinstance(cfg.synapse.database, BundledDatabase)):
            found.append(("mas.syn2mas", True, "needs both databases bundled (the stack grants MAS's role read "
                          "access to Synapse's database); with external ones follow MAS's migration guide"))
    return found


@check("synapse.federation", "server_name")
def _federation_names_and_authorities(cfg: StackConfig) -> list[Finding]:
    fed = cfg.synapse.federation
    found: list[Finding] = []
    # An empty list is Synapse's "federate with nobody"; a list of servers must name this one too.
    if fed.domain_whitelist and cfg.server_name not in fed.domain_whitelist:
        found.append(("synapse.federation.domain_whitelist", fed.domain_whitelist,
                      f"must include the stack's own server name {cfg.server_name} (Synapse checks its "
                      "own requests against it too); an empty list federates with nobody"))
    if cfg.server_name in fed.deny:
        found.append(("synapse.federation.deny", fed.deny,
                      f"must not include the stack's own server name {cfg.server_name}"))
    if fed.trusted_ca_files is not None and not fed.trusted_ca_files:
        found.append(("synapse.federation.trusted_ca_files", [],
                      "must list at least one file; leave it unset to trust the public roots"))
    if fed.trusted_ca_files:
        from .pem import problems as pem_problems  # only then: reading certificates needs cryptography

        for i, path in enumerate(fed.trusted_ca_files):
            found += pem_problems(f"synapse.federation.trusted_ca_files[{i}]", path, ca=True)
    return found


@check("backup", "backup_s3_access_key_id", "backup_s3_secret_access_key", "backup_sftp_private_key")
def _backup_credentials(cfg: StackConfig) -> list[Finding]:
    backup = cfg.backup
    found: list[Finding] = []
    wanted: tuple[str, ...] = ()
    if isinstance(backup.repository, S3Repository):
        wanted = ("backup_s3_access_key_id", "backup_s3_secret_access_key")
    elif isinstance(backup.repository, SftpRepository):
        wanted = ("backup_sftp_private_key",)
    if backup.enabled:
        for key in wanted:
            if getattr(cfg, key) is None:
                found.append((key, None, f"required with a backup.repository of kind {backup.repository.kind}; "
                               "set it with --secret"))
    return found


SIGNING_KEY_RE = re.compile(r"^ed25519 [A-Za-z0-9_]+ [A-Za-z0-9+/]{43}$")


@check("signing_key")
def _signing_key(cfg: StackConfig) -> list[Finding]:
    if cfg.signing_key is None:
        return []
    if not SIGNING_KEY_RE.match(cfg.signing_key.get_secret_value().strip()):
        return [("signing_key", "[secret]", "must be a Synapse signing key file: one line "
                 "'ed25519 <key id> <unpadded base64 seed>', as the backup holds it")]
    return []


MEDIA_S3_NEEDS = ("bucket", "endpoint")


@check("synapse.media", "target", "media_s3_access_key_id", "media_s3_secret_access_key")
def _media_storage(cfg: StackConfig) -> list[Finding]:
    """Media in a bucket needs the bucket, its endpoint and credentials (and, on Kubernetes, the
    registry holding the Synapse image with the storage provider); the bucket's settings mean
    nothing with local media, so they are refused there rather than silently ignored."""
    media = cfg.synapse.media
    found: list[Finding] = []
    if not media.s3:
        for key in ("bucket", "endpoint", "region", "image_registry"):
            if getattr(media, key) is not None:
                found.append((f"synapse.media.{key}", getattr(media, key),
                              "is a setting of media in a bucket; allowed only with synapse.media.storage: s3"))
        if media.path_style:
            found.append(("synapse.media.path_style", True,
                          "is a setting of media in a bucket; allowed only with synapse.media.storage: s3"))
        return found
    for key in MEDIA_S3_NEEDS:
        if getattr(media, key) is None:
            found.append((f"synapse.media.{key}", None, "required with synapse.media.storage: s3"))
    for key in ("media_s3_access_key_id", "media_s3_secret_access_key"):
        if getattr(cfg, key) is None:
            found.append((key, None, "required with synapse.media.storage: s3; set it with --secret"))
    if not isinstance(cfg.target, DockerTarget) and media.image_registry is None:
        found.append(("synapse.media.image_registry", None,
                      "required with synapse.media.storage: s3 on this target: the registry its nodes pull the "
                      "Synapse image with the storage provider from (a Docker host builds it itself)"))
    if media.endpoint is not None and media.endpoint.startswith("http://") and not cfg.local:
        found.append(("synapse.media.endpoint", media.endpoint,
                      "must be https:// (allowed: https://host[:port]; http:// only on a localhost stack): the "
                      "credentials and every media file cross it"))
    return found


@check("monitoring.enabled", "monitoring.grafana")
def _grafana_needs_prometheus(cfg: StackConfig) -> list[Finding]:
    if cfg.monitoring.grafana.enabled and not cfg.monitoring.enabled:
        return [("monitoring.grafana.enabled", True, "Grafana reads the stack's Prometheus: needs monitoring.enabled")]
    return []
