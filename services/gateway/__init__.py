"""The gateway: the hub's mTLS gRPC front door for school systems and vendor connectors."""
