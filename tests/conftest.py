"""Shared fixtures: run the real program under Pulumi's mocks for a given config."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from render import offline  # noqa: E402
from render.__main__ import stack_config  # noqa: E402


def stack_raw(name: str) -> dict[str, Any]:
    """The `matrix-stack:` keys of an example stack file (secure: values as stand-ins)."""
    raw, _secret = stack_config(name, ROOT)
    return raw


@pytest.fixture
def program() -> Callable[..., offline.Run]:
    """program(raw_config, stack="test", secret_keys=()) -> the resource graph and services."""

    def run(raw: dict[str, Any], *, stack: str = "test", secret_keys: tuple[str, ...] = ()) -> offline.Run:
        return offline.run(raw, stack=stack, secret_keys=secret_keys)

    return run


@pytest.fixture
def dev_raw() -> dict[str, Any]:
    return stack_raw("dev")


@pytest.fixture(scope="session")
def say(pytestconfig: pytest.Config) -> Callable[[str], None]:
    """Prints a line at once, even while pytest captures the tests' output: a fixture that
    builds for minutes says what it is doing and how far along it is, never sits silent."""
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")

    def say_now(line: str) -> None:
        if capture is None:
            print(line, flush=True)
            return
        with capture.global_and_fixture_disabled():
            print(line, flush=True)

    return say_now


def load_yaml(text: str) -> Any:
    return yaml.safe_load(text)


def stack_view(cfg: Any) -> Any:
    """The resolved view of a parsed stack config (what every part reads)."""
    from components.checks import view_of

    return view_of(cfg)[0]


def nginx_conf(cfg: Any) -> str:
    """The routing proxy's nginx.conf for a parsed stack config."""
    from components.edge import proxy_service
    from components.edge.render import NGINX_CONF

    service = proxy_service(cfg, stack_view(cfg), [], [], False)
    return str(next(f.content for f in service.files if f.path == NGINX_CONF))


def max_connections(cfg: Any) -> int:
    """The bundled PostgreSQL's max_connections for a parsed stack config."""
    from components.postgres import render

    claims = [claim for claim in stack_view(cfg).databases if claim.bundled]
    pooler = getattr(cfg.synapse.database, "pooler", False)
    return render.max_connections(claims, [claim for claim in claims if claim.pooled and pooler])


def database_server(cfg: Any) -> Any:
    """The bundled PostgreSQL as the view names it."""
    return stack_view(cfg).database_server
