"""Tiny models in the real file formats, built once per test session (see DESIGN.md: testing without downloads)."""
