#!/usr/bin/env bash
# The test command: installs the Debian packages the tests use (tests/deps.sh), then builds
# everything and runs the unit and end-to-end tests. Arguments go to `cargo test`
# (e.g. `tests/run.sh --test e2e`).
set -euo pipefail
cd "$(dirname "$0")/.."
tests/deps.sh

# A CI runner may leak its own fds (pipes) into every process it starts; the programs the
# tests checkpoint would then hold them too. Close everything above stderr.
for fd in /proc/$$/fd/*; do
    n=${fd##*/}
    if [ "$n" -gt 2 ] 2>/dev/null; then eval "exec $n>&-" 2>/dev/null || true; fi
done

cargo build --workspace && cargo test --workspace "$@"
