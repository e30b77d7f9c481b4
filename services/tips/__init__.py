"""The anonymous tips service: intake, sealed tipster identity, two-way thread, duplicates."""
