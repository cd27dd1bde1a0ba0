#!/usr/bin/env bash
# GPU acceptance: one command on a machine with one NVIDIA GPU, under 8 minutes, one JSON.
#   bash scripts/gpu_acceptance.sh [--out FILE] [--dry-run] [--skip-bootstrap]
# Steps (each under its own time limit; a failing step is recorded and the next one runs):
#   bootstrap   the README's set-up (scripts/bootstrap_venv.sh): CUDA torch, faiss-gpu instead of faiss-cpu
#   env         torch, CUDA, GPU name and memory; faiss on the GPU, or why it fell back to the CPU
#   bench       experiments/moe/bench_moe.py layer: one 4096 x 4096 layer, bf16, LoRA-MoE (dense, grouped) vs
#               one LoRA: forward+backward time and peak memory
#   rocket      train.py experiment=demo trainer=gpu on a small slice (SmolLM2-135M, K=5, C=64, 50 eval items)
#   eval        eval.py on 200 ARC-E items: evaluation throughput (items/s)
#   rehearsal   scripts/rehearse_paper.py --device cuda (LLaMA-2-7B-shaped, bf16, trainer=gpu), peak GPU memory
#               (nvidia-smi) next to the planner's estimate (python -m kexpert.plan)
# --dry-run: no GPU needed: every step's command is recorded, env/faiss/bench run on the CPU with small shapes,
# and the JSON is written (tests/unit/test_gpu_acceptance.py runs it so).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=$ROOT/experiments/gpu_acceptance.json
DRY=0
BOOT=1
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT=$(realpath -m "$2"); shift 2 ;;
    --dry-run) DRY=1; shift ;;
    --skip-bootstrap) BOOT=0; shift ;;
    *) echo "usage: $0 [--out FILE] [--dry-run] [--skip-bootstrap]" >&2; exit 2 ;;
  esac
done
WORK=$(mktemp -d "${TMPDIR:-/tmp}/kexpert-gpu-acceptance.XXXXXX")
T0=$(date +%s)
export HF_HUB_OFFLINE=1 WANDB_MODE=disabled TOKENIZERS_PARALLELISM=false
export KEXPERT_CACHE_DIR=$WORK/cache KEXPERT_DATA_DIR=${KEXPERT_DATA_DIR:-$(realpath -m "$ROOT/../shared/data")}
PY=$ROOT/.venv/bin/python

# step NAME LIMIT_S CMD...: run CMD under a time limit, keep its log, record {status, rc, wall_s, log_tail}
step() {
  local name=$1 limit=$2; shift 2
  local t=$(date +%s) rc
  echo "[acceptance] $name: $*" >&2
  printf '%s\n' "$*" > "$WORK/$name.cmd"
  if [ "$DRY" = 1 ] && [ "${RUN_IN_DRY:-0}" != 1 ]; then
    rc=-1; echo "dry run: not run" > "$WORK/$name.log"
  else
    timeout "$limit" "$@" > "$WORK/$name.log" 2>&1; rc=$?
  fi
  echo "$rc $(( $(date +%s) - t ))" > "$WORK/$name.rc"
  return 0
}

if [ "$BOOT" = 1 ] && [ "$DRY" = 0 ]; then
  step bootstrap 300 bash scripts/bootstrap_venv.sh
else
  step bootstrap 1 true; echo "-1 0" > "$WORK/bootstrap.rc"
fi
[ -x "$PY" ] || PY=$(command -v python3)

RUN_IN_DRY=1 step env 120 "$PY" - "$WORK/env.json" <<'PYEOF'
import json, platform, sys
out = {"python": platform.python_version()}
try:
    import torch
    out.update(torch=torch.__version__, cuda=torch.version.cuda, cuda_available=torch.cuda.is_available())
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        out.update(gpu=p.name, gpu_mem_gb=round(p.total_memory / 2**30, 1), gpus=torch.cuda.device_count())
except Exception as e:  # noqa: BLE001
    out["torch_error"] = repr(e)
try:
    import importlib.metadata as md
    import faiss
    names = {(d.metadata["Name"] or "").lower() for d in md.distributions()}
    dists = [d for d in ("faiss-gpu-cu12", "faiss-gpu", "faiss-cpu") if d in names]
    out.update(faiss=faiss.__version__, faiss_dists=dists)
    n = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    out["faiss_gpus"] = n
    if n > 0:
        import numpy as np
        res = faiss.StandardGpuResources()
        index = faiss.GpuIndexFlatIP(res, 64)
        x = np.random.default_rng(0).standard_normal((1000, 64)).astype("float32")
        index.add(x)
        d, i = index.search(x[:5], 1)
        out["faiss_on_gpu"] = bool((i[:, 0] == np.arange(5)).all())
    else:
        out["faiss_on_gpu"] = False
        out["faiss_fallback_reason"] = ("faiss-cpu is installed (no GPU support compiled in)" if "faiss-cpu" in dists
                                        else "faiss sees no GPU")
