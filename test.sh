#!/usr/bin/env bash
# The whole test suite: the host's unit and integration tests (which build the plugins and the
# test plugins themselves) and the plugins' own unit tests, run natively.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
"$root/scripts/setup" --test
# A backtrace per wasmtime error makes expected traps slow and the output long.
export RUST_BACKTRACE=0
host="$(rustc -vV | sed -n 's/^host: //p')"
(cd "$root/plugins" && cargo test --quiet --target "$host")
cd "$root" && cargo test --workspace
