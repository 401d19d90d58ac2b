# Shared helpers of the `peri serve` test scripts (sourced, not a test itself). Needs PERI_BIN (P) and sets up a
# temporary directory T that is removed on exit with the server, if one is still running.
#   SERVE_DEFAULTS: array of arguments start_server puts before its own (default: --port 0 -t 2)
#   ERROR_CHECK: Python expression over the error object `e` that an error answer must satisfy
P=${PERI_BIN:?}
T=$(mktemp -d)
SRV_PID=
cleanup() { [ -n "$SRV_PID" ] && kill "$SRV_PID" 2>/dev/null; wait 2>/dev/null; rm -rf "$T"; }
trap cleanup EXIT
fail=0
ok() { echo "ok: $*"; }
bad() { echo "FAIL: $*"; fail=1; }
[ -n "${SERVE_DEFAULTS+x}" ] || SERVE_DEFAULTS=(--port 0 -t 2)
: "${ERROR_CHECK:=e['message'] and e['type']}"

# start_server ARGS...: runs peri serve on a free port; sets SRV_PID and URL.
start_server() {
    : > "$T/srv.log"
    "$P" serve "${SERVE_DEFAULTS[@]}" "$@" > "$T/srv.log" 2>&1 &
    SRV_PID=$!
    PORT=
    for _ in $(seq 100); do
        PORT=$(grep -o 'listening on http://127.0.0.1:[0-9]*' "$T/srv.log" | grep -o '[0-9]*$')
        [ -n "$PORT" ] && break
        kill -0 "$SRV_PID" 2>/dev/null || break
        sleep 0.1
    done
    if [ -z "$PORT" ]; then cat "$T/srv.log"; bad "server did not start: $*"; exit 1; fi
    URL=http://127.0.0.1:$PORT
}
# stop_server: SIGTERM, then the server must exit 0 within 5 s.
stop_server() {
    kill -TERM "$SRV_PID"
    for _ in $(seq 50); do kill -0 "$SRV_PID" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$SRV_PID" 2>/dev/null; then bad "server did not stop on SIGTERM"; kill -9 "$SRV_PID"; fi
    wait "$SRV_PID"; local rc=$?
    [ $rc -eq 0 ] || { bad "server exited with $rc"; tail -20 "$T/srv.log"; }
    SRV_PID=
}
# req METHOD PATH [BODY] [curl args...]: prints the body, then the status on the last line.
req() {
    local m=$1 p=$2; shift 2
    local body=${1-}; [ $# -gt 0 ] && shift
    if [ -n "$body" ]; then curl -s -m 60 -X "$m" -H 'Content-Type: application/json' -d "$body" -w '\n%{http_code}' "$@" "$URL$p"
    else curl -s -m 60 -X "$m" -w '\n%{http_code}' "$@" "$URL$p"; fi
}
# expect STATUS DESCRIPTION (reads req output on stdin): checks the status and, for errors, the error object.
expect() {
    local want=$1 what=$2 out status
    out=$(cat); status=$(printf '%s' "$out" | tail -n1)
    if [ "$status" != "$want" ]; then bad "$what: status $status, expected $want: $(printf '%s' "$out" | head -c 300)"; return; fi
    if [ "$want" -ge 400 ]; then
        printf '%s' "$out" | sed '$d' | python3 -c "import json,sys; e=json.load(sys.stdin)['error']; assert $ERROR_CHECK" 2>/dev/null \
            || { bad "$what: no OpenAI error object: $(printf '%s' "$out" | head -c 300)"; return; }
    fi
    ok "$what ($status)"
}
js() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
body() { sed '$d'; }
