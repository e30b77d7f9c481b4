"""The timeline: ingest, hash chain, query API, reviewer's view, export."""
