#!/usr/bin/env bash
# The main job on one machine: sets up (scripts/setup.sh), builds, starts a small cluster of `edge-node serve`
# members on 127.0.0.1 with a fresh cluster key, and has `edge-coord run` plan the model over them, ship each its
# stage and generate. Everything it starts is stopped on exit (also on Ctrl-C or failure).
#
#   bash scripts/demo.sh ["prompt"] [edge-coord run flags...]     e.g. --stages 2, --tensor-parallel 2, -n 128
#
# NODES=3 by default. Without --stages/--tensor-parallel the planner decides (a model that fits on one node
# runs there alone); the default here asks for a 3-stage pipeline so the cluster is visible.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
bash scripts/setup.sh >&2
cargo build --release -p edge-node -p edge-coord >&2
export NODEVICE_SELECT=1
BIN=target/release
NODES=${NODES:-3}
PROMPT=${1:-"Once upon a time, there was a little robot named"}
shift || true
EXTRA=("$@")
if [ ${#EXTRA[@]} -eq 0 ]; then EXTRA=(--stages "$NODES" -n 64); fi

WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

export EDGE_CLUSTER_KEY=$("$BIN/edge-coord" cluster-key)
FIRST=""
for i in $(seq 1 "$NODES"); do
    args=(serve --data-dir "$WORK/node$i" --listen /ip4/127.0.0.1/tcp/0 --no-mdns)
    [ -n "$FIRST" ] && args+=(--peer "$FIRST")
    "$BIN/edge-node" "${args[@]}" > "$WORK/node$i.out" 2> "$WORK/node$i.log" &
    PIDS+=($!)
    addr=$(wait_listening "${PIDS[-1]}" "$WORK/node$i.out" "$WORK/node$i.log")
    echo "node $i: $addr" >&2
    [ -z "$FIRST" ] && FIRST=$addr
done
"$BIN/edge-coord" run --data-dir "$WORK/coord" --no-mdns --peer "$FIRST" --wait 60 --min-nodes "$NODES" -p "$PROMPT" \
    "${EXTRA[@]}"
