#!/usr/bin/env bash
# The whole test suite: the host's unit and integration tests (which build the plugins and the
# test plugins themselves), the plugins' own unit tests, run natively, and the Python wheel's
# tests against the wheel installed in a fresh venv.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
"$root/scripts/setup" --test
# A backtrace per wasmtime error makes expected traps slow and the output long.
export RUST_BACKTRACE=0
host="$(rustc -vV | sed -n 's/^host: //p')"
(cd "$root/plugins" && cargo test --quiet --target "$host")
# The default members (host, tests): the Python extension (python/) is built once, below, by
# maturin, reusing what this build compiled.
cd "$root" && cargo test
"$root/python/test"
