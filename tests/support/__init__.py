"""Shared test infrastructure (the proxy and webhook processes; the runtime environment is lab.runtime)."""
