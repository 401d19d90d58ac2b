#!/usr/bin/env bash
# Load-time repacking (tensor/repack.h) on a random PLM made here (needs no ../shared) whose Q4_0 rows are whole
# 512-value groups: the logits of a prefill (tiled GEMM) and of decode steps (the n == 1 kernel) with the repacked
# weights against those of the file's layout (--no-repack). The integer block sums are the same; only the order of
# the float additions differs, so they agree to float rounding. On levels without the layout's kernel nothing is
# repacked and the two runs are the same computation. `peri inspect` shows the file's types either way.
# Then the same with F16 weights, whose down projections are transposed at load for the sparse decode
# (models/plm.c, down_proj): with 1 thread a decode step's rows (1 MB) go through the sparse kernel, with 2 the
# threads' halves through the small-matrix one; the prefill through the y = x C GEMM, in float32 where the file's
# layout at avx512fp16 sums in half precision (x rounded to F16): so the two agree to float rounding in exact mode
# (PERI_KERNELS_EXACT=1), and by default the transposed one is as close to exact mode's logits as the file's
# (cmp_ref.py, below). And with Q8_0 weights, whose
# down projections are rearranged into Q8_0_T (tensor/repack.h): decode through the sparse Q8_0_T kernel (x rounded
# to Q8_0 as the integer kernels round it; 2 threads: partial sums), the 12-row prefill through Q8_0 panels and the
# level's Q8_0 kernel. And with Q4_K_M weights (below).
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
# cmp_ref.py A B REF: A's logits are as close to REF's as B's are (mean and largest difference, relative to REF's
# largest logit), up to float rounding. Where a rounding of x (Q8_K, F16) differs between A's and B's kernels, or a
# float-rounding difference flips one Q8_K code, A and B can differ by more than float rounding while both stay
# within the quantization error of REF, the float arithmetic of exact mode; a wrong kernel lands far outside it (a
# wrong scale for Q6_K's high bits: 18 times the mean difference, 19 times the largest).
cat > "$tmp/cmp_ref.py" <<'PY'
import struct, sys
a, b, ref = (struct.unpack("<%df" % (96 * 15), open(p, "rb").read()) for p in sys.argv[1:4])
scale = max(abs(v) for v in ref)
da = [abs(p - q) / scale for p, q in zip(a, ref)]; db = [abs(p - q) / scale for p, q in zip(b, ref)]
ma, mb = sum(da) / len(da), sum(db) / len(db)
assert scale > 0 and ma <= 1.25 * mb + 1e-5 and max(da) <= 1.5 * max(db) + 1e-4, (ma, mb, max(da), max(db))
PY
for ty in f16 q8_0; do
    ok "$P" convert "$tmp/m" -o "$tmp/m-$ty.gguf" --type $ty
    for t in 1 2; do
        for mode in exact default; do
            exact=1; [ $mode = default ] && exact=
            for r in repack no-repack; do
                extra=""; [ $r = no-repack ] && extra=--no-repack
                ok env PERI_KERNELS_EXACT=$exact "$P" logits -m "$tmp/m-$ty.gguf" --ids "$ids" --decode-ids "2 4 6" \
                    -t $t $extra --out "$tmp/$ty-$r-$mode.bin"
            done
        done
        ok python3 "$tmp/cmp.py" "$tmp/$ty-repack-exact.bin" "$tmp/$ty-no-repack-exact.bin"
        if [ $ty = f16 ]; then
            ok python3 "$tmp/cmp_ref.py" "$tmp/$ty-repack-default.bin" "$tmp/$ty-no-repack-default.bin" \
                "$tmp/$ty-no-repack-exact.bin"
        else
            ok python3 "$tmp/cmp.py" "$tmp/$ty-repack-default.bin" "$tmp/$ty-no-repack-default.bin"
        fi
    done
done

# Q4_K_M (4 layers: downs of layers 0-1 Q4_K, 2-3 Q6_K, as llama-quantize's mix gives them): the Q4_K_T / Q6_K_T
# layouts. sparse_down auto measures the activations at load and rearranges a layer only when they are mostly zero:
# on these random weights (about half zero) none; on a copy whose up projections have 90% of their rows zero (so at
# least 90% of the activations are) all four. Both, and --sparse-down on, give the logits of the file's layout: in
# exact mode (PERI_KERNELS_EXACT=1: float activations, the T layouts' float kernels) to float rounding; by default
# (x rounded to Q8_K, as the dense K-quant kernels round it, then the integer T kernels, for the 12-row prefill and
# the decode steps alike) as close to exact mode's logits as the file's layout (cmp_ref.py): a float-rounding
# difference is free to flip one Q8_K code of a later matmul's x, and one flipped in the prefill moves every later
# logit (on avx512, whose K-quant GEMM sums in another order than the T kernels: 3e-3 of the largest on average).
# The query projections are scaled by 1/2 so that attention is less peaked: at full scale float rounding alone moved
# logits by 1e-4 of the largest between two kernel levels.
sed 's/"num_hidden_layers": 2/"num_hidden_layers": 4/' "$tmp/plm.json" > "$tmp/plm4.json"
ok "$P" init --config "$tmp/plm4.json" --seed 7 --out "$tmp/k"
cp "$tmp/m/tokenizer.json" "$tmp/k/"
mkdir -p "$tmp/ks" && cp "$tmp/k/config.json" "$tmp/k/tokenizer.json" "$tmp/ks/"
python3 - "$tmp/k/model.safetensors" "$tmp/ks/model.safetensors" <<'PY'
import array, json, struct, sys
raw = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
head = json.loads(raw[8:8 + n]); out = bytearray(raw); base = 8 + n
tensors = [(name, t, base + t["data_offsets"][0], base + t["data_offsets"][1]) for name, t in head.items()
           if name != "__metadata__"]
