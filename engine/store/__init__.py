"""The campaign store, the source of truth."""
