"""Run the real program in-process under Pulumi's mocks: no CLI, no engine, no credentials.

`run(raw_config)` builds the deployment and returns the resource graph as the engine would have
received it (type, name, parent, provider, options, inputs) plus every service with its values
resolved. Generated secrets get deterministic stand-ins of the right form, so rendered files
can be booted as they are.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import gc
import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pulumi
from google.protobuf import json_format
from pulumi.runtime import mocks as pulumi_mocks
from pulumi.runtime import rpc

PROJECT = "matrix-stack"
MASK = "[secret]"


def stand_in(name: str, length: int, alphabet: str = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") -> str:
    """A deterministic stand-in secret of the requested length, from the resource's name."""
    out: list[str] = []
    counter = 0
    while len(out) < length:
        digest = hashlib.sha256(f"{name}:{counter}".encode()).digest()
        out += [alphabet[b % len(alphabet)] for b in digest]
        counter += 1
    return "".join(out[:length])


BCRYPT_ALPHABET = "./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


def bcrypt_stand_in(name: str, password: str) -> str:
    """RandomPassword's bcrypt_hash, as a deterministic stand-in in bcrypt's format (cost 10,
    pulumi-random's). Not a computed hash: under `pulumi up` pulumi-random hashes in its own
    plugin process, so hashing here (about 75 ms each) would charge the program's render for
    provider work. Tests check the wiring instead: which resource's hash a service receives."""
    salt = stand_in(f"{name}:salt", 22, BCRYPT_ALPHABET)
    digest = stand_in(f"{name}:{password}:hash", 31, BCRYPT_ALPHABET)
    return f"$2a$10${salt}{digest}"


def _unwrap(value: Any) -> Any:
    if rpc.is_rpc_secret(value):
        return _unwrap(value["value"])
    if isinstance(value, dict):
        return {k: _unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unwrap(v) for v in value]
    return value


def _mask(value: Any) -> Any:
    if rpc.is_rpc_secret(value):
        return MASK
    if isinstance(value, dict):
        return {k: _mask(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return [_mask(v) for v in value]
    if isinstance(value, (pulumi.Asset, pulumi.Archive)):
        return repr(value)
    return value


class StackMocks(pulumi.runtime.Mocks):
    """Provider outputs a real `pulumi up` would compute, made deterministic."""

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        inputs = _unwrap(args.inputs)
        outputs = dict(inputs)
        typ = args.typ
        if typ == "random:index/randomPassword:RandomPassword" or typ == "random:index/randomString:RandomString":
            alphabet = "abcdefghijklmnopqrstuvwxyz0123456789" if inputs.get("upper") is False else \
                "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
            outputs["result"] = stand_in(args.name, int(inputs.get("length", 32)), alphabet)
            if typ == "random:index/randomPassword:RandomPassword":
                outputs["bcryptHash"] = bcrypt_stand_in(args.name, outputs["result"])
        elif typ == "random:index/randomBytes:RandomBytes":
            raw = hashlib.sha256(args.name.encode()).digest() * 4
            data = raw[: int(inputs.get("length", 32))]
            outputs["base64"] = base64.b64encode(data).decode()
            outputs["hex"] = data.hex()
        elif typ == "docker:index/remoteImage:RemoteImage":
            outputs["imageId"] = inputs.get("name", "")
            outputs["repoDigest"] = inputs.get("name", "")
        elif typ == "cloudflare:index/pagesProject:PagesProject":
            # Cloudflare names the project's host after it (a CNAME target).
            outputs["subdomain"] = f"{inputs.get('name', args.name)}.pages.dev"
        elif typ == "tls:index/privateKey:PrivateKey":
            outputs["privateKeyPem"] = f"-----BEGIN PRIVATE KEY-----\n{stand_in(args.name, 64)}\n-----END PRIVATE KEY-----\n"
            outputs["publicKeyPem"] = "-----BEGIN PUBLIC KEY-----\n-----END PUBLIC KEY-----\n"
        elif typ == "tls:index/selfSignedCert:SelfSignedCert":
            outputs["certPem"] = f"-----BEGIN CERTIFICATE-----\n{stand_in(args.name, 64)}\n-----END CERTIFICATE-----\n"
        elif typ == "tls:index/certRequest:CertRequest":
            outputs["certRequestPem"] = (f"-----BEGIN CERTIFICATE REQUEST-----\n{stand_in(args.name, 64)}\n"
                                         "-----END CERTIFICATE REQUEST-----\n")
        elif typ == "cloudflare:index/originCaCertificate:OriginCaCertificate":
            outputs["certificate"] = f"-----BEGIN CERTIFICATE-----\n{stand_in(args.name, 64)}\n-----END CERTIFICATE-----\n"
        return f"{args.name}-id", outputs

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]] | None]:
        # Failures as an empty list: the mock monitor iterates them.
        if args.token == "cloudflare:index/getZone:getZone":
            name = (args.args.get("filter") or {}).get("name", "zone")
            return {"zoneId": hashlib.sha256(name.encode()).hexdigest()[:32], "id": "zone-id", "name": name}, []
        return {}, []


