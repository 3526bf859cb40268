"""Titra cluster: how nodes make one system (causality, placement, replication, the client)."""
