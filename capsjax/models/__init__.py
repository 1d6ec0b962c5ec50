"""capsjax.models: see ARCHITECTURE.md (not built yet)."""
