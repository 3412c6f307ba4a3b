"""The monitor service: one view of the whole system."""
