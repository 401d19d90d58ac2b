#!/usr/bin/env bash
# `peri serve` with curl on 127.0.0.1: endpoints, errors as OpenAI error objects, limits and timeouts, API key,
# client disconnects freeing their slot, and a bounded load test (concurrent greedy streams give the same
# tokens as one at a time; RSS does not grow across rounds). Generated ids are checked against `peri run`.
# Part A needs nothing (a model from `peri init`, token ids only); part B uses the PLDR fixture with its
# SentencePiece tokenizer, part C the PLM fixture with its Qwen2 tokenizer and chat template (both skipped
# without /work/shared).
set -u
R=$(cd "$(dirname "$0")/.." && pwd)
command -v curl >/dev/null && command -v python3 >/dev/null || exit 77
. "$(dirname "$0")/serve_lib.sh"

# ------------------------------------------------------------------------------------------------ part A
"$P" init --config "$R/examples/pldr-small.json" --seed 3 --out "$T/m" >/dev/null || { bad "peri init"; exit 1; }
start_server -m "$T/m" -np 4 --ctx 256 --api-key sekret --max-body 65536 --timeout 2 --max-tokens 255 -q
AUTH=(-H 'Authorization: Bearer sekret')

req GET /health | expect 200 "health without a key"
req GET /v1/models | expect 401 "models without the key"
req GET /v1/models "" -H 'Authorization: Bearer wrong' | expect 401 "models with a wrong key"
out=$(req GET /v1/models "" "${AUTH[@]}")
[ "$(printf '%s' "$out" | body | js 'd["data"][0]["id"]')" = m ] && ok "models lists the model" || bad "models: $out"

# Greedy ids against `peri run`.
want=$("$P" run -m "$T/m" --ids "5 6 7" -n 12 --temp 0 --print-ids --ignore-eos 2>/dev/null | tail -n1)
out=$(req POST /v1/completions '{"prompt":[5,6,7],"max_tokens":12,"temperature":0,"ignore_eos":true}' "${AUTH[@]}")
got=$(printf '%s' "$out" | body | js '" ".join(map(str, d["choices"][0]["token_ids"]))')
[ "$got" = "$want" ] && ok "greedy ids equal peri run ($got)" || bad "greedy ids: got '$got', peri run '$want'"
printf '%s' "$out" | body | js 'd["usage"]["prompt_tokens"] == 3 and d["usage"]["completion_tokens"] == 12 and d["choices"][0]["finish_reason"] == "length" and d["object"] == "text_completion"' | grep -q True \
    && ok "usage and finish_reason" || bad "usage: $out"
# Seeded sampling is repeatable.
a=$(req POST /v1/completions '{"prompt":[9],"max_tokens":10,"temperature":1,"seed":5,"ignore_eos":true}' "${AUTH[@]}" | body | js 'd["choices"][0]["token_ids"]')
b=$(req POST /v1/completions '{"prompt":[9],"max_tokens":10,"temperature":1,"seed":5,"ignore_eos":true}' "${AUTH[@]}" | body | js 'd["choices"][0]["token_ids"]')
[ "$a" = "$b" ] && ok "seeded sampling repeats" || bad "seeded sampling: $a vs $b"

