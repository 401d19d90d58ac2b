#!/usr/bin/env bash
# Load-time repacking (tensor/repack.h) on a random PLM made here (needs no ../shared) whose Q4_0 rows are whole
# 512-value groups: the logits of a prefill (tiled GEMM) and of decode steps (the n == 1 kernel) with the repacked
# weights against those of the file's layout (--no-repack). The integer block sums are the same; only the order of
# the float additions differs, so they agree to float rounding. On levels without the layout's kernel nothing is
# repacked and the two runs are the same computation. `peri inspect` shows the file's types either way.
# Then the same with F16 weights, whose down projections are transposed at load for the sparse decode
# (models/plm.c, down_proj): with 1 thread a decode step's rows (1 MB) go through the sparse kernel, with 2 the
# threads' halves through the small-matrix one; the prefill through the y = x C GEMM. And with Q8_0 weights, whose
# down projections are rearranged into Q8_0_T (tensor/repack.h): decode through the sparse Q8_0_T kernel (x rounded
# to Q8_0 as the integer kernels round it; 2 threads: partial sums), the 12-row prefill through Q8_0 panels and the
# level's Q8_0 kernel.
set -u
command -v python3 >/dev/null || exit 77
P=${PERI_BIN:?}
source "$(dirname "$0")/check_lib.sh"

cfg='{"model_type": "plm", "vocab_size": 96, "hidden_size": 512, "intermediate_size": 1024, "num_hidden_layers": 2,
      "num_attention_heads": 2, "num_key_value_heads": 2, "kv_lora_rank": 512, "q_lora_rank": null,
      "qk_nope_head_dim": 64, "qk_rope_head_dim": 32, "v_head_dim": 64, "max_position_embeddings": 64,
      "rope_theta": 100000.0, "rms_norm_eps": 1e-6, "hidden_act": "relu2", "tie_word_embeddings": true}'
echo "$cfg" > "$tmp/plm.json"
ok "$P" init --config "$tmp/plm.json" --seed 5 --out "$tmp/m"
# the converter wants a byte-level BPE vocabulary: printable ASCII (as byte-level BPE spells it) plus 2 bytes
python3 - "$tmp/m/tokenizer.json" <<'PY'
import json, sys
vocab = {chr(c): c - 33 for c in range(33, 127)}
vocab["\u0100"], vocab["\u0101"] = 94, 95
json.dump({"version": "1.0", "added_tokens": [], "model": {"type": "BPE", "vocab": vocab, "merges": []}},
          open(sys.argv[1], "w"))
PY
ok "$P" convert "$tmp/m" -o "$tmp/m.gguf" --type q4_0
ok "$P" inspect -m "$tmp/m.gguf" > "$tmp/inspect.txt"
ok grep -Eq 'blk\.0\.ffn_up\.weight +q4_0 ' "$tmp/inspect.txt"
ids="1 5 9 13 17 21 25 29 33 37 41 45"
for r in repack no-repack; do
    extra=""; [ $r = no-repack ] && extra=--no-repack
    ok "$P" logits -m "$tmp/m.gguf" --ids "$ids" --decode-ids "2 4 6" -t 2 $extra --out "$tmp/$r.bin"
done
cat > "$tmp/cmp.py" <<'PY'
import struct, sys
a = open(sys.argv[1], "rb").read(); b = open(sys.argv[2], "rb").read()
assert len(a) == len(b) == 4 * 96 * 15, (len(a), len(b))
x = struct.unpack("<%df" % (len(a) // 4), a); y = struct.unpack("<%df" % (len(b) // 4), b)
scale = max(abs(v) for v in y)
worst = max(abs(p - q) for p, q in zip(x, y))
assert scale > 0 and worst <= 1e-4 * scale, (worst, scale)
PY
ok python3 "$tmp/cmp.py" "$tmp/repack.bin" "$tmp/no-repack.bin"
for ty in f16 q8_0; do
    ok "$P" convert "$tmp/m" -o "$tmp/m-$ty.gguf" --type $ty
    for t in 1 2; do
        for r in repack no-repack; do
            extra=""; [ $r = no-repack ] && extra=--no-repack
            ok "$P" logits -m "$tmp/m-$ty.gguf" --ids "$ids" --decode-ids "2 4 6" -t $t $extra --out "$tmp/$ty-$r.bin"
        done
        ok python3 "$tmp/cmp.py" "$tmp/$ty-repack.bin" "$tmp/$ty-no-repack.bin"
    done
done
finish
