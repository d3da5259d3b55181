"""The monitoring part's files, read by the real programs at the pinned versions (Debian's
prometheus and prometheus-alertmanager packages): `promtool check rules`, `promtool test rules`
with a test per alert that fires on its failure and one that stays quiet on healthy series,
`promtool check config` on prometheus.yml and `amtool check-config` on alertmanager.yml."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.checks import view_of
from components.monitoring import alerts as alert_table
from components.monitoring import certificate_hostnames, ntfy_base, stack_alerts
from components.monitoring import render as mon
from config import ConfigError
from render.__main__ import stack_config
from stack import parse
from tests.conftest import ROOT, stack_raw

PROMTOOL = shutil.which("promtool")
AMTOOL = shutil.which("amtool")
pytestmark = pytest.mark.skipif(PROMTOOL is None or AMTOOL is None,
                                reason="promtool and amtool (Debian prometheus, prometheus-alertmanager)")

# Every role shape: staging (one instance per role), a seed preset (several instances of
# several roles), prod; media in a bucket on Docker (its cache cleaner); and email through the
# stack's SMTP.
SEVERAL = {"synapse": {"workers": {"preset": "seed-000"}}}
S3_MEDIA = {"synapse": {"media": {"storage": "s3", "bucket": "example-org-media",
                                  "endpoint": "https://s3.eu-central-1.amazonaws.com"}},
            "media_s3_access_key_id": "AKIAEXAMPLE", "media_s3_secret_access_key": "example-secret"}


def _cfg(name: str, **extra: Any) -> Any:
    raw, secret_keys = stack_config(name, ROOT)
    raw["monitoring"] = {"enabled": True, **raw.get("monitoring", {})}
    raw.update(extra)
    return parse(raw, tuple(secret_keys) + tuple(k for k in extra if k.endswith("_password") or k.startswith("media_s3_")))


def _run(*args: str) -> str:
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


STACKS = {"staging": {}, "prod": {}, "staging-seed-000": SEVERAL, "staging-s3-media": S3_MEDIA}


@pytest.fixture(params=sorted(STACKS), scope="module")
def rendered(request: pytest.FixtureRequest) -> tuple[Any, Any, list[alert_table.Alert]]:
    name = request.param
    base = name.split("-", 1)[0]
    extra = STACKS[name]
    raw_synapse = {**stack_raw(base).get("synapse", {}), **extra.get("synapse", {})}
    others = {k: v for k, v in extra.items() if k != "synapse"}
    cfg = _cfg(base, **({"synapse": raw_synapse} if extra else {}), **others)
    view = view_of(cfg)[0]
    return cfg, view, stack_alerts(cfg, view)


def test_promtool_checks_and_tests_every_alert(rendered: Any, tmp_path: Path) -> None:
    _cfg_, view, alerts = rendered
    rules = tmp_path / "stack.rules.yml"
    rules.write_text(mon.rules_yml(alerts))
    _run(PROMTOOL or "promtool", "check", "rules", str(rules))
    tests = tmp_path / "stack.tests.yml"
    tests.write_text(yaml.safe_dump(mon.rule_tests(alerts, str(rules)), sort_keys=False))
    out = _run(PROMTOOL or "promtool", "test", "rules", str(tests))
    assert "SUCCESS" in out
    # Every alert has a firing and a quiet case.
    assert len(mon.rule_tests(alerts, "x")["tests"]) == 2 * len(alerts)


def test_the_role_shapes_get_their_alerts(rendered: Any) -> None:
    cfg, view, alerts = rendered
    by_role = alert_table.roles(view.metrics_targets)
    names = {a.name for a in alerts}
    assert ("SynapseProcessDown" in names) == any(len(ts) == 1 for ts in by_role.values())
    several = any(len(ts) > 1 for ts in by_role.values())
    assert ("SynapseInstanceDown" in names) == several and ("SynapseRoleDown" in names) == several
    for needed in ("ScrapeTargetDown", "EdgeProxyDown", "PostgresDown", "PostgresConnectionsNearLimit",
                   "SynapseHttp5xxRatio", "SynapseFederationSendBacklog", "SynapseDatabasePoolWaits",
                   "AlertDeliveryFailing", "VolumeSpaceLow", "VolumeFillingUp", "CertificateExpiringSoon",
                   "CertificateProbeFailing", "BackupOverdue", "BackupNeverReported"):
        assert needed in names
    cleaner = cfg.synapse.media.s3 and view.target.shares_caches
    assert ("MediaCacheCleanOverdue" in names) == cleaner and ("MediaCacheCleanNeverReported" in names) == cleaner
    calls = any(p.calls for p in view.probes)
    assert ("CallServiceUnreachable" in names) == calls


def test_prometheus_yml_scrapes_every_declared_target_and_promtool_accepts_it(rendered: Any, tmp_path: Path) -> None:
    cfg, view, alerts = rendered
    rules = tmp_path / "stack.rules.yml"
    rules.write_text(mon.rules_yml(alerts))
    conf = mon.prometheus_config(cfg, view.metrics_targets, probes=view.probes,
                                 hostnames=certificate_hostnames(view))
    conf["rule_files"] = [str(rules)]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(conf, sort_keys=False))
    _run(PROMTOOL or "promtool", "check", "config", str(path))
    scraped = [job for job in conf["scrape_configs"] if job.get("metrics_path") != "/probe"]
    instances = {s["labels"]["instance"] for job in scraped for s in job["static_configs"]}
    assert instances == {t.service for t in view.metrics_targets}
    # The blackbox exporter's jobs: every certificate hostname, every declared probe.
    probed = {t for job in conf["scrape_configs"] if job.get("metrics_path") == "/probe"
              for s in job["static_configs"] for t in s["targets"]}
    assert probed == ({f"{h}:443" for h in certificate_hostnames(view)}
                      | {f"{p.service}:{p.port}" for p in view.probes})
    assert {"synapse-proxy", "synapse-postgres", "prometheus", "alertmanager"} <= instances


def test_alertmanager_yml_passes_amtool_with_ntfy_and_email(tmp_path: Path) -> None:
    raw_synapse = {**stack_raw("staging").get("synapse", {}),
                   "smtp": {"host": "smtp.example.org", "user": "matrix", "from_address": "Matrix <m@example.org>"}}
    cfg = _cfg("staging", synapse=raw_synapse, smtp_password="stand-in",
               monitoring={"enabled": True, "email": {"to": "ops@example.org"}})
    view = view_of(cfg)[0]
    conf = mon.alertmanager_config(cfg, ntfy_base(view))
    receiver = conf["receivers"][0]
    assert receiver["webhook_configs"][0]["http_config"]["basic_auth"]["password_file"] == mon.NTFY_PASSWORD_FILE
    assert receiver["email_configs"][0]["auth_password_file"] == mon.SMTP_PASSWORD_FILE
    path = tmp_path / "alertmanager.yml"
    path.write_text(mon.alertmanager_yml(cfg, ntfy_base(view)))
    _run(AMTOOL or "amtool", "check-config", str(path))


def test_alerts_by_email_without_smtp_are_refused_with_field_value_and_allowed() -> None:
    raw, secret_keys = stack_config("staging", ROOT)
    raw["monitoring"] = {"enabled": True, "email": {"to": "ops@example.org"}}
    with pytest.raises(ConfigError) as caught:
        parse(raw, tuple(secret_keys))
    lines = [str(p) for p in caught.value.problems]
    assert any(line.startswith("matrix-stack:monitoring.email: ") and "synapse.smtp" in line
               and "ops@example.org" in line for line in lines), lines


def test_the_readme_lists_every_alert(rendered: Any) -> None:
    readme = (ROOT / "README.md").read_text()
    _cfg_, _view, alerts = rendered
    for alert in alerts:
        assert f"| `{alert.name}` |" in readme, alert.name