# Log-probabilities of the prompt (lm-eval local-completions: echo + logprobs + max_tokens 0) against the
# log-softmax of `peri logits`.
"$P" logits -m "$T/m" --ids "5 6 7 8" --out "$T/logits.f32" >/dev/null 2>&1
out=$(req POST /v1/completions '{"prompt":[5,6,7,8],"max_tokens":0,"echo":true,"logprobs":3,"temperature":0}' "${AUTH[@]}")
printf '%s' "$out" | body > "$T/lp.json"
python3 - "$T/lp.json" "$T/logits.f32" <<'EOF' && ok "prompt logprobs equal log-softmax of peri logits" || bad "prompt logprobs: $out"
import json, math, struct, sys
d = json.load(open(sys.argv[1])); raw = open(sys.argv[2], 'rb').read()
V = 512; ids = [5, 6, 7, 8]
rows = [struct.unpack_from('<%df' % V, raw, 4 * V * r) for r in range(len(raw) // (4 * V))]
assert len(rows) == 4, len(rows)
lp = d['choices'][0]['logprobs']
assert lp['token_logprobs'][0] is None and lp['top_logprobs'][0] is None and len(lp['token_logprobs']) == 4
assert d['choices'][0]['finish_reason'] == 'length' and d['usage']['completion_tokens'] == 0
for k in range(1, 4):
    row = rows[k - 1]; m = max(row); lse = m + math.log(sum(math.exp(x - m) for x in row))
    assert abs(lp['token_logprobs'][k] - (row[ids[k]] - lse)) < 1e-4, (k, lp['token_logprobs'][k], row[ids[k]] - lse)
    top = sorted(lp['top_logprobs'][k].values(), reverse=True)
    want = sorted((x - lse for x in row), reverse=True)[:3]
    assert len(top) == 3 and all(abs(a - b) < 1e-4 for a, b in zip(top, want)), (top, want)
EOF

# Errors: each a 4xx with an OpenAI error object, and the server keeps serving.
req POST /v1/completions '{"prompt":' "${AUTH[@]}" | expect 400 "malformed JSON"
req POST /v1/completions '[1,2]' "${AUTH[@]}" | expect 400 "body not an object"
req POST /v1/completions '{"prompt":"hi"}' "${AUTH[@]}" | expect 400 "text prompt without a tokenizer"
req POST /v1/chat/completions '{"messages":[{"role":"user","content":"hi"}]}' "${AUTH[@]}" | expect 501 "chat without a tokenizer"
req POST /tokenize '{"content":"hi"}' "${AUTH[@]}" | expect 501 "tokenize without a tokenizer"
req POST /v1/completions '{"prompt":[1],"max_tokens":100000}' "${AUTH[@]}" | expect 400 "max_tokens above the limit"
req POST /v1/completions '{"prompt":[1],"n":2}' "${AUTH[@]}" | expect 400 "n = 2"
req POST /v1/completions '{"prompt":[1],"temperature":"hot"}' "${AUTH[@]}" | expect 400 "temperature of the wrong type"
req POST /v1/completions '{"prompt":[1],"top_p":7}' "${AUTH[@]}" | expect 400 "top_p out of range"
req POST /v1/completions '{"prompt":[100000]}' "${AUTH[@]}" | expect 400 "token id outside the vocabulary"
req POST /v1/completions '{"prompt":[]}' "${AUTH[@]}" | expect 400 "empty prompt"
long=$(python3 -c 'print(",".join(["7"] * 300))')
req POST /v1/completions "{\"prompt\":[$long]}" "${AUTH[@]}" | expect 400 "prompt longer than the context"
req POST /v1/completions '{"prompt":[1],"stop":"x"}' "${AUTH[@]}" | expect 400 "stop strings without a tokenizer"
req GET /v1/completions "" "${AUTH[@]}" | expect 405 "GET on a POST endpoint"
req GET /nothing "" "${AUTH[@]}" | expect 404 "unknown path"
python3 -c 'print("{\"prompt\":[1],\"x\":\"" + "a" * 70000 + "\"}")' > "$T/big.json"
req POST /v1/completions "@$T/big.json" "${AUTH[@]}" | expect 413 "body over --max-body"
req POST /v1/completions '{"prompt":[1]}' "${AUTH[@]}" -H 'Transfer-Encoding: chunked' | expect 501 "chunked request body"
req GET /health "" -H "X-Big: $(python3 -c 'print("a" * 20000)')" | expect 431 "head over the limit"
# A client that sends half a head gets 408 after --timeout (2 s), and the connection is closed.
python3 - "$PORT" <<'EOF' && ok "slow client gets 408" || bad "slow client"
import socket, sys, time
s = socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=10)
s.sendall(b'POST /v1/completions HTTP/1.1\r\nContent-Length: 10\r\n')
t0 = time.time(); data = b''
while True:
    b = s.recv(4096)
    if not b: break
    data += b
assert data.startswith(b'HTTP/1.1 408'), data[:100]
assert time.time() - t0 < 8
EOF
# Keep-alive: two requests on one connection.
python3 - "$PORT" <<'EOF' && ok "keep-alive serves two requests on one connection" || bad "keep-alive"
import http.client, json, sys
c = http.client.HTTPConnection('127.0.0.1', int(sys.argv[1]), timeout=30)
for _ in range(2):
    c.request('POST', '/v1/completions', json.dumps({'prompt': [4, 5], 'max_tokens': 2}), {'Authorization': 'Bearer sekret'})
    r = c.getresponse(); d = json.loads(r.read()); assert r.status == 200 and len(d['choices'][0]['token_ids']) <= 2
EOF

# A client that disconnects mid-stream frees its slot at once.
python3 - "$PORT" <<'EOF' || bad "disconnect test client"
import socket, sys, json
body = json.dumps({'prompt': [5], 'max_tokens': 255, 'ignore_eos': True, 'stream': True}).encode()
s = socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=30)
s.sendall(b'POST /v1/completions HTTP/1.1\r\nAuthorization: Bearer sekret\r\nContent-Length: %d\r\n\r\n' % len(body) + body)
data = b''
while b'data: ' not in data: data += s.recv(4096)
s.close()
EOF
freed=0
for _ in $(seq 20); do
    m=$(curl -s -m 10 "${AUTH[@]}" "$URL/metrics")
    if printf '%s' "$m" | grep -q '^peri_slots_busy 0$' && printf '%s' "$m" | grep -q '^peri_requests_cancelled_total [1-9]'; then freed=1; break; fi
    sleep 0.05
