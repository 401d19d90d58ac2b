#!/usr/bin/env bash
# peri classify / tag / qa / logits on task-head checkpoints made by `peri init` with the real PLDR-LLM
# SentencePiece tokenizer (copied from ../shared at test time): the probabilities `classify` prints are the
# softmax of the pooled row `peri logits` writes, `tag` labels every token, `qa` answers with a span of the
# context, and a head command on the wrong kind of model fails clearly.
set -u
: "${PERI_BIN:?}"
shared="${PERI_SHARED_DIR:-}"
tok="$shared/tokenizers/pldr/tokenizer.model"
[ -f "$tok" ] || { echo "cli_heads: $tok not found; skipping"; exit 77; }
py=/usr/bin/python3
"$py" -c 'import json, struct' 2>/dev/null || { echo "cli_heads: no /usr/bin/python3; skipping"; exit 77; }
. "$(dirname "$0")/check_lib.sh"

make_head_models "$tok"

text="The film was wonderful."
"$PERI_BIN" classify -m "$tmp/seq" -p "$text" --json > "$tmp/cls.json"
ids=$("$PERI_BIN" tokenize -m "$tmp/seq" --text "$text")
"$PERI_BIN" logits -m "$tmp/seq" --ids "$ids" --out "$tmp/seq.bin" 2> "$tmp/shape.txt"
ok grep -q '\[1 x 3\]' "$tmp/shape.txt"
ok "$py" - "$tmp/cls.json" "$tmp/seq.bin" <<'PY'
import json, math, struct, sys
res = json.load(open(sys.argv[1]))
raw = open(sys.argv[2], "rb").read()
lg = struct.unpack("<3f", raw)
m = max(lg); e = [math.exp(x - m) for x in lg]; p = [x / sum(e) for x in e]
names = ["negative", "neutral", "positive"]
best = max(range(3), key=lambda i: p[i])
assert res["label"] == names[best], (res, p)
for i, n in enumerate(names):
    assert abs(res["scores"][n] - p[i]) < 1e-5, (res, p)
PY
printf '{"text":"good"}\n{"text":"bad"}\n' > "$tmp/in.jsonl"
ok test "$("$PERI_BIN" classify -m "$tmp/seq" --jsonl "$tmp/in.jsonl" | grep -c '"label"')" = 2

n_tok=$(echo "$ids" | wc -w)
ok test "$("$PERI_BIN" tag -m "$tmp/tok" -p "$text" | wc -l)" = "$n_tok"
ok "$py" -c 'import json,sys; r=json.loads(sys.stdin.read()); assert all(t["label"] in ("O","B-PER","I-PER") for t in r)' \
    < <("$PERI_BIN" tag -m "$tmp/tok" -p "$text" --json)

ctx="Paris is the capital of France and its largest city."
"$PERI_BIN" qa -m "$tmp/qa" --question "What is the capital of France?" --context "$ctx" --json > "$tmp/qa.out"
ok "$py" - "$tmp/qa.out" "$ctx" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
assert r["answer"].strip() and r["answer"].strip() in sys.argv[2], r
assert 0 < r["score"] <= 1 and 0 <= r["start_token"] <= r["end_token"] and r["end_token"] - r["start_token"] < 15, r
PY

# wrong model kind, missing tokenizer: clear errors
"$PERI_BIN" classify -m "$tmp/qa" -p hi > /dev/null 2> "$tmp/err.txt"; rc=$?
ok test "$rc" = 1
ok grep -q "sequence classifier" "$tmp/err.txt"
"$PERI_BIN" logits -m "$tmp/seq" --ids "5 6" --decode-ids "7" --out "$tmp/x.bin" 2> "$tmp/err.txt"; rc=$?
ok test "$rc" = 1
ok grep -q "task head" "$tmp/err.txt"

finish
