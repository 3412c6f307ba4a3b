"""The three deployable services: gateway, worker and monitor."""
