"""coturn's rendered turnserver.conf against what the pinned coturn (4.7.0) reads."""

from __future__ import annotations

import stack
from components.coturn import render

# Options coturn 4.7.0 marks DEPRECATED (README.turnserver, src/apps/relay/mainrelay.c at 4.7.0).
DEPRECATED = ("no-software-attribute",)


def _conf() -> list[str]:
    cfg = stack.parse({"server_name": "example.org", "tls": {"acme_email": "ops@example.org"},
                       "coturn": {"enabled": True, "external_ip": "192.0.2.7"}})
    return render.turnserver_conf(cfg).splitlines()


def test_no_deprecated_options() -> None:
    options = {line.split("=", 1)[0] for line in _conf() if line and not line.startswith("#")}
    assert not options & set(DEPRECATED)
    # The software attribute is off by default since 4.7.0, which is what the option asked for.
    assert "software-attribute" not in options
