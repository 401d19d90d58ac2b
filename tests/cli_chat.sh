#!/usr/bin/env bash
# `peri chat` / `peri run -cnv` on plm-qwen-vocab (the real Qwen2 tokenizer and ChatML template, random
# weights): the rendered prompt ids against the fixture's HF rendering, turns appended to the cache, -sys,
# stop tokens, pipe input, /exit, context truncation, and the message for models without a template.
set -u
S=${PERI_SHARED_DIR:-}
F=$S/fixtures/plm/plm-qwen-vocab
[ -n "$S" ] && [ -d "$F" ] || exit 77
command -v python3 >/dev/null || exit 77
P=${PERI_BIN:?}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fail=0
E=$F/expected.safetensors
st() {   # prints an I32 tensor space-separated, or a U8 tensor as text
    python3 - "$@" <<'EOF'
import json, struct, sys
path, name = sys.argv[1], sys.argv[2]
with open(path, 'rb') as f:
    n = struct.unpack('<Q', f.read(8))[0]
    t = json.loads(f.read(n))[name]
    a, b = t['data_offsets']
    f.seek(8 + n + a)
    data = f.read(b - a)
if t['dtype'] == 'I32':
    print(' '.join(str(v) for v in struct.unpack('<%di' % (len(data) // 4), data)))
else:
    sys.stdout.write(data.decode('utf-8'))
EOF
}
# The ids a "turn N prompt ids (A new, B cached): ..." line of --verbose-prompt lists, and its counts.
turn_ids() { sed -n "s/^turn $2 prompt ids ([0-9]* new, [0-9]* cached): //p" "$1"; }
turn_cached() { sed -n "s/^turn $2 prompt ids ([0-9]* new, \([0-9]*\) cached).*/\1/p" "$1"; }
tok() { "$P" tokenize -m "$F/model-f16.gguf" --text "$1"; }
NL=$'\n'

for M in "$F/model-f16.gguf" "$F"; do
    # Turn 1 (-p hello!): the template's rendering with its default system message, exactly the fixture's
    # prompt (HF jinja rendering, tokenized with special tokens); turn 2 from a pipe: only the new part is fed,
    # after the 20 + 6 tokens already cached.
    printf 'how are you?\n' | "$P" run -m "$M" -cnv -p "hello!" -n 6 --temp 0 --verbose-prompt -t 2 \
        > "$T/out" 2> "$T/err" || { echo "FAIL: chat on $M: $(cat "$T/err")"; fail=1; continue; }
    want=$(st "$E" input_ids)
    [ "$(turn_ids "$T/err" 1)" = "$want" ] || { echo "FAIL: $M turn 1 ids: $(turn_ids "$T/err" 1) vs $want"; fail=1; }
    [ "$(turn_cached "$T/err" 1)" = 0 ] || { echo "FAIL: $M turn 1 should start from an empty cache"; fail=1; }
    want=$(tok "<|im_end|>${NL}<|im_start|>user${NL}how are you?<|im_end|>${NL}<|im_start|>assistant${NL}")
    [ "$(turn_ids "$T/err" 2)" = "$want" ] || { echo "FAIL: $M turn 2 ids: $(turn_ids "$T/err" 2) vs $want"; fail=1; }
    n1=$(echo $(st "$E" input_ids) | wc -w)
    [ "$(turn_cached "$T/err" 2)" = $((n1 + 6)) ] || { echo "FAIL: $M turn 2 cache: $(turn_cached "$T/err" 2)"; fail=1; }
    [ "$(wc -l < "$T/out")" = 2 ] || { echo "FAIL: $M: expected two reply lines: $(cat "$T/out")"; fail=1; }
    # Both end-of-generation tokens are known: <|endoftext|> 151643 and <|im_end|> 151645.
    eog=$(sed -n 's/^end-of-generation ids: //p' "$T/err")
    for id in 151643 151645; do
        case " $eog " in *" $id "*) ;; *) echo "FAIL: $M: $id is not an end-of-generation id ($eog)"; fail=1 ;; esac
    done
done

# The same conversation through `peri chat` gives the same replies (greedy).
printf 'how are you?\n' | "$P" chat -m "$F/model-f16.gguf" -p "hello!" -n 6 --temp 0 -t 2 > "$T/out2" 2>/dev/null
cmp -s "$T/out" "$T/out2" || { echo "FAIL: peri chat and peri run -cnv differ"; fail=1; }

# -sys replaces the default system message; /exit ends before the third line.
printf 'hi\n/exit\nnever sent\n' | "$P" chat -m "$F/model-f16.gguf" -sys "Be brief." -n 3 --temp 0 --verbose-prompt \
    -t 2 > "$T/out" 2> "$T/err"
want=$(tok "<|im_start|>system${NL}Be brief.<|im_end|>${NL}<|im_start|>user${NL}hi<|im_end|>${NL}<|im_start|>assistant${NL}")
[ "$(turn_ids "$T/err" 1)" = "$want" ] || { echo "FAIL: -sys turn ids: $(turn_ids "$T/err" 1) vs $want"; fail=1; }
[ -z "$(turn_ids "$T/err" 2)" ] || { echo "FAIL: /exit did not end the chat"; fail=1; }

# Stop tokens: a copy of the model whose eos is the first token greedy would reply with. The reply is then
# empty, and turn 2 finds exactly the prompt in the cache.
first=$("$P" run -m "$F" --ids "$(st "$E" input_ids)" -n 1 --temp 0 --print-ids -t 2)
mkdir "$T/m"
for f in "$F"/*; do ln -s "$f" "$T/m/"; done
rm "$T/m/config.json"
python3 - "$F/config.json" "$T/m/config.json" "$first" <<'EOF'
import json, sys
c = json.load(open(sys.argv[1])); c['eos_token_id'] = int(sys.argv[3]); json.dump(c, open(sys.argv[2], 'w'))
EOF
printf 'how are you?\n' | "$P" chat -m "$T/m" -p "hello!" -n 6 --temp 0 --verbose-prompt -t 2 > "$T/out" 2> "$T/err"
[ "$(turn_cached "$T/err" 2)" = "$n1" ] || { echo "FAIL: no stop at eos $first: turn 2 cache $(turn_cached "$T/err" 2)"; fail=1; }
[ "$(head -n 1 "$T/out")" = "" ] || { echo "FAIL: the stopped reply is not empty: $(head -n 1 "$T/out")"; fail=1; }

# A context too small for the next turn: the oldest exchange is dropped and the rest processed again.
printf 'how are you?\n' | "$P" chat -m "$F/model-f16.gguf" -p "hello!" -n 8 --ctx 48 --temp 0 --verbose-prompt -t 2 \
    > "$T/out" 2> "$T/err"
grep -q "context full" "$T/err" || { echo "FAIL: no truncation message: $(cat "$T/err")"; fail=1; }
want=$(tok "<|im_start|>system${NL}You are a helpful assistant<|im_end|>${NL}<|im_start|>user${NL}how are you?<|im_end|>${NL}<|im_start|>assistant${NL}")
[ "$(turn_ids "$T/err" 2)" = "$want" ] || { echo "FAIL: truncated turn ids: $(turn_ids "$T/err" 2) vs $want"; fail=1; }
[ "$(turn_cached "$T/err" 2)" = 0 ] || { echo "FAIL: truncation should re-prefill from an empty cache"; fail=1; }

# peri run -p parses special tokens (as llama.cpp) unless --no-special.
prompt=$(st "$E" prompt_text_utf8; printf x); prompt=${prompt%x}
"$P" run -m "$F/model-f16.gguf" -p "$prompt" -n 1 --temp 0 --verbose-prompt -t 2 > /dev/null 2> "$T/err"
[ "$(sed -n 's/^prompt ids ([0-9]*): //p' "$T/err")" = "$(st "$E" input_ids)" ] || { echo "FAIL: run -p special tokens"; fail=1; }
"$P" run -m "$F/model-f16.gguf" -p "$prompt" --no-special -n 1 --temp 0 --verbose-prompt -t 2 > /dev/null 2> "$T/err"
case " $(sed -n 's/^prompt ids ([0-9]*): //p' "$T/err") " in *" 151644 "*) echo "FAIL: --no-special parsed <|im_start|>"; fail=1 ;; esac

# A model without a chat template gets a clear message.
mkdir "$T/nt"
for f in config.json model.safetensors vocab.json merges.txt tokenizer.json; do ln -s "$F/$f" "$T/nt/"; done
if printf 'hi\n' | "$P" chat -m "$T/nt" -n 2 > /dev/null 2> "$T/err"; then echo "FAIL: chat without a template"; fail=1; fi
grep -q "no chat template" "$T/err" || { echo "FAIL: message without a template: $(cat "$T/err")"; fail=1; }

[ $fail = 0 ] && echo "cli_chat: ok"
exit $fail
