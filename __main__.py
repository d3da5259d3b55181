"""matrix-stack: load the stack's typed config, build the deployment, export its outputs."""

import config
import stack

stack.export(stack.build(config.load()))
