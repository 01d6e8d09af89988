"""Benchmarking: settings and their defaults, the result schema, and one flow that runs the agent here or
on a target, both over Transport (toolchain.bench.system). Import the submodules; nothing is loaded here."""
