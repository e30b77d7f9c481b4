"""A PA, intercom and digital-signage vendor simulator attached to the gateway as a connector."""
