"""Docker: each data store (PostgreSQL, Redis) sits on an internal network of its own, which only
its clients join; everything else shares the stack's network. Read from the declared containers
of the staging stack (LiveKit, ntfy, MAS, the backup beside Synapse); the engine test dials
the stores' addresses from inside the containers."""

from __future__ import annotations

import functools

from render import offline
from render.__main__ import stack_config

from ..conftest import ROOT

CONTAINER = "docker:index/container:Container"
NETWORK = "docker:index/network:Network"


@functools.cache
def _run() -> offline.Run:
    raw, secret = stack_config("staging", ROOT)
    return offline.run(raw, stack="staging", secret_keys=tuple(secret))


def _members() -> dict[str, set[str]]:
    """network name -> the containers that join it (by resource name: a new-first container's own
    name carries its revision)."""
    members: dict[str, set[str]] = {}
    for container in _run().of_type(CONTAINER):
        inputs = container.plain_inputs()
        for network in inputs.get("networksAdvanced") or []:
            members.setdefault(network["name"], set()).add(container.name)
    return members


def test_each_data_store_is_reached_only_by_its_clients() -> None:
    run = _run()
    members = _members()
    stores = [r["service"] for r in run.services if r["service"].data_store]
    # PgBouncer fronts PostgreSQL: a data store of its own, and PostgreSQL's one pooled client.
    assert {s.name for s in stores} == {"synapse-postgres", "synapse-pgbouncer", "synapse-redis"}
    clients = {f"matrix-stack-{s.name}": set(s.allowed_clients or ()) for s in stores}
    for store in stores:
        network = f"matrix-stack-{store.name}"
        assert members[network] == {store.name, *(store.allowed_clients or ())}, network
        assert not any(store.name in names for name, names in members.items()
                       if name != network and store.name not in clients.get(name, ()))
    # The parts that never dial a data store are on the stack's network alone.
    for name in ("livekit", "ntfy", "lk-jwt-service", "element-call", "synapse-proxy"):
        assert [n for n, names in members.items() if name in names] == ["matrix-stack"], name
    assert {"synapse-main"} <= members["matrix-stack-synapse-pgbouncer"] & members["matrix-stack-synapse-redis"]
    # Synapse reaches PostgreSQL only through the pooler.
    assert members["matrix-stack-synapse-postgres"] & members["matrix-stack-synapse-pgbouncer"] == {"synapse-pgbouncer"}


def test_data_store_networks_are_internal() -> None:
    networks = {str(n.plain_inputs()["name"]): n.plain_inputs() for n in _run().of_type(NETWORK)}
    assert networks["matrix-stack-synapse-postgres"].get("internal") is True
    assert networks["matrix-stack-synapse-redis"].get("internal") is True
    assert not networks["matrix-stack"].get("internal")
