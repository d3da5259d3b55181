"""The stack-wide rules that need the components (worker table, placement, DNS, TLS), each
registered with the keys it reads (config/checks.py): the loader runs a rule only when those
keys validated. Importing this module registers them; stack.py does.

The components are imported inside each rule: loading the config stays cheap.
"""

from __future__ import annotations

from config.checks import Finding, check
from config.model import KubernetesTarget, StackConfig

# What the worker topology is derived from (counts_for): the preset and every role's count.
TOPOLOGY = ("synapse.workers",)
# Which optional parts run.
PART_SWITCHES = ("element_call.enabled", "ntfy.enabled", "coturn.enabled", "element_web.enabled",
                 "element_web.mode", "mas.enabled", "mas.database.kind")
# What decides the public hostnames and their certificates (components/tls/plan.py).
CERTIFICATES = ("target", "tls.mode", "server_name", "hostnames", "cloudflare.enabled", "cloudflare.proxy_http",
                *PART_SWITCHES)


# First: every rule that derives the topology reads the preset, and must not run on a bad one.
@check("synapse.workers.preset")
def worker_preset(cfg: StackConfig) -> list[Finding]:
    from components.synapse.workers import check_preset

    return check_preset(cfg.synapse.workers.preset)


# Judges each role's count on its own: one refused count does not stop it judging the others.
@check("synapse.workers.counts.*")
def worker_counts(cfg: StackConfig) -> list[Finding]:
    from components.synapse.workers import check_role_counts

    return check_role_counts(dict(cfg.synapse.workers.counts))


# Which keys the stack writes into homeserver.yaml depends on these settings. The worker keys are
# refused whatever the counts (homeserver.WORKER_TABLE_KEYS); the preset must exist to compute.
@check("synapse.extra_config", "synapse.workers.preset", "synapse.federation.enabled",
       "synapse.federation.domain_whitelist", "synapse.url_previews.enabled", "synapse.ldap",
       "synapse.rate_limits", "synapse.registration.mode", "element_call.enabled")
def extra_config(cfg: StackConfig) -> list[Finding]:
    from components.synapse import homeserver

    return homeserver.check_extra_config(cfg)


@check(*CERTIFICATES, *TOPOLOGY, "synapse.database.kind")
def placement(cfg: StackConfig) -> list[Finding]:
    from components import parts
    from components.mas import services as mas
    from components.platform import placement
    from components.synapse import services
    from components.tls import ACME_SERVICE
    from components.tls.plan import runs_acme_client

    cluster = services.service_names(cfg)
    # The ACME client shares its certificate and webroot volumes with the proxy.
    acme = [ACME_SERVICE] if runs_acme_client(cfg) else []
    return placement.check(cfg, cluster + parts.service_names(cfg) + mas.service_names(cfg) + acme,
                           [sorted(cluster + acme)])


@check("mas.enabled", "mas.database.kind", "synapse.database.kind", "target")
def mas_beside_its_database(cfg: StackConfig) -> list[Finding]:
    from components.mas import services as mas

    return mas.placement_check(cfg)


@check("cloudflare.enabled", "cloudflare.proxy_http", "tls.mode", "server_name", "synapse.max_upload_size")
def cloudflare_upload_limit(cfg: StackConfig) -> list[Finding]:
    from components.dns import records

    return records.check(cfg)


@check("coturn", "element_call.enabled", "element_call.livekit")
def turn_ports(cfg: StackConfig) -> list[Finding]:
    from components.coturn import render

    return render.check(cfg)


@check("element_call.enabled", "element_call.livekit.turn", "target")
def livekit_turn(cfg: StackConfig) -> list[Finding]:
    from components import parts

    return parts.livekit_turn_check(cfg)


@check(*CERTIFICATES)
def kubernetes_certificates(cfg: StackConfig) -> list[Finding]:
    if not isinstance(cfg.target, KubernetesTarget):
        return []
    from components.platform import kubernetes

    return kubernetes.check(cfg)


@check("tls", "tls_private_key", *CERTIFICATES)
def provided_certificate(cfg: StackConfig) -> list[Finding]:
    from components.tls import plan

    return plan.check(cfg)
