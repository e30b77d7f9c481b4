"""The dev stack: the embedded broker, the manifests the supervisor reads."""
