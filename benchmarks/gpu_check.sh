#!/usr/bin/env bash
# The GPU check (issue 19), one prepared script for a lent H100/H200 (../shared/device/README.md),
# 8 minutes in all:
#   1. lesson 12's `default` run (cifar10-darknet, 30 epochs, bs 256) on CIFAR-10-sized
#      generated data (50,000 + 10,000 PNGs), timed whole as a user types it: Ray's start-up,
#      the cold preprocess and MLflow included (target: <= 90 s on one H100-class GPU);
#   2. benchmarks/overhead.py --device cuda for every pipeline, each at its `default`
#      config's model and batch size on generated data of the real shapes, 3 epochs of a
#      bounded sample each (target: every ratio >= 0.95), in the time left.
# It writes one JSON: $OUT/gpu_check.json when $OUT is set (the device machine's), else
# benchmarks/results/gpu_check.json; each pipeline's own JSON lies beside it in overhead/.
#
#   bash ../shared/device/make-kit.sh       # here, once: Ray + MLflow wheels in .devkit/
#   bash benchmarks/gpu_check.sh            # there, carrying .devkit
#   bash benchmarks/gpu_check.sh --smoke    # here, on the CPU: every step, tiny (tests/test_benchmarks.py)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
SMOKE=0
[ "${1:-}" = "--smoke" ] && SMOKE=1
BUDGET=${GPU_CHECK_SECONDS:-480}          # the whole script's wall-clock budget (--smoke: none)
[ $SMOKE = 1 ] && BUDGET=${GPU_CHECK_SECONDS:-100000}
START=$(date +%s)
RESULTS=${OUT:-$ROOT/benchmarks/results}
NAME=gpu_check; [ $SMOKE = 1 ] && NAME=gpu_check_smoke
WORK=$(mktemp -d /tmp/fastray-gpu-check-XXXXXX)
mkdir -p "$RESULTS/overhead"

if [ $SMOKE = 1 ]; then
    PY=${PYTHON:-python}
    DEVICE=cpu; USE_GPU=""; RUN_CONFIG=(--config tiny --epochs 1); IMAGES=300
    OVERHEAD=(--pipeline cifar10-darknet --smoke)
else
    source .devkit/kit-env.sh || exit 1
    PY=python3
    DEVICE=cuda; USE_GPU=--use-gpu; RUN_CONFIG=(--config default); IMAGES=60000
    OVERHEAD=(--pipeline all)
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
$PY -c "import torch, ray, mlflow; print('torch', torch.__version__, 'ray', ray.__version__, 'mlflow', mlflow.__version__)"

# 1. lesson 12's default run, whole (the data generated before the clock starts)
$PY -m pipelines sample-data cifar10 --out "$WORK/cifar10" --size $IMAGES > /dev/null
T0=$(date +%s.%N)
RC=0
( cd "$WORK" && exec $PY -m pipelines run cifar10-darknet --data "$WORK/cifar10" "${RUN_CONFIG[@]}" $USE_GPU \
        --name lesson12 > "$WORK/lesson12.json" 2> "$WORK/lesson12.log" ) || RC=$?
echo "$RC $T0 $(date +%s.%N)" > "$WORK/lesson12.time"
tail -3 "$WORK/lesson12.log" >&2 || true

# 2. every pipeline's overhead, in the time left (each pipeline's JSON is written as it ends)
LEFT=$(( BUDGET - ($(date +%s) - START) - 15 ))
if [ $LEFT -gt 30 ]; then
    timeout --signal=INT --kill-after=10 $LEFT $PY benchmarks/overhead.py --device $DEVICE "${OVERHEAD[@]}" \
        --out "$RESULTS/overhead" 2> "$WORK/overhead.log" || echo "overhead.py ended with $? (see $WORK/overhead.log)" >&2
fi
tail -3 "$WORK/overhead.log" >&2 || true

# 3. one JSON of both
$PY - "$WORK" "$RESULTS" "$NAME" "$DEVICE" "$START" <<'EOF'
import glob, json, os, sys, time
work, results, name, device, start = sys.argv[1:6]
rc, t0, t1 = open(f"{work}/lesson12.time").read().split()
lines = [l for l in open(f"{work}/lesson12.json").read().splitlines() if l.startswith("{")]
run = json.loads(lines[-1]) if lines else {}
suffix = "_smoke" if name.endswith("_smoke") else ""
overhead = {}
for path in sorted(glob.glob(f"{results}/overhead/overhead_*_{device}{suffix}.json")):
    if os.path.getmtime(path) >= float(start):  # this run's only
        r = json.load(open(path))
        overhead[r["pipeline"]] = r
out = {
    "lesson12_default_run": {"exit_code": int(rc), "wall_seconds": round(float(t1) - float(t0), 1),
                             "metrics": run.get("metrics"), "fit_seconds": run.get("fit_seconds"),
                             "error": run.get("error")},
    "overhead": {k: {"ratio": v.get("ratio"), "bare_examples_per_s": v.get("bare_examples_per_s"),
                     "engine_examples_per_s": v.get("engine_examples_per_s"), "bs": v.get("bs"),
                     "error": v.get("error")} for k, v in overhead.items()},
    "device": next((v["device"] for v in overhead.values() if v.get("device")), device),
    "total_seconds": round(time.time() - float(start), 1),
}
text = json.dumps(out, indent=1)
print(text)
open(f"{results}/{name}.json", "w").write(text + "\n")
EOF
rm -rf "$WORK"
