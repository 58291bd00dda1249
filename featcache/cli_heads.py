"""Sub-commands for heads on cached features (filled in by the heads issue)."""

COMMANDS: list = []
