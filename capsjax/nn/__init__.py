"""capsjax.nn: see ARCHITECTURE.md (not built yet)."""
