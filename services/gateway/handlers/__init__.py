"""HTTP handlers of the gateway, one module per surface."""
