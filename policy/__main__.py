"""The matrix-stack policy pack: `pulumi preview --policy-pack policy`.

Only constructs the PolicyPack (which starts a gRPC server and never returns); the rules live in
rules.py so tests can call them without pulumi_policy. Never import this file from tests.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from pulumi_policy import EnforcementLevel, PolicyPack, ResourceValidationPolicy  # noqa: E402
from rules import RULES  # noqa: E402

PolicyPack(
    name="matrix-stack",
    enforcement_level=EnforcementLevel.MANDATORY,
    policies=[ResourceValidationPolicy(name=r.name, description=r.description, validate=r.validate) for r in RULES],
)