done
[ $freed = 1 ] && ok "disconnect cancels the request and frees the slot" || bad "disconnect: $(printf '%s' "$m" | grep -E 'slots_busy|cancelled')"

# Load: 8 concurrent streams over 4 slots (4 wait in the queue) give the same tokens as one at a time,
# for three rounds; the server's RSS does not grow from round 1 to round 3. A server with the default
# client timeout: on a loaded CI machine a reader can stall for more than the 2 s used above.
stop_server
start_server -m "$T/m" -np 4 --ctx 256 --api-key sekret --max-tokens 255 -q
cat > "$T/load.py" <<'EOF'
import json, sys, threading, urllib.request
url, mode, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
def one(i, out):
    body = {'prompt': [10 + i, 20 + i], 'max_tokens': 24, 'temperature': 0, 'ignore_eos': True,
            'stream': True, 'logprobs': 0}
    rq = urllib.request.Request(url + '/v1/completions', json.dumps(body).encode(),
                                {'Authorization': 'Bearer sekret', 'Content-Type': 'application/json'})
    ids, done = [], False
    with urllib.request.urlopen(rq, timeout=120) as r:
        for line in r:
            line = line.decode().strip()
            if not line.startswith('data: '): continue
            if line == 'data: [DONE]': done = True; break
            d = json.loads(line[6:])
            lp = d['choices'][0]['logprobs']
            if lp: ids += lp['tokens']
    out[i] = (ids, done)
out = [None] * n
if mode == 'seq':
    for i in range(n): one(i, out)
else:
    th = [threading.Thread(target=one, args=(i, out)) for i in range(n)]
    [t.start() for t in th]; [t.join() for t in th]
assert all(o and o[1] and len(o[0]) == 24 for o in out), out
print(json.dumps([o[0] for o in out]))
EOF
seq_out=$(python3 "$T/load.py" "$URL" seq 8) || bad "sequential load"
rss() { awk '/VmRSS/ {print $2}' "/proc/$SRV_PID/status"; }
for round in 1 2 3; do
    par_out=$(python3 "$T/load.py" "$URL" par 8) || { bad "concurrent round $round"; break; }
    [ "$par_out" = "$seq_out" ] || { bad "round $round: concurrent streams differ from sequential"; break; }
    [ $round = 1 ] && rss1=$(rss)
