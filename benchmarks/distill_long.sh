#!/usr/bin/env bash
# Long distillations of one search pick, side by side: K-DMD, DMD-only, KD-only (student lr 5e-5)
# and K-DMD at lr 2e-4, each its own `hwnas distill` process (one GPU shared, or the CPU), all
# stopped after WALL_S seconds. Every run keeps its last checkpoint (model.json records the step
# it reached; distill_log.csv the wall time of every update). Score them afterwards with
#   python benchmarks/distill.py --students OUT_DIR --run RUN_DIR --n 346
#
# usage: benchmarks/distill_long.sh RUN_DIR OUT_DIR [WALL_S=360] [BATCH=128] [PYTHON=python]
set -uo pipefail
run=${1:?usage: distill_long.sh RUN_DIR OUT_DIR [WALL_S] [BATCH] [PYTHON]}
out=${2:?usage: distill_long.sh RUN_DIR OUT_DIR [WALL_S] [BATCH] [PYTHON]}
wall=${3:-360}
batch=${4:-128}
py=${5:-python}
mkdir -p "$out"
variants=("kdmd --lr 5e-5" "dmd --lr 5e-5" "kd --lr 5e-5" "kdmd --lr 2e-4")
names=(kdmd dmd kd kdmd-lr2e-4)
for i in "${!variants[@]}"; do
    read -r mode lr_flag lr <<<"${variants[$i]}"
    # A run killed between checkpoints keeps the previous one (saves are atomic).
    timeout --kill-after=30 "$wall" "$py" -m hwnas.cli distill --run "$run" --pick best \
        --mode "$mode" "$lr_flag" "$lr" --batch-size "$batch" --steps 100000 --quiet \
        --out "$out/${names[$i]}" >"$out/${names[$i]}.log" 2>&1 &
done
wait
for name in "${names[@]}"; do
    step=$("$py" -c "import json,sys; print(json.load(open(sys.argv[1]))['distill']['step'])" \
        "$out/$name/model.json" 2>/dev/null || echo "none")
    echo "$name: last checkpoint at step $step"
    tail -n 3 "$out/$name.log"
done
