#!/usr/bin/env bash
# `peri bench` on a tiny random PLM (made here by `peri init`; needs no ../shared): the llama-bench-like table, the
# JSON array (llama-bench's field names plus peak_rss_bytes, and nothing else on stdout), and its refusals.
set -u
command -v python3 >/dev/null || exit 77
P=${PERI_BIN:?}
source "$(dirname "$0")/check_lib.sh"

cfg='{"model_type": "plm", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
      "num_attention_heads": 2, "num_key_value_heads": 2, "kv_lora_rank": 16, "q_lora_rank": null,
      "qk_nope_head_dim": 8, "qk_rope_head_dim": 4, "v_head_dim": 8, "max_position_embeddings": 64,
      "rope_theta": 100000.0, "rms_norm_eps": 1e-6, "hidden_act": "relu2", "tie_word_embeddings": true}'
echo "$cfg" > "$tmp/plm.json"
ok "$P" init --config "$tmp/plm.json" --seed 3 --out "$tmp/m"

# JSON: one object per test, the requested sizes, r samples each, positive speeds, a peak RSS.
ok "$P" bench -m "$tmp/m" -p 8 -n 4 -r 3 -t 2 -d 5 -o json > "$tmp/out.json"
cat > "$tmp/check.py" <<'PY'
import json, sys
a = json.load(open(sys.argv[1]))   # the whole of stdout must be the JSON array
assert isinstance(a, list) and len(a) == 2, a
need = ["model_filename", "n_prompt", "n_gen", "n_depth", "n_threads", "avg_ts", "stddev_ts", "peak_rss_bytes"]
for o in a:
    for k in need:
        assert k in o, k
    assert o["n_threads"] == 2 and o["n_depth"] == 5, o
    assert o["avg_ts"] > 0 and o["stddev_ts"] >= 0 and o["peak_rss_bytes"] > 1 << 20, o
    assert len(o["samples_ts"]) == 3 and abs(sum(o["samples_ts"]) / 3 - o["avg_ts"]) <= 1e-6 * o["avg_ts"], o
assert (a[0]["n_prompt"], a[0]["n_gen"]) == (8, 0) and (a[1]["n_prompt"], a[1]["n_gen"]) == (0, 4), a
PY
ok python3 "$tmp/check.py" "$tmp/out.json"

# The table: a row per test, named as llama-bench names them, then the bandwidth probe and the bound.
ok "$P" bench -m "$tmp/m" -p 6 -n 3 -r 2 -t 1 > "$tmp/out.md"
ok grep -q '^| model | size | threads | test | t/s | peak RSS |$' "$tmp/out.md"
ok grep -Eq '^\| m \| [0-9.]+ GiB \| 1 \| pp6 \| [0-9.]+ ± [0-9.]+ \| [0-9.]+ GiB \|$' "$tmp/out.md"
ok grep -Eq '^\| m \| [0-9.]+ GiB \| 1 \| tg3 \| [0-9.]+ ± [0-9.]+ \| [0-9.]+ GiB \|$' "$tmp/out.md"
ok grep -q '^read bandwidth: ' "$tmp/out.md"
ok grep -Eq '^tg3: [0-9]+% of the bound$' "$tmp/out.md"
"$P" bench -m "$tmp/m" -p 0 -n 2 -r 1 -t 1 -d 3 > "$tmp/out2.md"
ok grep -Eq '\| tg2 @ d3 \|' "$tmp/out2.md"
ok test "$(grep -c '| pp' "$tmp/out2.md")" = 0

# Refusals: a clear message and a non-zero exit.
refuses() {   # refuses PATTERN ARGS...: peri bench ARGS fails and says PATTERN on stderr
    local pat=$1; shift
    ! "$P" bench "$@" > /dev/null 2> "$tmp/err" && grep -q "$pat" "$tmp/err"
}
ok refuses "output formats" -m "$tmp/m" -o xml
ok refuses "nothing to measure" -m "$tmp/m" -p 0 -n 0
ok refuses "exceed the model's context" -m "$tmp/m" -p 60 -d 10
ok refuses "no model" -p 8
finish
