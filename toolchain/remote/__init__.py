"""The target side: profiles, preflight, provisioning, deploy, remote bench, the emulated Bluebox.

`helper.py` and `agent/` are scripts that run ON the target (Python 3.5+, no package imports);
everything else runs on the host.
"""
