"""capsjax.train: see ARCHITECTURE.md (not built yet)."""
