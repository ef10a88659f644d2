"""Diagnostics used to study training (filled in by the diagnostics work)."""
