#!/usr/bin/env bash
# Sets up the machine if needed (scripts/setup.sh) and runs every test of the workspace, optimized (the tests run
# the real model through the CPU reference and the WGSL kernels), then the CPU kernel conformance tests built for
# aarch64 and run under qemu-user (the NEON and NEON dotprod paths; qemu's CPU has both).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --with-aarch64
export NODEVICE_SELECT=1 # silences a harmless Mesa warning about XDG_RUNTIME_DIR
cargo test --release --workspace "$@"

export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc # aws-lc-sys (QUIC) builds C
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"
EDGE_CPU_EXPECT_PATHS=generic,neon,neon-dotprod \
  cargo test --release --target aarch64-unknown-linux-gnu -p edge-node --test cpu_kernels --test cpu_repack
