"""The emergency path end to end, every deployable running as a process."""
