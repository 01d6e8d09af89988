"""Fleets: Ansible-style inventories, and deploy/bench on many targets at once (toolchain fleet)."""
