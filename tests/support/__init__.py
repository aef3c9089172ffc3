"""Shared test infrastructure (runtime environment, ports, processes)."""
