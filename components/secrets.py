"""Secrets the stack generates: pulumi-random resources, stable across runs, always secret."""

from __future__ import annotations

import pulumi
import pulumi_random as random


def password_resource(name: str, parent: pulumi.Resource | None, *, protect: bool, length: int = 48) -> random.RandomPassword:
    """A random alphanumeric secret (no symbols: it lands in URLs, env files and YAML).

    Generated secrets are state (a lost signing key or database password breaks the deployment),
    so they are protected wherever the stack protects its data (cfg.protect)."""
    return random.RandomPassword(
        name, length=length, special=False, opts=pulumi.ResourceOptions(parent=parent, protect=protect)
    )


def password(name: str, parent: pulumi.Resource | None, *, protect: bool, length: int = 48) -> pulumi.Output[str]:
    return pulumi.Output.secret(password_resource(name, parent, protect=protect, length=length).result)


def ed25519_signing_key(name: str, parent: pulumi.Resource, *, protect: bool) -> pulumi.Output[str]:
    """Synapse's signing key file: `ed25519 <key id> <unpadded base64 of a 32-byte seed>`."""
    opts = pulumi.ResourceOptions(parent=parent, protect=protect)
    seed = random.RandomBytes(f"{name}-seed", length=32, opts=opts)
    key_id = random.RandomString(f"{name}-id", length=6, special=False, upper=False, opts=opts)
    return pulumi.Output.secret(
        pulumi.Output.all(key_id.result, seed.base64).apply(
            lambda parts: f"ed25519 a_{parts[0]} {parts[1].rstrip('=')}\n"
        )
    )
