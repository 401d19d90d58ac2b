#!/usr/bin/env bash
# `peri logits` / `peri run` / `peri inspect` on the PLM fixtures: logits and greedy ids against the
# llama.cpp references in expected.safetensors, in both cache modes and both cache types.
set -u
S=${PERI_SHARED_DIR:-}
F=$S/fixtures/plm
[ -n "$S" ] && [ -d "$F/plm-tiny" ] || exit 77
command -v python3 >/dev/null || exit 77
P=${PERI_BIN:?}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fail=0

# Prints an expected tensor of a safetensors file: ids space-separated, U8 as text; or writes F32 to a file.
cat > "$T/st.py" <<'EOF'
import json, struct, sys
path, name = sys.argv[1], sys.argv[2]
with open(path, 'rb') as f:
    n = struct.unpack('<Q', f.read(8))[0]
    hdr = json.loads(f.read(n))
    t = hdr[name]
    a, b = t['data_offsets']
    f.seek(8 + n + a)
    data = f.read(b - a)
if t['dtype'] == 'I32':
    print(' '.join(str(v) for v in struct.unpack('<%di' % (len(data) // 4), data)))
elif t['dtype'] == 'U8':
    sys.stdout.write(data.decode('utf-8'))
else:
    open(sys.argv[3], 'ab').write(data)
EOF
# max |a - b| of two float32 files of the same size
cat > "$T/diff.py" <<'EOF'
import struct, sys
a = open(sys.argv[1], 'rb').read(); b = open(sys.argv[2], 'rb').read()
if len(a) != len(b): print('size %d vs %d' % (len(a), len(b))); sys.exit(1)
n = len(a) // 4
x = struct.unpack('<%df' % n, a); y = struct.unpack('<%df' % n, b)
d = max(abs(p - q) for p, q in zip(x, y))
print('%.3g' % d); sys.exit(0 if d <= float(sys.argv[3]) else 1)
EOF
st() { python3 "$T/st.py" "$@"; }

# plm-tiny: prefill + teacher-forced decode logits against llama.cpp (f32 GGUF), latent and full cache.
E=$F/plm-tiny/expected.safetensors
ids=$(st "$E" input_ids); dec=$(st "$E" decode_ids)
rm -f "$T/want"
st "$E" prefill_logits_f32 "$T/want"; st "$E" decode_logits_f32 "$T/want"
# F32 caches within the fixture tolerance 1e-3; the default F16 cache within the f16 one, 3e-2.
for mode in "--kv-f32 1e-3" "--kv-f32 --kv-full 1e-3" "3e-2" "--kv-full 3e-2" "--kv-f16 --kv-full 3e-2"; do
    tol=${mode##* }; opts=${mode% *}; [ "$opts" = "$tol" ] && opts=
    rm -f "$T/got"
    if ! "$P" logits -m "$F/plm-tiny/model-f32.gguf" --ids "$ids" --decode-ids "$dec" $opts -t 2 --out "$T/got"; then
        echo "FAIL: peri logits $opts"; fail=1; continue
    fi
    d=$(python3 "$T/diff.py" "$T/want" "$T/got" $tol) || { echo "FAIL: logits $opts differ by $d (tolerance $tol)"; fail=1; }
done

# Greedy ids (llama.cpp's, margins >= 0.41) from ids.
want=$(st "$E" greedy_ids_f32)
got=$("$P" run -m "$F/plm-tiny/model-f32.gguf" --ids "$ids" -n 16 --temp 0 --ignore-eos --print-ids -t 2)
[ "$got" = "$want" ] || { echo "FAIL: plm-tiny greedy: '$got' vs '$want'"; fail=1; }

# plm-qwen-vocab: the ChatML prompt text through the GGUF's tokenizer (special tokens parsed, as
# llama_tokenize(parse_special=true) did), then greedy (margins >= 0.105).
E=$F/plm-qwen-vocab/expected.safetensors
want=$(st "$E" greedy_ids)
prompt=$(st "$E" prompt_text_utf8; printf x); prompt=${prompt%x}
pids=$("$P" tokenize -m "$F/plm-qwen-vocab/model-f16.gguf" --text "$prompt")
[ "$pids" = "$(st "$E" input_ids)" ] || { echo "FAIL: plm-qwen-vocab prompt ids: '$pids'"; fail=1; }
got=$("$P" run -m "$F/plm-qwen-vocab/model-f16.gguf" --ids "$pids" -n 16 --temp 0 --ignore-eos --print-ids -t 2)
[ "$got" = "$want" ] || { echo "FAIL: plm-qwen-vocab greedy: '$got' vs '$want'"; fail=1; }
got=$("$P" run -m "$F/plm-qwen-vocab" --ids "$(st "$E" input_ids)" -n 16 --temp 0 --ignore-eos --print-ids -t 2)
want=$(st "$E" hf_greedy_ids)
[ "$got" = "$want" ] || { echo "FAIL: plm-qwen-vocab (safetensors) greedy: '$got' vs '$want'"; fail=1; }

# inspect names the architecture; a config with a query LoRA is refused with a message saying so.
"$P" inspect -m "$F/plm-tiny/model-f32.gguf" | grep -q "architecture: plm" || { echo "FAIL: inspect"; fail=1; }
mkdir "$T/lora"
sed 's/"q_lora_rank": null/"q_lora_rank": 16/' "$F/plm-tiny/config.json" > "$T/lora/config.json"
ln -s "$F/plm-tiny/model.safetensors" "$T/lora/model.safetensors"
if grep -q '"q_lora_rank": 16' "$T/lora/config.json"; then
    if "$P" run -m "$T/lora" --ids "1 2" -n 1 2> "$T/err" >/dev/null; then echo "FAIL: q_lora_rank accepted"; fail=1; fi
    grep -q q_lora_rank "$T/err" || { echo "FAIL: error does not name q_lora_rank: $(cat "$T/err")"; fail=1; }
else
    echo "FAIL: could not write the q_lora_rank config"; fail=1
fi

[ $fail = 0 ] && echo "cli_plm: ok"
exit $fail