for name, t, a, b in tensors:   # k: the query projections halved
    assert t["dtype"] == "F32", t
    if name.endswith("self_attn.q_proj.weight"):
        out[a:b] = array.array("f", (v / 2 for v in array.array("f", raw[a:b]))).tobytes()
open(sys.argv[1], "wb").write(out)
hit = 0
for name, t, a, b in tensors:   # ks: k with 90% of the up projections' rows zero
    if not name.endswith("mlp.up_proj.weight"): continue
    rows, cols = t["shape"]
    for r in range(rows):
        if r % 10: out[a + 4 * cols * r:a + 4 * cols * (r + 1)] = bytes(4 * cols)
    hit += 1
assert hit == 4, hit
open(sys.argv[2], "wb").write(out)
PY
for v in k ks; do
    ok "$P" convert "$tmp/$v" -o "$tmp/$v.gguf" --type q4_k_m
    ok "$P" inspect "$tmp/$v.gguf" > "$tmp/$v-file.txt"
    ok grep -Eq 'blk\.0\.ffn_down\.weight +q4_K ' "$tmp/$v-file.txt"
    ok grep -Eq 'blk\.3\.ffn_down\.weight +q6_K ' "$tmp/$v-file.txt"
    ok "$P" inspect "$tmp/$v.gguf" --repack > "$tmp/$v-auto.txt"
done
ok grep -Eq 'stored by input \(sparse decode\): 0 of 4 layers; activations (4[0-9]|5[0-9])% to' "$tmp/k-auto.txt"
ok grep -Eq 'stored by input \(sparse decode\): 4 of 4 layers; activations (9[0-9]|100)% to' "$tmp/ks-auto.txt"
ok "$P" inspect "$tmp/k.gguf" --repack --sparse-down on > "$tmp/k-on.txt"
ok grep -Eq 'stored by input \(sparse decode\): 4 of 4 layers$' "$tmp/k-on.txt"
ok "$P" inspect "$tmp/ks.gguf" --repack --sparse-down off > "$tmp/ks-off.txt"
ok grep -Eq 'stored by input \(sparse decode\): 0 of 4 layers$' "$tmp/ks-off.txt"
for v in "k on" "ks auto"; do
    set -- $v
    for t in 1 2; do
        for mode in exact default; do
            exact=1; [ $mode = default ] && exact=
            ok env PERI_KERNELS_EXACT=$exact "$P" logits -m "$tmp/$1.gguf" --ids "$ids" --decode-ids "2 4 6" -t $t \
                --sparse-down $2 --out "$tmp/$1-$2-$mode.bin"
            ok env PERI_KERNELS_EXACT=$exact "$P" logits -m "$tmp/$1.gguf" --ids "$ids" --decode-ids "2 4 6" -t $t \
                --no-repack --out "$tmp/$1-file-$mode.bin"
        done
        ok python3 "$tmp/cmp.py" "$tmp/$1-$2-exact.bin" "$tmp/$1-file-exact.bin"
        ok python3 "$tmp/cmp_ref.py" "$tmp/$1-$2-default.bin" "$tmp/$1-file-default.bin" "$tmp/$1-file-exact.bin"
    done
done
"$P" logits -m "$tmp/k.gguf" --ids 1 --sparse-down sometimes 2> "$tmp/err.txt"
ok test $? -ne 0
ok grep -q -- '--sparse-down wants auto, on or off, not "sometimes"' "$tmp/err.txt"
# Every command that loads a model takes the load options (tools/peri/cli.c, cli_model_option).
for c in "run -p ab" "chat -p ab" "serve" "eval --task arc_easy --data $tmp" "perplexity -f $tmp/plm.json" "bench"; do
    "$P" $c -m "$tmp/k.gguf" --sparse-down never 2> "$tmp/err.txt"
    ok test $? -ne 0
    ok grep -q -- '--sparse-down wants auto, on or off, not "never"' "$tmp/err.txt"
done
ok "$P" run -m "$tmp/ks.gguf" -p ab -n 4 --temp 0 --print-ids --sparse-down off > "$tmp/g-off.txt"
ok "$P" run -m "$tmp/ks.gguf" -p ab -n 4 --temp 0 --print-ids --sparse-down off --no-mmap > "$tmp/g-nommap.txt"
ok cmp "$tmp/g-off.txt" "$tmp/g-nommap.txt"
ok "$P" run -m "$tmp/ks.gguf" -p ab -n 4 --temp 0 --print-ids --no-repack > "$tmp/g-file.txt"
ok cmp "$tmp/g-off.txt" "$tmp/g-file.txt"
ok "$P" perplexity -m "$tmp/ks.gguf" -f "$tmp/plm.json" --ctx 16 --sparse-down on --no-mmap > "$tmp/ppl.txt"
finish