@dataclass(frozen=True)
class Registered:
    """One resource as the engine received it. Its inputs are decoded from the request's wire
    form on first use: the render reads them all, a test a few, the benchmark none."""

    urn: str
    type: str
    name: str
    parent: str
    provider: str
    custom: bool
    protect: bool
    retain_on_delete: bool
    delete_before_replace: bool
    wire_inputs: Any  # the request's protobuf Struct
    dependencies: tuple[str, ...] = ()
    has_replacement_trigger: bool = False
    # The resources whose IDs make up the replacement trigger: replacing one replaces this one.
    replaced_with: tuple[str, ...] = ()
    # Per input, the resources its value comes from: what Pulumi reads to find the dependents a
    # delete-before-replace resource deletes first (those an input of which it feeds).
    property_dependencies: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @functools.cached_property
    def inputs(self) -> Mapping[str, Any]:
        """The inputs, secrets still wrapped (see masked())."""
        decoded: Mapping[str, Any] = rpc.deserialize_properties(self.wire_inputs)
        return decoded

    def masked(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "name": self.name,
            "urn": self.urn,
            "parent": self.parent,
            "provider": self.provider.split("::")[-1] if self.provider else "",
            "custom": self.custom,
            "protect": self.protect,
            "retainOnDelete": self.retain_on_delete,
            "deleteBeforeReplace": self.delete_before_replace,
            "dependsOn": sorted(self.dependencies),
            "replacementTrigger": self.has_replacement_trigger,
            "replacedWith": sorted(self.replaced_with),
            "inputDependencies": {key: sorted(urns) for key, urns in self.property_dependencies if urns},
            "inputs": _mask(dict(self.inputs)),
        }

    def plain_inputs(self) -> dict[str, Any]:
        return _unwrap(dict(self.inputs))


class RecordingMonitor(pulumi_mocks.MockMonitor):
    """MockMonitor that also keeps what the engine would see: parent, provider and options."""

    def __init__(self, mocks: pulumi.runtime.Mocks):
        super().__init__(mocks)
        self.registered: list[Registered] = []
        self.urn_by_id: dict[str, str] = {}

    def _ids_in(self, value: Any) -> tuple[str, ...]:
        """The resources (URNs) whose mock IDs a replacement trigger holds."""
        plain = json_format.MessageToDict(value)
        found: list[str] = []
        stack = [plain]
        while stack:
            item = stack.pop()
            if isinstance(item, list):
                stack += item
            elif isinstance(item, dict):
                stack += item.values()
            elif isinstance(item, str) and item in self.urn_by_id:
                found.append(self.urn_by_id[item])
        return tuple(found)

    def RegisterResource(self, request: Any) -> Any:
        response = super().RegisterResource(request)
        if request.custom and response.id:
            self.urn_by_id[response.id] = response.urn
        if request.type != "pulumi:pulumi:Stack":
            trigger = request.HasField("replacement_trigger")
            self.registered.append(Registered(
                urn=response.urn,
                type=request.type,
                name=request.name,
                parent=request.parent,
                provider=request.provider,
                custom=bool(request.custom),
                protect=bool(request.protect),
                retain_on_delete=bool(request.retainOnDelete),
                delete_before_replace=bool(request.deleteBeforeReplace),
                wire_inputs=request.object,
                dependencies=tuple(request.dependencies),
                has_replacement_trigger=trigger,
                replaced_with=self._ids_in(request.replacement_trigger) if trigger else (),
                property_dependencies=tuple(sorted((key, tuple(deps.urns))
                                                   for key, deps in request.propertyDependencies.items())),
            ))
        return response


@dataclass
class Run:
    """The outcome of one in-process program run."""

    cfg: Any
    deployment: Any
    resources: list[Registered]
    services: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # what pulumi.log.warn told the engine
    registered: list[Registered] = field(default_factory=list)  # as `resources`, in registration order

    def of_type(self, type_token: str) -> list[Registered]:
        return [r for r in self.resources if r.type == type_token]

    def uploads(self, container: str) -> list[dict[str, Any]]:
        """The files a Docker container reads, as uploaded to its file holder (`<name>-files`,
        whose volumes it mounts read-only) and to the holder of its live files
        (`<name>-live-files`, which reach it through its live volume): components/platform/docker.py."""
        holders = [r for r in self.of_type("docker:index/container:Container")
                   if r.name in (f"{container}-files", f"{container}-live-files")]
        return [u for holder in sorted(holders, key=lambda r: r.name) for u in holder.plain_inputs().get("uploads") or []]

    def by_name(self, name: str) -> Registered:
        matches = [r for r in self.resources if r.name == name]
        if len(matches) != 1:
            raise KeyError(f"{len(matches)} resources named {name}")
        return matches[0]


