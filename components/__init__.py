"""The parts of the system, one package each; `platform` holds the target adapters."""
