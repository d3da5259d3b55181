"""The Docker target on a real Docker engine: the engine itself, stand-in images, and an applier
that creates the containers the program declares."""
