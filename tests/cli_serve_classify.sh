#!/usr/bin/env bash
# `peri serve` POST /v1/classify on 127.0.0.1 with a sequence classifier made by `peri init` and the real PLDR-LLM
# SentencePiece tokenizer (copied from ../shared): the scores equal `peri classify --json` for a text, a list of
# texts (in order) and token ids; ids ending in padding pool the rightmost non-pad row (as `peri logits`); a
# multi-label model scores with sigmoids (and, started without prompt logits, refuses ids ending in padding); a
# language model answers 400 on /v1/classify, a classifier 400 on the completion endpoints; malformed inputs
# give 400 and the server keeps serving.
set -u
R=$(cd "$(dirname "$0")/.." && pwd)
S=${PERI_SHARED_DIR:-}
tok="$S/tokenizers/pldr/tokenizer.model"
[ -n "$S" ] && [ -f "$tok" ] || { echo "skip: no $tok"; exit 77; }
command -v curl >/dev/null && command -v python3 >/dev/null || exit 77
SERVE_DEFAULTS=(--host 127.0.0.1 --port 0 -t 2 -np 2 --ctx 64 -q)
ERROR_CHECK='e["message"] and e["type"] == "invalid_request_error" or e["code"] >= 500'
. "$(dirname "$0")/serve_lib.sh"

# A larger initializer_range than HF's 0.02 keeps the random head's probabilities apart from uniform, so that
# a wrong row or a wrong order of results shows.
base='"model_type":"pldrllm","vocab_size":32000,"hidden_size":32,"num_hidden_layers":1,"num_attention_heads":2,"head_dim":16,"intermediate_size":48,"A_dff":8,"num_reslayerA":1,"max_position_embeddings":64,"pad_token_id":0,"initializer_range":0.5'
labels='"id2label":{"0":"negative","1":"neutral","2":"positive"}'
echo "{\"architectures\":[\"PldrllmForSequenceClassification\"],$base,$labels}" > "$T/cls.json"
echo "{\"architectures\":[\"PldrllmForSequenceClassification\"],$base,$labels,\"problem_type\":\"multi_label_classification\"}" > "$T/ml.json"
for k in cls ml; do
    "$P" init --config "$T/$k.json" --seed 7 --out "$T/$k" >/dev/null 2>&1 && cp "$tok" "$T/$k/" || { bad "peri init $k"; exit 1; }
done
"$P" init --config "$R/examples/pldr-small.json" --seed 3 --out "$T/lm" >/dev/null 2>&1 || { bad "peri init lm"; exit 1; }

texts=("The film was wonderful." "A dull, tedious evening." "ok")
for i in 0 1 2; do "$P" classify -m "$T/cls" -p "${texts[$i]}" --json > "$T/want$i.json" || bad "peri classify '${texts[$i]}'"; done
ids=$("$P" tokenize -m "$T/cls" --text "${texts[0]}" | tail -n1)
ids_json=$(printf '%s' "$ids" | tr ' ' ',')
# The pooled row of ids with trailing padding (pad id 0) is the last real token's, which `peri logits` writes
# (the padding still goes through the model: PLDR-LLM's G depends on the whole input).
"$P" logits -m "$T/cls" --ids "$ids 0 0" --out "$T/padded.f32" >/dev/null 2>&1 || bad "peri logits with padding"

# compare RESPONSE WANT_FILES...: data[i] has the label and scores of WANT_FILES[i] (within 1e-5).
compare() {
    python3 - "$@" <<'EOF'
import json, sys
d = json.loads(sys.argv[1]); wants = [json.load(open(f)) for f in sys.argv[2:]]
assert d['object'] == 'list' and d['model'] == 'cls' and len(d['data']) == len(wants), d
for i, (r, w) in enumerate(zip(d['data'], wants)):
    assert r['index'] == i and len(r['logits']) == 3, r
    assert r['label'] == w['label'] and abs(r['score'] - w['score']) < 1e-5, (r, w)
    assert set(r['scores']) == set(w['scores']), (r, w)
    for k, v in w['scores'].items(): assert abs(r['scores'][k] - v) < 1e-5, (k, r, w)
assert d['usage']['prompt_tokens'] == d['usage']['total_tokens'] == sum(r['n_tokens'] for r in d['data']) > 0, d
EOF
}

start_server -m "$T/cls"
out=$(req POST /v1/classify "{\"input\":\"${texts[0]}\"}")
[ "$(printf '%s' "$out" | tail -n1)" = 200 ] && compare "$(printf '%s' "$out" | body)" "$T/want0.json" \
    && ok "a string equals peri classify" || bad "string: $out"
out=$(req POST /v1/classify "{\"input\":[\"${texts[0]}\",\"${texts[1]}\",\"${texts[2]}\"],\"model\":\"cls\"}")
[ "$(printf '%s' "$out" | tail -n1)" = 200 ] && compare "$(printf '%s' "$out" | body)" "$T/want0.json" "$T/want1.json" "$T/want2.json" \
    && ok "a list of strings: one result each, in order" || bad "list of strings: $out"
