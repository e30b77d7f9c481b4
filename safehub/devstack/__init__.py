"""The dev stack behind ``safehub up`` and ``safehub demo``.

The supervisor, the embedded broker, the dev PKI and the demo scenario.

Nothing here runs in production: on Kubernetes the chart, a real cluster and real
certificates take these roles. The kernel never imports this package (import-linter).
"""
