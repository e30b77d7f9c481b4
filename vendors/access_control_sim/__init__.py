"""A door access-control vendor simulator that attaches to the gateway as a connector."""
