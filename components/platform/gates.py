"""Gates (spec.Gate) as Pulumi resources, the same on every target: a pulumi-command local
Command that runs the gate's script where `pulumi` runs. The script is written in the target's
operator verbs (contract.Target), so nothing here knows the target.

The command is replaced, and so its script run, when the gate's trigger changes; a change of the
script alone runs `unchanged`'s echo instead, so a new procedure text never repeats its work. A
failing script fails the update before the service that depends on the gate is touched."""

from __future__ import annotations

import shlex
from collections.abc import Sequence

import pulumi

from .spec import Gate


def declare(gate: Gate, parent: pulumi.Resource | None, after: Sequence[pulumi.Resource]) -> pulumi.Resource:
    from pulumi_command import local

    return local.Command(
        gate.name,
        create=gate.script,
        update=f"echo {shlex.quote(gate.unchanged)}",
        triggers=[gate.trigger],
        interpreter=["/bin/sh", "-c"],
        logging=local.Logging.STDOUT_AND_STDERR,
        opts=pulumi.ResourceOptions(parent=parent, depends_on=list(after)),
    )
