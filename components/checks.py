"""The stack-wide rules that need the parts (worker table, placement, endpoints, certificates),
each with the keys it reads (config/checks.py): the loader runs a rule only when those keys
validated. A part's own rules live beside its declaration. stack.parse and stack.load hand RULES
to the loader, after the config's own (config/rules.py). Like stack.py, this module sees the
catalog: it resolves the view the parts' rules read.

The components are imported inside each rule: loading the config stays cheap.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from components import catalog
from components.view import StackView, resolve
from config.checks import Check, Finding, Rules
from config.model import StackConfig

# What the worker topology is derived from (counts_for): the preset and every role's count.
TOPOLOGY = ("synapse.workers",)
# Which optional parts run: each part declares the keys its enabled() reads.
PART_SWITCHES = catalog.switches()
# What decides the public hostnames and their certificates (components/tls/plan.py).
CERTIFICATES = ("target", "tls.mode", "server_name", "hostnames", "cloudflare.enabled", "cloudflare.proxy_http",
                *PART_SWITCHES)
STAND_IN = "stand-in"

RULES = Rules()
check = RULES.check

if TYPE_CHECKING:
    from components.part import Part

_resolved: list[tuple[StackConfig, tuple[StackView, list[Part]]]] = []


def view_of(cfg: StackConfig) -> tuple[StackView, list[Part]]:
    """The view of the config being checked, and its parts: resolved once per config."""
    for seen, resolved in _resolved:
        if seen is cfg:
            return resolved
    resolved = resolve(cfg, catalog.PARTS)
    _resolved[:] = [(cfg, resolved)]
    return resolved


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


def _merged(groups: list[list[str]]) -> list[list[str]]:
    """Groups that share a member become one group (one host for all of them)."""
    merged: list[set[str]] = []
    for group in groups:
        joined = set(group)
        for other in [m for m in merged if m & joined]:
            joined |= other
            merged.remove(other)
        merged.append(joined)
    return [sorted(g) for g in merged]


# The services are the ones the build declares: each enabled part's services() with stand-in secrets.
# Files a previous rule refused are not read again (the CA files).
@check(*CERTIFICATES, *TOPOLOGY, "synapse.database.kind", "synapse.federation.trusted_ca_files")
def placement(cfg: StackConfig) -> list[Finding]:
    view, parts = view_of(cfg)
    names: list[str] = []
    together: list[list[str]] = []
    for part in parts:
        services = part.services(cfg, view, dict.fromkeys(part.secret_names(cfg), STAND_IN))
        names += [s.name for s in services]
        together += part.together(cfg, view, services)
    return view.target.placement_problems(names, _merged(together))


@check("cloudflare.enabled", "cloudflare.zone", "hostnames", "server_name", *PART_SWITCHES)
def hostnames_in_zone(cfg: StackConfig) -> list[Finding]:
    """Every public endpoint's hostname lies in the Cloudflare zone its record is written to."""
    zone = cfg.cloudflare.zone
    if not (cfg.cloudflare.enabled and zone):
        return []
    found: list[Finding] = []
    seen: set[str] = set()
    for host, endpoint in view_of(cfg)[0].endpoints:
        if host in seen or host == zone or host.endswith("." + zone):
            continue
        seen.add(host)
        key = "server_name" if endpoint.key == "server" else f"hostnames.{endpoint.key}"
        found.append((key, host, f"must be inside the Cloudflare zone {zone}"))
    return found


@check("cloudflare.enabled", "cloudflare.proxy_http", "tls.mode", "server_name", "synapse.max_upload_size")
def cloudflare_upload_limit(cfg: StackConfig) -> list[Finding]:
    from components.dns import upload_limit_check

    return upload_limit_check(cfg)


@check(*CERTIFICATES)
def target_certificates(cfg: StackConfig) -> list[Finding]:
    from components.tls import target_check

    return target_check(view_of(cfg)[0])


@check("tls", "tls_private_key", *CERTIFICATES)
def provided_certificate(cfg: StackConfig) -> list[Finding]:
    from components.tls import provided_check

    return provided_check(cfg, view_of(cfg)[0])


def _register_part_rules() -> None:
    """Each part's own rules (Part.check), in catalog order, reading the part's keys."""
    for part in catalog.PARTS:
        RULES.append(Check(f"part:{part.name}", part.reads, _rule(part)))


def _rule(part: Part) -> Callable[[StackConfig], list[Finding]]:
    def run(cfg: StackConfig) -> list[Finding]:
        view, parts = view_of(cfg)
        return part.check(cfg, view) if part in parts else []

    return run


_register_part_rules()