except Exception as e:  # noqa: BLE001
    out["faiss_on_gpu"] = False
    out["faiss_fallback_reason"] = repr(e)
json.dump(out, open(sys.argv[1], "w"), indent=1)
print(json.dumps(out))
PYEOF

if [ "$DRY" = 1 ]; then
  RUN_IN_DRY=1 step bench 300 "$PY" experiments/moe/bench_moe.py layer --device cpu --dtype float32 --d 256 \
    --batch 2 --seq 32 --steps 1 --warmup 0
else
  step bench 180 "$PY" experiments/moe/bench_moe.py layer --device cuda --dtype bfloat16 --d 4096
fi
step rocket 240 "$PY" train.py experiment=demo trainer=gpu k_shot=5 data_selection.budget=64 eval.limit=50 \
  build_bank_if_missing=true "hydra.run.dir=$WORK/rocket"
step eval 120 "$PY" eval.py task=arc_e eval.limit=200 eval.progress=false "hydra.run.dir=$WORK/eval"
RUN_IN_DRY=1 step plan 120 "$PY" -m kexpert.plan experiment=rehearse_paper trainer=gpu gpu_mem_gb=80 --json
# the rehearsal on the GPU, with nvidia-smi sampling the device's used memory every second
( while sleep 1; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits 2>/dev/null | head -1; done \
  > "$WORK/gpu_mem.txt" ) &
SAMPLER=$!
step rehearsal 300 "$PY" scripts/rehearse_paper.py --device cuda --models llama2_7b_2layer --out "$WORK/rehearsal"
kill "$SAMPLER" 2>/dev/null

"${PY:-python3}" - "$WORK" "$OUT" "$DRY" "$T0" <<'PYEOF'
import json, re, sys, time
from pathlib import Path
work, out, dry, t0 = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "1", int(sys.argv[4])

def step(name):
    rc, wall = (work / f"{name}.rc").read_text().split() if (work / f"{name}.rc").exists() else ("-2", "0")
    log = (work / f"{name}.log").read_text(errors="replace") if (work / f"{name}.log").exists() else ""
    status = {"-1": "not run (dry run)", "0": "ok", "124": "timed out"}.get(rc, "failed")
    cmd = (work / f"{name}.cmd").read_text().strip() if (work / f"{name}.cmd").exists() else None
    return {"status": status, "rc": int(rc), "wall_s": int(wall), "command": cmd, "log_tail": log[-1500:]}, log

def last_json(text):
    for m in reversed(list(re.finditer(r"^\{.*?^\}", text, re.S | re.M))):
        try:
            return json.loads(m.group(0))
        except ValueError:
            continue
    return None

report = {"dry_run": dry, "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t0)), "steps": {}}
for name in ("bootstrap", "env", "bench", "rocket", "eval", "plan", "rehearsal"):
    report["steps"][name], log = step(name)
    if name in ("env", "bench", "plan"):
        report[name] = last_json(log) if name != "env" else (json.loads((work / "env.json").read_text())
                                                             if (work / "env.json").exists() else None)
    if name == "eval":
        m = re.search(r"n=(\d+)", log)
        n = int(m.group(1)) if m else None
        report["eval"] = {"items": n, "items_per_s": round(n / max(report["steps"]["eval"]["wall_s"], 1), 2) if n else None}
    if name == "rocket":
        m = re.search(r"ROCKET: (\w+) = ([\d.]+)%", log)
        report["rocket"] = {"metric": m.group(1), "value_pct": float(m.group(2))} if m else None
mem = [int(x) for x in (work / "gpu_mem.txt").read_text().split()] if (work / "gpu_mem.txt").exists() else []
reh = work / "rehearsal" / "rehearsal.json"
report["rehearsal"] = {
    "summary": json.loads(reh.read_text()) if reh.exists() else None,
    "peak_gpu_mem_used_gb": round(max(mem) / 1024, 2) if mem else None,
    "planned_train_peak_gb": next((s["peak_gb"] for s in (report.get("plan") or {}).get("stages", [])
                                   if s["stage"] == "train"), None),
}
report["total_wall_s"] = int(time.time()) - t0
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text(json.dumps(report, indent=1) + "\n")
print(f"gpu acceptance: {out} ({report['total_wall_s']} s; "
      + ", ".join(f"{k} {v['status']}" for k, v in report["steps"].items()) + ")")
PYEOF
rm -rf "$WORK"
