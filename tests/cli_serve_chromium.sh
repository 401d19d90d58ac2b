#!/usr/bin/env bash
# The chat page of `peri serve` in headless Chromium (Debian's `chromium`, driven by puppeteer-core installed
# into a temporary folder): the page loads from the binary, sends a message, streams the reply, and the text
# equals the API's own greedy reply; it makes no request outside the server. Skips (77) without
# /work/shared, chromium, node/npm or the npm registry.
set -u
P=${PERI_BIN:?}
S=${PERI_SHARED_DIR:-}
F=$S/fixtures/plm/plm-qwen-vocab
[ -n "$S" ] && [ -d "$F" ] || exit 77
CHROME=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
[ -n "$CHROME" ] || { echo "skip: no chromium (apt-get install chromium)"; exit 77; }
command -v node >/dev/null && command -v npm >/dev/null && command -v curl >/dev/null || exit 77
T=$(mktemp -d)
SRV_PID=
cleanup() { [ -n "$SRV_PID" ] && kill "$SRV_PID" 2>/dev/null; wait 2>/dev/null; rm -rf "$T"; }
trap cleanup EXIT
if ! PUPPETEER_SKIP_DOWNLOAD=1 timeout 180 npm install --silent --no-audit --no-fund --prefix "$T/npm" puppeteer-core@^22 >/dev/null 2>&1; then
    echo "skip: cannot install puppeteer-core"; exit 77
fi

"$P" serve -m "$F" --port 0 -t 2 -np 2 --ctx 256 -q > "$T/srv.log" 2>&1 &
SRV_PID=$!
for _ in $(seq 100); do
    PORT=$(grep -o 'listening on http://127.0.0.1:[0-9]*' "$T/srv.log" | grep -o '[0-9]*$')
    [ -n "$PORT" ] && break
    sleep 0.1
done
[ -n "${PORT:-}" ] || { cat "$T/srv.log"; echo "FAIL: server did not start"; exit 1; }
URL=http://127.0.0.1:$PORT
want=$(curl -s -m 60 "$URL/v1/chat/completions" -d '{"messages":[{"role":"user","content":"Hello there"}],"max_tokens":24,"temperature":0}' |
       node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>process.stdout.write(JSON.parse(s).choices[0].message.content))')

cat > "$T/npm/t.mjs" <<'EOF'
import puppeteer from 'puppeteer-core';
const [chrome, url, want] = process.argv.slice(2);
const browser = await puppeteer.launch({ executablePath: chrome, headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--no-first-run'] });
let fail = 0;
const check = (cond, what, extra) => { console.log(`${cond ? 'ok' : 'FAIL'}: ${what}`); if (!cond) { fail = 1; if (extra !== undefined) console.log(JSON.stringify(extra).slice(0, 600)); } };
try {
    const page = await browser.newPage();
    const foreign = [], errors = [];
    page.on('request', (r) => { if (!r.url().startsWith(url)) foreign.push(r.url()); });
    // The page must stream: its chat request is answered as server-sent events, one event per token or so
    // (how often the DOM repaints depends on the machine's load, so the events are what is checked).
    let sse = null;
    page.on('response', async (r) => {
        if (!r.url().endsWith('/v1/chat/completions')) return;
        try { sse = { type: r.headers()['content-type'] || '', events: ((await r.text()).match(/^data: /gm) || []).length }; }
        catch (e) { sse = { type: 'unreadable', events: 0 }; }
    });
    page.on('pageerror', (e) => errors.push(String(e)));
    await page.goto(url + '/', { waitUntil: 'load', timeout: 30000 });
    await page.waitForFunction(() => document.getElementById('model').textContent === 'plm-qwen-vocab', { timeout: 10000 });
    check(true, 'page loads and shows the model');
    await page.$eval('#temp', (e) => { e.value = '0'; });
    await page.$eval('#maxtok', (e) => { e.value = '24'; });
    // Count how often the reply changes while it streams.
    await page.evaluate(() => {
        window.__updates = 0;
        new MutationObserver(() => window.__updates++).observe(document.getElementById('log'), { subtree: true, childList: true, characterData: true });
    });
    await page.type('#input', 'Hello there');
    await page.keyboard.press('Enter');
    await page.waitForSelector('.assistant[data-done="1"]', { timeout: 60000 });
    const got = await page.$eval('.assistant', (e) => e.textContent);
    const user = await page.$eval('.user', (e) => e.textContent);
    const updates = await page.evaluate(() => window.__updates);
    check(user === 'Hello there', 'the message is shown');
    check(got === want, 'streamed reply equals the API reply', { got, want });
    for (let i = 0; i < 100 && !sse; i++) await new Promise((r) => setTimeout(r, 50));
    check(sse && sse.type.startsWith('text/event-stream') && sse.events > 2, `the reply was streamed (${JSON.stringify(sse)}, ${updates} DOM updates)`);
    check(errors.length === 0, 'no script errors', errors);
    check(foreign.length === 0, 'no request outside the server (works offline)', foreign);
    check((await page.$$('.error')).length === 0, 'no error message on the page');
} catch (e) {
    check(false, 'browser test', String(e));
} finally {
    await browser.close();
}
process.exit(fail);
EOF
timeout 180 node "$T/npm/t.mjs" "$CHROME" "$URL" "$want"
rc=$?
kill "$SRV_PID"; wait "$SRV_PID"; SRV_PID=
exit $rc
