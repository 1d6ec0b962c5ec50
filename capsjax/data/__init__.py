"""capsjax.data: see ARCHITECTURE.md (not built yet)."""
