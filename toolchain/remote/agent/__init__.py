"""Transitional: only `bench_agent` below, for the one caller that still imports the agent's loop (see there)."""
