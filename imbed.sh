#!/usr/bin/env bash
# Build everything (plugins for wasm32-wasip2, the host), install the plugins, and run imbed with
# the given arguments, e.g. `./imbed.sh embed examples/images/*.png`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
"$root/scripts/setup" --release
exec "$root/target/release/imbed" "$@"
