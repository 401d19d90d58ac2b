#!/bin/sh
# Training speed of peri against the same PLDR-LLM step in PyTorch (bench/train_torch.py), back to back, on the
# default model's shape (D 256, 4 layers, 8 heads x 32, FFN 680, learner 2 x 2 GLUs of 64, vocabulary 4096),
# batch 8 x 256 tokens, float32.
#   bench/train_speed.sh [PERI] [THREADS] [STEPS]
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PERI=${1:-$ROOT/build-rel/peri}
THREADS=${2:-2}
STEPS=${3:-6}
SHARED=${PERI_SHARED_DIR:-$ROOT/../shared}
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
sed 's/"bfloat16"/"float32"/g' "$ROOT/models/peri-pldr-small/config.json" > "$W/config.json"
"$PERI" init --config "$W/config.json" --seed 1 --out "$W/init" 2>/dev/null
cp "$ROOT/models/peri-pldr-small/tokenizer.model" "$W/init/"
mkdir -p "$W/data" && cp "$SHARED/data/text/tinyshakespeare/input.txt" "$W/data/"
echo "== peri ($PERI, $THREADS threads, $STEPS steps; tokens/s of the whole run so far, step 1 included)"
"$PERI" train -m "$W/init" --data "$W/data" --out "$W/ckpt" --seq 256 --batch 8 --steps 1000 --stop-after "$STEPS" \
    --val-frac 0.01 --val-every 0 -t "$THREADS" 2>&1 | grep "^step" | sed 's/| val [^|]*//' | tail -3
echo "== PyTorch"
/usr/bin/python3 "$ROOT/bench/train_torch.py" "$W/init" --seq 256 --batch 8 --steps "$STEPS" -t "$THREADS"
