"""Data package: one TOML file per device target (no code). See README, "Targets"."""
