#!/usr/bin/env bash
# `peri serve` with the official `openai` npm package (installed into a temporary folder at test time):
# plain and streaming chat and completions, logprobs, an API error surfacing as openai.APIError, and the API key.
# Uses the PLM fixture with the Qwen2 tokenizer and chat template. Skips (77) without /work/shared, node,
# npm or the npm registry.
set -u
P=${PERI_BIN:?}
S=${PERI_SHARED_DIR:-}
F=$S/fixtures/plm/plm-qwen-vocab
[ -n "$S" ] && [ -d "$F" ] || exit 77
command -v node >/dev/null && command -v npm >/dev/null || exit 77
T=$(mktemp -d)
SRV_PID=
cleanup() { [ -n "$SRV_PID" ] && kill "$SRV_PID" 2>/dev/null; wait 2>/dev/null; rm -rf "$T"; }
trap cleanup EXIT
if ! timeout 180 npm install --silent --no-audit --no-fund --prefix "$T/npm" openai@^4 >/dev/null 2>&1; then
    echo "skip: cannot install the openai npm package"; exit 77
fi

"$P" serve -m "$F" --port 0 -t 2 -np 2 --ctx 256 --api-key k123 -q > "$T/srv.log" 2>&1 &
SRV_PID=$!
for _ in $(seq 100); do
    PORT=$(grep -o 'listening on http://127.0.0.1:[0-9]*' "$T/srv.log" | grep -o '[0-9]*$')
    [ -n "$PORT" ] && break
    sleep 0.1
done
[ -n "${PORT:-}" ] || { cat "$T/srv.log"; echo "FAIL: server did not start"; exit 1; }

cat > "$T/npm/t.mjs" <<'EOF'
import OpenAI from 'openai';
const base = `http://127.0.0.1:${process.argv[2]}/v1`;
const client = new OpenAI({ baseURL: base, apiKey: 'k123', maxRetries: 0, timeout: 60000 });
let fail = 0;
const check = (cond, what, extra) => { console.log(`${cond ? 'ok' : 'FAIL'}: ${what}`); if (!cond) { fail = 1; if (extra !== undefined) console.log(JSON.stringify(extra).slice(0, 600)); } };

const models = await client.models.list();
check(models.data.length === 1 && models.data[0].id === 'plm-qwen-vocab', 'models.list', models.data);
const model = models.data[0].id;

const messages = [{ role: 'user', content: 'Hello' }];
const chat = await client.chat.completions.create({ model, messages, max_tokens: 12, temperature: 0 });
const reply = chat.choices[0].message.content;
check(chat.object === 'chat.completion' && chat.choices[0].message.role === 'assistant' && typeof reply === 'string',
      'chat.completions.create', chat);
check(chat.usage.completion_tokens > 0 && chat.usage.total_tokens === chat.usage.prompt_tokens + chat.usage.completion_tokens,
      'chat usage', chat.usage);

const stream = await client.chat.completions.create({ model, messages, max_tokens: 12, temperature: 0, stream: true,
                                                      stream_options: { include_usage: true } });
let text = '', finish = null, usage = null;
for await (const chunk of stream) {
    if (chunk.usage) usage = chunk.usage;
    for (const c of chunk.choices) { text += c.delta.content ?? ''; if (c.finish_reason) finish = c.finish_reason; }
}
check(text === reply, 'streamed chat equals the plain reply', { text, reply });
check(finish === chat.choices[0].finish_reason && usage && usage.completion_tokens === chat.usage.completion_tokens,
      'stream finish_reason and usage', { finish, usage });

const cmpl = await client.completions.create({ model, prompt: 'The capital of France is', max_tokens: 10, temperature: 0, logprobs: 2 });
const ctext = cmpl.choices[0].text;
check(cmpl.object === 'text_completion' && typeof ctext === 'string', 'completions.create', cmpl);
const lp = cmpl.choices[0].logprobs;
check(lp && lp.tokens.length === lp.token_logprobs.length && lp.token_logprobs.every((x) => x <= 0) &&
      lp.top_logprobs.every((t) => Object.keys(t).length >= 1) && lp.tokens.join('') === ctext.slice(0, lp.tokens.join('').length),
      'completion logprobs', lp);

const cstream = await client.completions.create({ model, prompt: 'The capital of France is', max_tokens: 10, temperature: 0, stream: true });
let ctext2 = '';
for await (const chunk of cstream) for (const c of chunk.choices) ctext2 += c.text;
check(ctext2 === ctext, 'streamed completion equals the plain one', { ctext2, ctext });

const chatlp = await client.chat.completions.create({ model, messages, max_tokens: 4, temperature: 0, logprobs: true, top_logprobs: 3 });
const content = chatlp.choices[0].logprobs.content;
check(content.length >= 1 && content[0].top_logprobs.length === 3 && content[0].logprob <= 0 &&
      Math.abs(content[0].top_logprobs[0].logprob - content[0].logprob) < 1e-5, 'chat logprobs (greedy = top 1)', content);

try {
    await client.completions.create({ model, prompt: 'x', max_tokens: 1, n: 3 });
    check(false, 'n = 3 is refused');
} catch (e) {
    check(e instanceof OpenAI.BadRequestError && e.status === 400 && /'n'/.test(e.message), 'API error as BadRequestError', String(e));
}
try {
    const bad = new OpenAI({ baseURL: base, apiKey: 'wrong', maxRetries: 0 });
    await bad.models.list();
    check(false, 'a wrong key is refused');
} catch (e) {
    check(e instanceof OpenAI.AuthenticationError && e.status === 401, 'wrong key as AuthenticationError', String(e));
}
process.exit(fail);
EOF
timeout 180 node "$T/npm/t.mjs" "$PORT"
rc=$?
kill "$SRV_PID"; wait "$SRV_PID"; SRV_PID=
exit $rc
