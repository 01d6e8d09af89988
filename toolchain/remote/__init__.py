"""The host's side of a target: profiles, the target session, preflight, provisioning, deploy.

What runs ON the target is toolchain/agent/ (shipped by `agent_package`, never imported); benchmarking
is toolchain.bench; the emulated Bluebox is a provider (toolchain.providers).
"""
