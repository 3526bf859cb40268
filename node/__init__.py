"""Titra node: what runs in each container (the store, the HTTP edge, the runtime)."""
