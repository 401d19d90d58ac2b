# Shared helpers of the cli_*.sh tests that count checks (sourced, not a test itself): a temporary directory tmp,
# removed on exit; ok CMD... runs a check and counts it; finish prints the counts and fails if any check did.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
pass=0 fail=0
ok() { if "$@"; then pass=$((pass+1)); else fail=$((fail+1)); echo "FAILED: $*"; fi; }
finish() {
    echo "$pass passed, $fail failed"
    [ "$fail" -eq 0 ]
}

# make_head_models TOKENIZER: seq, tok and qa task-head checkpoints in $tmp (a sequence classifier with labels
# negative/neutral/positive, a token classifier O/B-PER/I-PER and an extractive QA model, tiny PLDR-LLMs made by
# `peri init` with the given SentencePiece model copied in).
make_head_models() {
    local base='"model_type":"pldrllm","vocab_size":32000,"hidden_size":32,"num_hidden_layers":1,"num_attention_heads":2,"head_dim":16,"intermediate_size":48,"A_dff":8,"num_reslayerA":1,"max_position_embeddings":64,"pad_token_id":0'
    echo "{\"architectures\":[\"PldrllmForSequenceClassification\"],$base,\"id2label\":{\"0\":\"negative\",\"1\":\"neutral\",\"2\":\"positive\"}}" > "$tmp/seq.json"
    echo "{\"architectures\":[\"PldrllmForTokenClassification\"],$base,\"id2label\":{\"0\":\"O\",\"1\":\"B-PER\",\"2\":\"I-PER\"}}" > "$tmp/tok.json"
    echo "{\"architectures\":[\"PldrllmForQuestionAnswering\"],$base}" > "$tmp/qa.json"
    local k
    for k in seq tok qa; do
        "$PERI_BIN" init --config "$tmp/$k.json" --seed 5 --out "$tmp/$k" 2>/dev/null && cp "$1" "$tmp/$k/"
        ok test -f "$tmp/$k/model.safetensors"
    done
}
