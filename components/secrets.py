"""Secrets the stack generates: pulumi-random resources, stable across runs, always secret."""

from __future__ import annotations

import pulumi
import pulumi_random as random


def password(name: str, parent: pulumi.Resource, length: int = 48) -> pulumi.Output[str]:
    """A random alphanumeric secret (no symbols: it lands in URLs, env files and YAML)."""
    resource = random.RandomPassword(
        name, length=length, special=False, opts=pulumi.ResourceOptions(parent=parent)
    )
    return pulumi.Output.secret(resource.result)


def ed25519_signing_key(name: str, parent: pulumi.Resource) -> pulumi.Output[str]:
    """Synapse's signing key file: `ed25519 <key id> <unpadded base64 of a 32-byte seed>`."""
    opts = pulumi.ResourceOptions(parent=parent)
    seed = random.RandomBytes(f"{name}-seed", length=32, opts=opts)
    key_id = random.RandomString(f"{name}-id", length=6, special=False, upper=False, opts=opts)
    return pulumi.Output.secret(
        pulumi.Output.all(key_id.result, seed.base64).apply(
            lambda parts: f"ed25519 a_{parts[0]} {parts[1].rstrip('=')}\n"
        )
    )