done
rss3=$(rss)
ok "8 concurrent streams x 3 rounds equal one-at-a-time (RSS $rss1 -> $rss3 KiB)"
if ldd "$P" 2>/dev/null | grep -q asan; then echo "skip: RSS growth check under ASan (quarantine)"
elif [ $((rss3 - rss1)) -gt 4096 ]; then bad "RSS grew from $rss1 to $rss3 KiB across rounds"
else ok "RSS does not grow across rounds"; fi
m=$(curl -s -m 10 "${AUTH[@]}" "$URL/metrics")
for k in peri_generated_tokens_total peri_prompt_tokens_total peri_time_to_first_token_seconds_count peri_decode_tokens_per_second peri_slots_total; do
    printf '%s' "$m" | grep -q "^$k [0-9]" || bad "metric $k missing"
done
ok "metrics in Prometheus text format"
stop_server
ok "SIGTERM stops the server cleanly"

# ------------------------------------------------------------------------------------------------ part B
S=${PERI_SHARED_DIR:-}
F=$S/fixtures/pldr/pldr-small-vocab32k
if [ -n "$S" ] && [ -d "$F" ]; then
    start_server -m "$F" -np 2 -q
    want=$("$P" run -m "$F" -p "Hello" -n 16 --temp 0 --ignore-eos 2>/dev/null | head -n1)
    out=$(req POST /v1/completions '{"prompt":"Hello","max_tokens":16,"temperature":0,"ignore_eos":true,"echo":true}')
    got=$(printf '%s' "$out" | body | js 'd["choices"][0]["text"]')
    [ "$got" = "$want" ] && ok "echo + greedy text equals peri run" || bad "greedy text: '$got' vs peri run '$want'"
    plain=$(req POST /v1/completions '{"prompt":"Hello","max_tokens":16,"temperature":0,"ignore_eos":true}' | body | js 'd["choices"][0]["text"]')
    [ "Hello$plain" = "$want" ] && ok "completion text continues the prompt" || bad "completion text '$plain'"
    # Streaming gives the same text in pieces, then [DONE].
    curl -sN -m 60 "$URL/v1/completions" -d '{"prompt":"Hello","max_tokens":16,"temperature":0,"ignore_eos":true,"stream":true,"stream_options":{"include_usage":true}}' > "$T/sse.txt"
    python3 - "$T/sse.txt" "$plain" <<'EOF' && ok "streamed text equals the whole text" || bad "stream: $(head -c 400 "$T/sse.txt")"
import json, sys
lines = [l for l in open(sys.argv[1]).read().split('\n\n') if l.strip()]
assert lines[-1] == 'data: [DONE]', lines[-1]
chunks = [json.loads(l[6:]) for l in lines[:-1]]
text = ''.join(c['choices'][0]['text'] for c in chunks if c['choices'])
assert text == sys.argv[2], (text, sys.argv[2])
assert chunks[-2]['choices'][0]['finish_reason'] == 'length' and chunks[-1]['usage']['completion_tokens'] == 16
EOF
    # A stop string cuts the text before it, with finish_reason "stop".
    word=$(printf '%s' "$plain" | python3 -c 'import sys; print(sys.stdin.read().split()[3])')
    out=$(req POST /v1/completions "{\"prompt\":\"Hello\",\"max_tokens\":16,\"temperature\":0,\"stop\":[\"zzzq\",\"$word\"]}")
    printf '%s' "$out" | body | python3 -c "import json,sys; d=json.load(sys.stdin)['choices'][0]; t=sys.argv[1]; assert d['finish_reason']=='stop' and d['text']==t[:t.index(sys.argv[2])], d" "$plain" "$word" \
        && ok "stop string '$word'" || bad "stop string: $out"
    # Several prompts in one request, as token lists (what lm-eval sends), with logprobs.
    ids=$("$P" tokenize -m "$F" --text "Hello world" 2>/dev/null | tail -n1 | tr ' ' ',')
    out=$(req POST /v1/completions "{\"prompt\":[[${ids}],[${ids}]],\"max_tokens\":1,\"echo\":true,\"logprobs\":1,\"temperature\":0}")
    printf '%s' "$out" | body | python3 -c 'import json,sys; d=json.load(sys.stdin)["choices"]; assert len(d)==2 and d[0]["logprobs"]==d[1]["logprobs"] and d[0]["logprobs"]["token_logprobs"][0] is None' \
        && ok "a list of token-id prompts with echo and logprobs" || bad "batched prompts: $(printf '%s' "$out" | head -c 400)"
    out=$(req POST /tokenize '{"content":"Hello world"}')
    [ "$(printf '%s' "$out" | body | js '",".join(map(str, d["tokens"]))')" = "$ids" ] && ok "tokenize equals peri tokenize" || bad "tokenize: $out"
    out=$(req POST /detokenize "{\"tokens\":[${ids}]}")
    [ "$(printf '%s' "$out" | body | js 'd["content"]')" = "Hello world" ] && ok "detokenize" || bad "detokenize: $out"
    req POST /v1/chat/completions '{"messages":[{"role":"user","content":"hi"}]}' | expect 501 "chat without a template"
    stop_server
    # With a chat template given on the command line.
    printf '%s' "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}
{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}" > "$T/tmpl.jinja"
    start_server -m "$F" -np 2 -q --chat-template "$T/tmpl.jinja"
    out=$(req POST /v1/chat/completions '{"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":[{"type":"text","text":"Hello"}]}],"max_tokens":8,"temperature":0,"logprobs":true,"top_logprobs":2}')
    printf '%s' "$out" | body | python3 -c 'import json,sys; d=json.load(sys.stdin); c=d["choices"][0]; assert d["object"]=="chat.completion" and c["message"]["role"]=="assistant" and c["message"]["content"] and len(c["logprobs"]["content"][0]["top_logprobs"])==2' \
        && ok "chat completion with --chat-template and logprobs" || bad "chat: $(printf '%s' "$out" | head -c 400)"
    stop_server
