"""The kernel and the contracts: bus, batch consumer, codec, stores, servers, telemetry."""
