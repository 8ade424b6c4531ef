#!/usr/bin/env bash
# The whole test suite: the host's unit and integration tests (which build the plugins and the
# test plugins themselves), the plugins' own unit tests, run natively, and the Python wheel's
# tests against the wheel installed in a fresh venv.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
say() { printf 'test.sh: %s\n' "$*" >&2; }
"$root/scripts/setup" --test
# A backtrace per wasmtime error makes expected traps slow and the output long.
export RUST_BACKTRACE=0
host="$(rustc -vV | sed -n 's/^host: //p')"

# A cold run adds about 5 GB of build products to target/ after set-up (the plugins' native
# test build 1 GB, the host's test build 3 GB, the wheel and its venv 1 GB). A CI machine once
# had less than that free and the linker died of SIGBUS halfway. On a disk with less than 8 GB
# free, trade rebuild speed for room: no incremental compilation data (0.8 GB), and the plugins'
# test build is removed once its tests have passed (the next run builds it again).
free_gib="$(df -Pk "$root" | awk 'NR == 2 { printf "%d", $4 / 1048576 }')"
low_disk=false
if (( free_gib < 8 )); then
  low_disk=true
  say "only $free_gib GB free on the disk holding target/: building without incremental data, and removing the plugins' test build once it has passed"
  export CARGO_INCREMENTAL=0
fi

(cd "$root/plugins" && cargo test --quiet --target "$host")
if $low_disk; then
  # Host-side build products of this test build only: the wasm builds put theirs in release/.
  rm -rf "$root/target/wasm/$host" "$root/target/wasm/debug"
fi
# The default members (host, tests): the Python extension (python/) is built once, below, by
# maturin, reusing what this build compiled.
cd "$root" && cargo test
"$root/python/test"
