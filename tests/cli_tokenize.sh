#!/usr/bin/env bash
# `peri tokenize --jsonl` / `peri detokenize` against the shared vectors: stdout must be exactly the ids.
set -u
S=${PERI_SHARED_DIR:-}
[ -n "$S" ] && [ -d "$S/tokenizers/tests" ] || exit 77
command -v python3 >/dev/null || exit 77
P=${PERI_BIN:?}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fail=0
check() {   # model jsonl
    python3 -c 'import json,sys
for l in open(sys.argv[1]):
    print(" ".join(str(i) for i in json.loads(l)["ids"]))' "$2" > "$T/want"
    if ! "$P" tokenize -m "$1" --jsonl "$2" > "$T/got"; then echo "FAIL: peri tokenize -m $1 --jsonl $2"; fail=1; return; fi
    if ! cmp -s "$T/want" "$T/got"; then echo "FAIL: ids differ for $1 $2"; diff "$T/want" "$T/got" | head; fail=1; fi
}
check "$S/tokenizers/qwen2" "$S/tokenizers/tests/qwen2.jsonl"
check "$S/fixtures/plm/plm-qwen-vocab/model-f16.gguf" "$S/tokenizers/tests/qwen2.jsonl"
check "$S/tokenizers/pldr" "$S/tokenizers/tests/pldr.jsonl"
out=$("$P" detokenize -m "$S/tokenizers/pldr/tokenizer.model" --ids "5273 356 330 264 13967 6971 262")
[ "$out" = "Tell me about the french revolution." ] || { echo "FAIL: detokenize gave '$out'"; fail=1; }
if "$P" tokenize -m "$T/none" --text x 2>/dev/null; then echo "FAIL: a missing tokenizer must exit 1"; fail=1; fi
[ $fail = 0 ] && echo "cli_tokenize: ok"
exit $fail