async def _resolve(value: Any) -> tuple[Any, bool]:
    """(value, is_secret) of an Input, awaiting Outputs."""
    if isinstance(value, pulumi.Output):
        return await value.future(), bool(await value.is_secret())
    return value, False


async def _resolve_services(services: list[Any]) -> list[dict[str, Any]]:
    resolved = []
    for service in services:
        env: dict[str, tuple[str, bool]] = {}
        for key, value in service.env.items():
            env[key] = await _resolve(value)
        for key, value in service.secret_env.items():
            env[key] = ((await _resolve(value))[0], True)
        files = []
        for f in service.files:
            content, secret = await _resolve(f.content)
            files.append({"path": f.path, "content": content, "secret": f.secret or secret,
                          "mode": f.mode, "group": f.group})
        resolved.append({"service": service, "env": env, "files": files})
    return resolved


class _EngineLog(logging.Handler):
    """The engine's log under mocks: keeps the warnings the program sent (pulumi.log.warn),
    which the CLI would print among its diagnostics."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.warnings: list[str] = []
        self.logger = logging.Logger("matrix-stack.engine")  # not registered: one per run
        self.logger.addHandler(self)
        self.logger.propagate = False
        # The runtime logs a debug line per resource: refused before a record is made.
        self.logger.setLevel(logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        self.warnings.append(record.getMessage())


def _config_map(raw: Mapping[str, Any]) -> dict[str, str]:
    return {f"{PROJECT}:{k}": (v if isinstance(v, str) else json.dumps(v)) for k, v in raw.items()}


def run(raw: Mapping[str, Any], *, stack: str = "dev", secret_keys: tuple[str, ...] = ()) -> Run:
    """Validate `raw` (the namespace's keys) and build the deployment under mocks."""
    # As in __main__.py: no cyclic garbage collection while the program runs (see there).
    # Restored afterwards, since the process (a test session, say) may go on.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _run(raw, stack=stack, secret_keys=secret_keys)
    finally:
        if collecting:
            gc.enable()


def _run(raw: Mapping[str, Any], *, stack: str, secret_keys: tuple[str, ...]) -> Run:
    import stack as program

    cfg = program.parse(raw, secret_keys)  # raises ConfigError before anything is declared
    holder: dict[str, Any] = {}

    def program_body() -> None:
        holder["deployment"] = program.build(cfg)

    monitor, engine_log = declare(program_body, raw, stack=stack, secret_keys=secret_keys)
    result = Run(cfg=cfg, deployment=holder["deployment"], resources=sorted(monitor.registered, key=lambda r: r.urn),
                 warnings=engine_log.warnings, registered=monitor.registered)
    return result_with_services(result)


def declare(body: Callable[[], None], raw: Mapping[str, Any], *, stack: str,
            secret_keys: tuple[str, ...] = ()) -> tuple[RecordingMonitor, _EngineLog]:
    """Run `body` as a Pulumi program under the mocks: what it declared, and what it logged."""
    mocks = StackMocks()
    monitor = RecordingMonitor(mocks)
    engine_log = _EngineLog()
    # set_mocks keeps the root stack resource of an earlier run in this process (another stack's
    # URN for every resource without a parent): start each run from a fresh root.
    pulumi.runtime.settings.ROOT.set(None)
    # The new root is registered on the current event loop; asyncio.run() (a client in the same
    # process, say) leaves none behind.
    try:
        asyncio.get_event_loop()
    except RuntimeError:
        asyncio.set_event_loop(asyncio.new_event_loop())
    pulumi.runtime.set_all_config(_config_map(raw), [f"{PROJECT}:{k}" for k in secret_keys])
    pulumi.runtime.set_mocks(mocks, project=PROJECT, stack=stack, preview=False, monitor=monitor,
                             logger=engine_log.logger)
    pulumi.runtime.mocks.test(body)()  # type: ignore[no-untyped-call]
    return monitor, engine_log


def result_with_services(result: Run) -> Run:
    # The runtime awaits every task the program started before the run returns, so every
    # Output has settled: read the services' values from the finished futures. (Resolving them
    # inside the run would hand the runtime one more Output to unwrap, value by value.)
    loop = asyncio.new_event_loop()
    try:
        result.services = loop.run_until_complete(_resolve_services(result.deployment.services))
    finally:
        loop.close()
    return result
