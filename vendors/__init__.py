"""Gateway-attached vendor programs: what a door-controller or PA vendor runs on its side.

They reach SafeHub only through the published gRPC connector API with their mTLS client
certificate (``safehub.sdk``), never through the bus: exactly what a third-party vendor can do.
"""
