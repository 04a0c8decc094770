"""Data package: shipped run configs (YAML). Each opens with the command that runs it."""
