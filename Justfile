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
    {{bin}}/pytest --durations=20 {{ARGS}}
    rc=$?
    if [ $rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 0; fi
    exit $rc

# end to end on the embedded default: Fashion-MNIST (Debian), hps-06-0.5x, this machine as the target
demo MODEL="hps-06-0.5x":
    {{bin}}/toolchain models '{{MODEL}}'
    @echo "== export: checkpoint (trains one briefly if there is none) -> ONNX -> onnxsim -> INT8 behind the accuracy gate" >&2
    {{bin}}/toolchain export --model '{{MODEL}}'
    @echo "== bench on the local target: the same agent and JSON schema the Bluebox runs" >&2
    {{bin}}/toolchain bench --model '{{MODEL}}' --threads 1,2
    @echo "== done: artifacts/{{MODEL}}/ holds the models, manifest.json and bench/*.json; on a Bluebox: toolchain deploy --model {{MODEL}} --target bluebox2 --host 10.234.224.16" >&2
    @echo "== report: the papers' figures beside ours, latency, GFLOP/s, plots (open the .html first)" >&2
    {{bin}}/toolchain report --model '{{MODEL}}'

# benchmarks; results in benchmarks/results/*.json
bench:
    {{bin}}/python benchmarks/run.py

# deploy + bench on a real Bluebox (default: the papers' Table 4 models): BLUEBOX_HOST=10.234.224.16 just bench-remote
bench-remote *MODELS:
    #!/usr/bin/env bash
    set -euo pipefail
    if [ -z "${BLUEBOX_HOST:-}" ] && ! grep -qE '^[[:space:]]*host[[:space:]]*=' targets/bluebox2/target.toml; then
        echo "bench-remote: no Bluebox address. Set one: BLUEBOX_HOST=10.234.224.16 just bench-remote" >&2
        echo "  (or a ~/.ssh/config alias in BLUEBOX_HOST, or host = \"...\" in targets/bluebox2/target.toml)" >&2
        exit 2
    fi
    {{bin}}/toolchain target bench --target bluebox2 ${BLUEBOX_HOST:+--host "$BLUEBOX_HOST"} {{MODELS}}

# the same on the emulated aarch64 Bluebox (qemu-user, as root; labeled emulated): just bench-emulated
bench-emulated *MODELS:
    #!/usr/bin/env bash
    set -euo pipefail
    {{bin}}/toolchain target emulated up
    trap '{{bin}}/toolchain target emulated down' EXIT
    {{bin}}/toolchain target bench --target emulated {{MODELS}}
