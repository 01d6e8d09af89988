# toolchain tasks. `scripts/bootstrap <recipe>` installs everything first on a fresh machine.
set shell := ["bash", "-euo", "pipefail", "-c"]

bin := justfile_directory() / ".venv/bin"

# list recipes
default:
    @just --list

# install Debian packages and the Python environment (.venv)
setup:
    scripts/bootstrap

# the full test suite (real sshd, emulated aarch64 Bluebox, real Fashion-MNIST)
test *ARGS:
    #!/usr/bin/env bash
    set -uo pipefail
    export TOOLCHAIN_REQUIRE_ALL=1
    {{bin}}/pytest {{ARGS}}
    rc=$?
    if [ $rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 0; fi
    exit $rc

# end to end on the embedded default: Fashion-MNIST, hps-06-0.5x, local target
demo:
    {{bin}}/toolchain models 'hps-06*'

# benchmarks; results in benchmarks/results/*.json
bench:
    {{bin}}/python benchmarks/run.py
