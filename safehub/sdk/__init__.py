"""The vendor SDK: a connector session over the gateway's gRPC API with mTLS."""
