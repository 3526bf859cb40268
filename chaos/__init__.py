"""Titra chaos: nemeses, workloads, histories, checkers and the deterministic simulator."""
