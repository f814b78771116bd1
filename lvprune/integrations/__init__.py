"""Adapters that let other tools run lvprune models (each imports its tool lazily, on use)."""
