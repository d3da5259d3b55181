"""python -m render --stack NAME --out DIR: the offline render of a stack.

Runs the real program under Pulumi's mocks with Pulumi.NAME.yaml (secure: values replaced by
stand-ins) and writes resources.json, services.json, files/<service>/<path>, env/<service>.env
and, for Kubernetes, manifests/. Same config, byte-identical output.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from render import offline  # noqa: E402


def stack_config(name: str, root: Path = ROOT) -> tuple[dict[str, Any], tuple[str, ...]]:
    """The `matrix-stack:` keys of Pulumi.NAME.yaml; `secure:` values become stand-ins."""
    path = root / f"Pulumi.{name}.yaml"
    if not path.exists():
        raise SystemExit(f"render: no stack file {path.name} (stacks: "
                         + ", ".join(sorted(p.name[7:-5] for p in root.glob("Pulumi.*.yaml"))) + ")")
    document = yaml.safe_load(path.read_text()) or {}
    raw: dict[str, Any] = {}
    secret: list[str] = []
    prefix = offline.PROJECT + ":"
    for key, value in (document.get("config") or {}).items():
        if not key.startswith(prefix):
            continue
        field = key[len(prefix):]
        if isinstance(value, dict) and set(value) == {"secure"}:
            value = offline.stand_in(f"config:{field}", 32)
            secret.append(field)
        raw[field] = value
    return raw, tuple(secret)


def _json(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=True, default=str) + "\n"


def write(result: offline.Run, out: Path) -> dict[str, int]:
    if out.exists():
        shutil.rmtree(out)
    (out / "files").mkdir(parents=True)
    (out / "env").mkdir()
    resources = [r.masked() for r in result.resources]
    (out / "resources.json").write_text(_json(resources))
    (out / "fingerprints.json").write_text(_json(fingerprints(result.resources)))
    services: list[dict[str, Any]] = []
    file_count = 0
    for item in sorted(result.services, key=lambda s: s["service"].name):
        service = item["service"]
        files = []
        for f in sorted(item["files"], key=lambda f: f["path"]):
            target = out / "files" / service.name / f["path"].lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(f["content"])
            os.chmod(target, 0o600 if f["secret"] else 0o644)
            file_count += 1
            files.append({"path": f["path"], "secret": f["secret"], "mode": oct(f["mode"]),
                          "rendered": str(target.relative_to(out))})
        env_lines = [f"{k}={v}" for k, (v, _secret) in sorted(item["env"].items())]
        env_file = out / "env" / f"{service.name}.env"
        env_file.write_text("\n".join(env_lines) + ("\n" if env_lines else ""))
        os.chmod(env_file, 0o600)
        services.append({
            "name": service.name,
            "component": service.component,
            "image": service.image,
            "entrypoint": list(service.entrypoint) if service.entrypoint else None,
            "args": list(service.args),
            "env": {k: (offline.MASK if secret else v) for k, (v, secret) in sorted(item["env"].items())},
            "ports": [{"name": p.name, "port": p.port, "protocol": p.protocol, "public": p.public,
                       "host_port": p.host_port} for p in service.ports],
            "port_ranges": [{"name": r.name, "start": r.start, "end": r.end, "protocol": r.protocol}
                            for r in service.port_ranges],
            "volumes": [{"name": v.name, "path": v.path, "size": v.size} for v in service.volumes],
            "files": files,
            "placement": _placement(result, service),
        })
    (out / "services.json").write_text(_json(services))
    manifests = getattr(result.deployment, "manifests", None)
    if manifests:
        (out / "manifests").mkdir()
        for name, document in sorted(manifests.items()):
            (out / "manifests" / f"{name}.yaml").write_text(yaml.safe_dump(document, sort_keys=True))
    return {"resources": len(resources), "services": len(services), "files": file_count}


def fingerprints(resources: list[offline.Registered]) -> dict[str, dict[str, str]]:
    """Per resource, a hash of each input that holds a secret (masked in resources.json), so the
    offline diff (render.diff) can tell that a secret input changed without showing it. Offline
    secrets are stand-ins derived from resource names, so the hashes reveal nothing real."""
    from pulumi.runtime import rpc

    def has_secret(value: Any) -> bool:
        if rpc.is_rpc_secret(value):
            return True
        if isinstance(value, dict):
            return any(has_secret(v) for v in value.values())
        if isinstance(value, list):
            return any(has_secret(v) for v in value)
        return False

    found: dict[str, dict[str, str]] = {}
    for resource in resources:
        plain = resource.plain_inputs()
        hashes = {
            key: hashlib.sha256(json.dumps(plain[key], sort_keys=True, default=str).encode()).hexdigest()[:16]
            for key, value in sorted(resource.inputs.items())
            if has_secret(value)
        }
        if hashes:
            found[resource.urn] = hashes
    return found


def _placement(result: offline.Run, service: Any) -> dict[str, Any]:
    from components.platform.targets import target_of

    host = target_of(result.cfg).host_of(service.name)
    if host is not None:
        return {"docker_host": host.name, "url": host.url}
    return {"replicas": service.replicas}


def main(argv: list[str] | None = None) -> int:
    import config

    parser = argparse.ArgumentParser(prog="python -m render", description=__doc__.splitlines()[0])
    parser.add_argument("--stack", default="dev")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    raw, secret = stack_config(args.stack)
    try:
        result = offline.run(raw, stack=args.stack, secret_keys=secret)
    except config.ConfigError as exc:
        print(f"render: {exc}", file=sys.stderr)
        return 2
    for text in result.warnings:
        print(f"render: warning: {text}", file=sys.stderr)
    counts = write(result, args.out)
    print(f"rendered stack {args.stack}: {counts['resources']} resources, {counts['services']} services, "
          f"{counts['files']} files -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