out=$(req POST /v1/classify "{\"input\":[$ids_json]}")
[ "$(printf '%s' "$out" | tail -n1)" = 200 ] && compare "$(printf '%s' "$out" | body)" "$T/want0.json" \
    && ok "token ids equal peri classify" || bad "token ids: $out"
out=$(req POST /v1/classify "{\"input\":[[$ids_json],[$ids_json,0,0]]}")
printf '%s' "$out" | body | python3 -c '
import json, struct, sys
d = json.load(sys.stdin)["data"]; want = struct.unpack("<3f", open(sys.argv[1], "rb").read())
assert len(d) == 2 and d[1]["n_tokens"] == d[0]["n_tokens"] + 2, d
assert all(abs(a - b) < 1e-5 for a, b in zip(d[1]["logits"], want)), (d[1]["logits"], want)
' "$T/padded.f32" && ok "ids ending in padding pool the last real token (peri logits)" || bad "padded ids: $out"
out=$(req GET /v1/models)
printf '%s' "$out" | body | python3 -c 'import json,sys; m=json.load(sys.stdin)["data"][0]["meta"]; assert m["head"]=="sequence_classification" and m["n_outputs"]==3 and m["n_vocab"]==32000 and m["tokenizer"], m' \
    && ok "models reports the head" || bad "models: $out"
out=$(req POST /tokenize "{\"content\":\"${texts[0]}\"}")
[ "$(printf '%s' "$out" | body | python3 -c 'import json,sys; print(" ".join(map(str, json.load(sys.stdin)["tokens"])))')" = "$ids" ] \
    && ok "tokenize works with a classifier" || bad "tokenize: $out"
req POST /v1/completions '{"prompt":"hello","max_tokens":4}' | expect 400 "completions on a classifier"
req POST /v1/chat/completions '{"messages":[{"role":"user","content":"hi"}]}' | expect 400 "chat completions on a classifier"
req POST /v1/classify '{"input":[]}' | expect 400 "empty input list"
req POST /v1/classify '{}' | expect 400 "no input"
req POST /v1/classify '{"input":5}' | expect 400 "input a number"
req POST /v1/classify '{"input":{"text":"a"}}' | expect 400 "input an object"
req POST /v1/classify '{"input":["a",3]}' | expect 400 "a list mixing strings and numbers"
req POST /v1/classify '{"input":[1,"a"]}' | expect 400 "token ids mixed with a string"
req POST /v1/classify '{"input":[[1,2],[]]}' | expect 400 "an empty token list"
req POST /v1/classify '{"input":""}' | expect 400 "an empty string"
req POST /v1/classify '{"input":[1.5]}' | expect 400 "a fractional token id"
req POST /v1/classify '{"input":[40000]}' | expect 400 "a token id outside the vocabulary"
long=$(python3 -c 'print(",".join(["7"] * 100))')
req POST /v1/classify "{\"input\":[$long]}" | expect 400 "input longer than the context"
req POST /v1/classify '[1]' | expect 400 "body not an object"
req GET /v1/classify | expect 405 "GET /v1/classify"
out=$(req POST /v1/classify "{\"input\":\"${texts[2]}\"}")
[ "$(printf '%s' "$out" | tail -n1)" = 200 ] && compare "$(printf '%s' "$out" | body)" "$T/want2.json" \
    && ok "still serving after the errors" || bad "after errors: $out"
stop_server

# Multi-label: sigmoid scores, as peri classify. Without prompt logits, ids ending in padding are refused.
"$P" classify -m "$T/ml" -p "${texts[1]}" --json > "$T/want_ml.json" || bad "peri classify multi-label"
start_server -m "$T/ml" --model-name cls --no-prompt-logprobs
req POST /v1/classify "{\"input\":[$ids_json,0]}" | expect 501 "trailing padding without prompt logits"
out=$(req POST /v1/classify "{\"input\":\"${texts[1]}\"}")
[ "$(printf '%s' "$out" | tail -n1)" = 200 ] && compare "$(printf '%s' "$out" | body)" "$T/want_ml.json" \
    && ok "multi-label scores equal peri classify (sigmoid)" || bad "multi-label: $out"
stop_server

# A language model has no classification head.
start_server -m "$T/lm"
req POST /v1/classify '{"input":[1,2,3]}' | expect 400 "classify on a language model"
out=$(req POST /v1/classify '{"input":[1,2,3]}')
printf '%s' "$out" | grep -q 'no classification head' && ok "the error names the missing head" || bad "LM error: $out"
req POST /v1/completions '{"prompt":[1,2],"max_tokens":2}' | expect 200 "completions still work on a language model"
stop_server
exit $fail
