"""Transports: how claimed jobs reach workers (the store stays the truth)."""
