#!/usr/bin/env bash
# Train the latent proxy on one CUDA GPU: the autoencoder (if missing), the elastic supernet
# (one process; with several GPUs run it under `torchrun --nproc-per-node N -m hwnas.cli train`),
# then the stand-alone sub-DiTs of benchmarks/rank_fidelity.py, then score the presets.
#
#   benchmarks/gpu_proxy.sh OUT_DIR [WALL_S]
#
# Each run stops with a checkpoint after WALL_S seconds of training (default 420) if it has not
# reached its steps, and is resumable (`hwnas train ... --resume`, `rank_fidelity.py train`).
# The supernet continues from the shipped checkpoint's weights (INIT_FROM, default
# checkpoints/shapes-latent; INIT_FROM= starts from scratch).
# Steps, batch size and parallelism come from SUPERNET_STEPS, STANDALONE_STEPS, BATCH_SIZE,
# PARALLEL (stand-alone runs at a time, default 2).
#
# Measured on one H200 (2026-11-30): these models are launch-bound (~16k kernels per forward and
# backward of the largest sub-DiT). The supernet alone ran 1.7 steps/s at batch 256; 14 processes
# sharing the GPU (it time-slices between processes) reached 100-400 steps each in 330 s, the
# supernet fewer than 100. Run few processes at a time.
set -euo pipefail
out=${1:?usage: gpu_proxy.sh OUT_DIR [WALL_S]}
wall=${2:-420}
exp=${EXPERIMENT:-experiments/shapes-latent.toml}
py=${PYTHON:-python3}
device=${DEVICE:-cuda}
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
mkdir -p "$out"
started=$(date +%s)

# the autoencoder, unless the experiment's VAE folder exists already
vae_dir=$($py -c "import sys; from pathlib import Path; from hwnas.model.vae import experiment_vae_path; print(experiment_vae_path(Path(sys.argv[1]).read_text()))" "$exp")
if [ ! -f "$vae_dir/config.json" ]; then
  $py -m hwnas.cli vae train --experiment "$exp" --out "$vae_dir" --steps "${VAE_STEPS:-3000}" \
      --batch-size 64 --device "$device" --threads 4 | tee "$out/vae_train.json"
fi

# the encoded training set, made once and shared by every run
$py - "$exp" "$out/cache" <<'PY'
import sys, time
from pathlib import Path
import torch
from hwnas.space import load_space
from hwnas.train.config import load_train_config
from hwnas.train.loop import training_set
from hwnas.train.supernet import space_vae
t0 = time.perf_counter()
space, tc = load_space(sys.argv[1]), load_train_config(sys.argv[1])
vae = space_vae(space, Path(sys.argv[1]).read_text())
vae.model.to("cuda" if torch.cuda.is_available() else "cpu")
x, _ = training_set(space, tc, vae=vae, cache_dir=Path(sys.argv[2]))
print(f"training set {tuple(x.shape)} encoded in {time.perf_counter() - t0:.1f} s", flush=True)
PY

# a fresh run starts from the shipped checkpoint's weights (--init-from) unless INIT_FROM is empty
resume=(--init-from "${INIT_FROM-checkpoints/shapes-latent}")
[ -z "${INIT_FROM-checkpoints/shapes-latent}" ] && resume=()
[ -f "$out/supernet/train_state.pt" ] && resume=(--resume)
$py -m hwnas.cli train --experiment "$exp" --out "$out/supernet" "${resume[@]}" \
    --steps "${SUPERNET_STEPS:-3000}" --batch-size "${BATCH_SIZE:-256}" --max-wall-s "$wall" \
    --cache-dir "$out/cache" --threads 1 --quiet 2>&1 | tee "$out/supernet.log" \
  || echo "supernet run failed: see $out/supernet.log"
$py benchmarks/rank_fidelity.py train --experiment "$exp" --runs "$out/standalone" \
    --parallel "${PARALLEL:-2}" --steps "${STANDALONE_STEPS:-1500}" --batch-size "${BATCH_SIZE:-256}" \
    --max-wall-s "$wall" --cache-dir "$out/cache" | tee "$out/standalone.log" || true
echo "training done after $(( $(date +%s) - started )) s"

for c in smallest tiny small full largest; do
  $py -m hwnas.cli eval --checkpoint "$out/supernet" --config $c --metric compositional --n "${EVAL_N:-100}" \
      --steps "${EVAL_STEPS:-28}" --device "$device" --json > "$out/eval-$c.json" 2> "$out/eval-$c.err" &
done
wait
for c in smallest tiny small full largest; do
  $py -c "import json,sys; r=json.load(open(sys.argv[1])); print(sys.argv[2], round(r['value'],3), r['per_category'])" \
      "$out/eval-$c.json" $c || { echo "eval $c failed:"; tail -n 3 "$out/eval-$c.err"; }
done
echo "all done after $(( $(date +%s) - started )) s"
