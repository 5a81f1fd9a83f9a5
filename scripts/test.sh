#!/usr/bin/env bash
# Sets up the machine if needed (scripts/setup.sh) and runs every test of the workspace, optimized (the tests run
# the real model through the CPU reference and the WGSL kernels).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export NODEVICE_SELECT=1 # silences a harmless Mesa warning about XDG_RUNTIME_DIR
cargo test --release --workspace "$@"
