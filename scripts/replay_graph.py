"""The SDK's share of a run: the resource graph a program run declared, declared again without
the program.

`record(run)` keeps what the engine received, in registration order: each resource's type, name,
parent, provider, dependencies, options and inputs (secrets marked). `replay(graph)` declares the
same resources through the same SDK classes, under the same mocks, with nothing else: no config,
no parts, no rendering. Its cost estimates what the SDK and the mock engine spend on these
resources, whatever program declares them.

An estimate, not a bound either way: inputs arrive as the wire form's plain dicts (keys already
the engine's names, so the SDK translates no nested type) with every value known, and the
program's Output arithmetic (apply, all, concat) and replacement triggers are not repeated;
while nothing in the replay's inputs is shared the way the program shares objects.
"""

from __future__ import annotations

import functools
import importlib
import json
import re
import types
from typing import Any

SECRET = "__secret__"


def _plain(value: Any, path: tuple[Any, ...], secrets: list[list[Any]]) -> Any:
    """The value with its secrets unwrapped; the path of each secret goes to `secrets`."""
    from pulumi.runtime import rpc

    if rpc.is_rpc_secret(value):
        secrets.append(list(path))
        return _plain(value["value"], path, [])
    if isinstance(value, dict):
        return {k: _plain(v, (*path, k), secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v, (*path, i), secrets) for i, v in enumerate(value)]
    return value


def record(registered: list[Any]) -> list[dict[str, Any]]:
    """The graph as JSON-ready dicts, from render.offline's Registered records. Secrets are kept
    as the paths of the values to wrap again, so the replay walks no input it need not touch."""
    graph = []
    for r in registered:
        secrets: list[list[Any]] = []
        inputs = _plain(dict(r.inputs), (), secrets)
        graph.append({
            "urn": r.urn, "type": r.type, "name": r.name, "custom": r.custom, "parent": r.parent,
            "provider": r.provider, "dependencies": list(r.dependencies), "protect": r.protect,
            "retain_on_delete": r.retain_on_delete, "delete_before_replace": r.delete_before_replace,
            "inputs": inputs, "secrets": secrets,
        })
    return graph


def _with_secrets(inputs: dict[str, Any], secrets: list[list[Any]]) -> dict[str, Any]:
    """`inputs` with the value at each secret path wrapped as a secret Output again."""
    import pulumi

    for path in secrets:
        if not path:
            continue
        *parents, last = path
        holder: Any = inputs
        for step in parents:
            holder = holder[step]
        holder[last] = pulumi.Output.secret(holder[last])
    return inputs


def _decoded(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _attribute(module: Any, name: str) -> Any:
    """module.name, where importing the submodule `module.name` (as the floor does) may have bound
    the submodule over the class of the same name."""
    found = getattr(module, name)
    return getattr(found, name) if isinstance(found, types.ModuleType) else found


@functools.cache
def _sdk_class(type_token: str) -> tuple[Any, bool]:
    """(the SDK class that declares this type, whether it is a generic Kubernetes custom resource)."""
    package, module, name = type_token.split(":")
    if package == "pulumi" and module == "providers":
        return _attribute(importlib.import_module(f"pulumi_{name}"), "Provider"), False
    sdk = importlib.import_module(f"pulumi_{package}")
    if package == "kubernetes":
        group, version = module.split("/")
        try:
            return _attribute(importlib.import_module(f"pulumi_kubernetes.{group.split('.')[0]}.{version}"), name), False
        except (ImportError, AttributeError):
            return _attribute(importlib.import_module("pulumi_kubernetes.apiextensions"), "CustomResource"), True
    if not module.startswith("index"):
        # A provider whose resources live in submodules (pulumi-command's `local`).
        return _attribute(importlib.import_module(f"pulumi_{package}.{module.split('/')[0]}"), name), False
    return _attribute(sdk, name), False


@functools.cache
def _parameters(cls: Any) -> frozenset[str]:
    code = cls._internal_init.__code__
    return frozenset(code.co_varnames[: code.co_argcount + code.co_kwonlyargcount])


def replay(graph: list[dict[str, Any]]) -> None:
    """Declare `graph` again (call inside a Pulumi program, e.g. render.offline.declare)."""
    import pulumi

    made: dict[str, pulumi.Resource] = {}
    for r in graph:
        provider = made.get(r["provider"].rsplit("::", 1)[0]) if r["provider"] else None
        opts = pulumi.ResourceOptions(
            parent=made.get(r["parent"]), provider=provider,
            depends_on=[made[u] for u in r["dependencies"] if u in made],
            protect=r["protect"] or None, retain_on_delete=r["retain_on_delete"] or None,
            delete_before_replace=r["delete_before_replace"] or None,
        )
        if not r["custom"]:
            made[r["urn"]] = pulumi.ComponentResource(r["type"], r["name"], None, opts)
            continue
        cls, generic = _sdk_class(r["type"])
        inputs = _with_secrets(r["inputs"], r["secrets"])
        if r["type"].startswith("pulumi:providers:"):
            # A provider's inputs travel JSON-encoded (false as "false"): pass the values.
            inputs = {k: _decoded(v) for k, v in inputs.items()}
        if generic:
            inputs.pop("apiVersion", None)
            inputs.pop("kind", None)
            _package, module, kind = r["type"].split(":")
            made[r["urn"]] = cls(r["name"], api_version=module, kind=kind, opts=opts, **inputs)
            continue
        known = _parameters(cls)
        kwargs = {_snake(k): v for k, v in inputs.items() if _snake(k) in known and _snake(k) != "opts"}
        made[r["urn"]] = cls(r["name"], opts=opts, **kwargs)