else
    echo "skip: part B (no $F)"
fi

# ------------------------------------------------------------------------------------------------ part C
F=$S/fixtures/plm/plm-qwen-vocab
if [ -n "$S" ] && [ -d "$F" ]; then
    start_server -m "$F" -np 2 -q --ctx 256
    msgs='[{"role":"user","content":"Hello"}]'
    out=$(req POST /v1/chat/completions "{\"messages\":$msgs,\"max_tokens\":12,\"temperature\":0}")
    whole=$(printf '%s' "$out" | body | js 'd["choices"][0]["message"]["content"]')
    printf '%s' "$out" | body | js 'd["usage"]["prompt_tokens"]' > "$T/pt"
    # The prompt is the model's own template: system default + user turn + assistant header.
    ptok=$(req POST /tokenize "{\"content\":\"<|im_start|>system\\nYou are a helpful assistant<|im_end|>\\n<|im_start|>user\\nHello<|im_end|>\\n<|im_start|>assistant\\n\"}" | body | js 'len(d["tokens"])')
    [ "$(cat "$T/pt")" = "$ptok" ] && ok "chat prompt uses the model's template ($ptok tokens)" || bad "chat prompt tokens $(cat "$T/pt") vs $ptok"
    curl -sN -m 60 "$URL/v1/chat/completions" -d "{\"messages\":$msgs,\"max_tokens\":12,\"temperature\":0,\"stream\":true}" > "$T/sse.txt"
    python3 - "$T/sse.txt" "$whole" <<'EOF' && ok "streamed chat equals the whole reply" || bad "chat stream: $(head -c 400 "$T/sse.txt")"
import json, sys
lines = [l for l in open(sys.argv[1]).read().split('\n\n') if l.strip()]
assert lines[-1] == 'data: [DONE]'
chunks = [json.loads(l[6:]) for l in lines[:-1]]
assert chunks[0]['choices'][0]['delta']['role'] == 'assistant' and chunks[0]['object'] == 'chat.completion.chunk'
text = ''.join(c['choices'][0]['delta'].get('content', '') for c in chunks)
assert text == sys.argv[2], (text, sys.argv[2])
assert chunks[-1]['choices'][0]['finish_reason'] in ('stop', 'length')
EOF
    stop_server
else
    echo "skip: part C (no $F)"
fi
exit $fail
