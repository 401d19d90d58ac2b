#!/bin/sh
# Reproduces models/peri-pldr-small, peri's built-in default model: data, tokenizer, training, BF16 packaging.
#
#   bench/train_default.sh [BUILD_DIR] [WORK_DIR]        (default build-rel, BUILD_DIR/default-model)
#   STAGE=package bench/train_default.sh ...             only convert WORK_DIR/ckpt into models/
#   STAGE=resume STEPS=N bench/train_default.sh ...      continue WORK_DIR/ckpt to N steps (the schedule is
#                                                        recomputed for N), then package
#
# Needs a Release build of peri, Debian's `sentencepiece` package (spm_train) and /usr/bin/python3 with numpy.
# Data: ../shared/data/text (Shakespeare, from karpathy/char-rnn, and Natsume Soseki's Botchan in the
# Project Gutenberg translation; both public domain). Botchan's Project Gutenberg header and footer are
# removed, as are its BOM and CR line ends.
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${1:-$ROOT/build-rel}
WORK=${2:-$BUILD/default-model}
SHARED=${PERI_SHARED_DIR:-$ROOT/../shared}
PERI=$BUILD/peri
OUT=$ROOT/models/peri-pldr-small
STAGE=${STAGE:-all}
STEPS=${STEPS:-560}
THREADS=${THREADS:-2}

[ -x "$PERI" ] || { echo "no peri binary at $PERI (build with -DCMAKE_BUILD_TYPE=Release)" >&2; exit 1; }
mkdir -p "$WORK/data" "$WORK/init"

if [ "$STAGE" = all ]; then
    # 1. Data: one document per file; peri train ends each with [END] and packs 257-token chunks.
    cp "$SHARED/data/text/tinyshakespeare/input.txt" "$WORK/data/shakespeare.txt"
    chmod u+w "$WORK/data/shakespeare.txt"
    sed '1s/^\xEF\xBB\xBF//' "$SHARED/data/text/botchan.txt" | tr -d '\r' |
        awk '/^\*\*\* START OF/{on=1;next} /^\*\*\* END OF/{on=0} /^Produced by|^End of Project Gutenberg/{next} on' \
        > "$WORK/data/botchan.txt"

    # 2. Tokenizer: SentencePiece unigram, 4096 pieces, with PLDR-LLM's control ids. The normalization is
    # NFKC without the NMT rules, because nmt_nfkc turns newlines into spaces and the model could then never
    # print a line break; a newline is the byte piece <0x0A> (byte_fallback), as in Llama's tokenizer.
    spm_train --input="$WORK/data/shakespeare.txt,$WORK/data/botchan.txt" --model_prefix="$WORK/tokenizer" \
        --model_type=unigram --vocab_size=4096 --character_coverage=1.0 --byte_fallback=true \
        --split_digits=true --normalization_rule_name=nfkc \
        --pad_id=0 --unk_id=1 --bos_id=2 --eos_id=3 \
        --pad_piece='[PAD]' --unk_piece='[UNK]' --bos_piece='[START]' --eos_piece='[END]' \
        --max_sentence_length=16384 --num_threads=1 --minloglevel=1

    # 3. A new model: D 256, 4 layers, 8 heads x 32, FFN 680, learner 2 x 2 GLUs of width 64, context 256.
    cp "$ROOT/models/peri-pldr-small/config.json" "$WORK/init/config.json"
    sed -i 's/"dtype": "bfloat16"/"dtype": "float32"/; s/"torch_dtype": "bfloat16"/"torch_dtype": "float32"/' \
        "$WORK/init/config.json"
    "$PERI" init --config "$WORK/init/config.json" --seed 1 --out "$WORK/init"
    cp "$WORK/tokenizer.model" "$ROOT/models/peri-pldr-small/tokenizer_config.json" "$WORK/init/"

    # 4. Training: AdamW, linear warmup + cosine to lr/10, clipping by value (PLDR recipe) and by norm,
    # 5% of the chunks (the end of the Shakespeare file) held out.
    RESUME=
fi
if [ "$STAGE" = resume ]; then RESUME="--resume $WORK/ckpt"; fi
if [ "$STAGE" = all ] || [ "$STAGE" = resume ]; then
    # shellcheck disable=SC2086
    "$PERI" train -m "$WORK/init" $RESUME --data "$WORK/data" --out "$WORK/ckpt" \
        --seq 256 --batch 8 --accum 1 --steps "$STEPS" --lr 1e-3 --min-lr 1e-4 --sched cosine --warmup 40 \
        --beta1 0.9 --beta2 0.95 --eps 1e-8 --wd 0.1 --clip-value 1.0 --clip-norm 1.0 \
        --val-frac 0.05 --val-every 50 --save-every 50 --log-every 10 --seed 1 -t "$THREADS"
fi

# 5. Package: weights in BF16 (round to nearest even), config and tokenizer next to them.
/usr/bin/python3 - "$WORK/ckpt/model.safetensors" "$OUT/model.safetensors" <<'EOF'
import json, struct, sys
import numpy as np
src, dst = sys.argv[1], sys.argv[2]
with open(src, "rb") as f:
    n = struct.unpack("<Q", f.read(8))[0]
    hdr = json.loads(f.read(n))
    data = f.read()
meta = hdr.pop("__metadata__", None)
out_hdr, blobs, off = {}, [], 0
for name in sorted(hdr):
    t = hdr[name]
    assert t["dtype"] == "F32", name
    a, b = t["data_offsets"]
    x = np.frombuffer(data[a:b], dtype="<u4").astype(np.uint64)
    bf = ((x + 0x7FFF + ((x >> 16) & 1)) >> 16).astype("<u2")
    blob = bf.tobytes()
    out_hdr[name] = {"dtype": "BF16", "shape": t["shape"], "data_offsets": [off, off + len(blob)]}
    blobs.append(blob)
    off += len(blob)
out_hdr["__metadata__"] = {"format": "pt"}
h = json.dumps(out_hdr, separators=(",", ":")).encode()
h += b" " * ((8 - len(h) % 8) % 8)
with open(dst, "wb") as f:
    f.write(struct.pack("<Q", len(h)))
    f.write(h)
    for blob in blobs:
        f.write(blob)
EOF
cp "$WORK/tokenizer.model" "$OUT/tokenizer.model"
cp "$WORK/ckpt/loss.svg" "$OUT/loss.svg" 2>/dev/null || true
echo "wrote $OUT"
