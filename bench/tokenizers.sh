#!/usr/bin/env bash
# Tokenizer throughput: peri (PLDR-LLM SentencePiece) vs Debian's spm_encode on the same lines and model,
# and peri's Qwen2 byte-level BPE, on ../shared/data/text. Best of 3 runs, wall time of the whole command
# (process start and model load included for both).
# usage: bench/tokenizers.sh [PERI_BIN]   (needs: apt-get install sentencepiece)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
peri=${1:-$here/../build/peri}
shared=${PERI_SHARED_DIR:-$here/../../shared}
tmp=$(mktemp -d /dev/shm/peri-tok.XXXX)
trap 'rm -rf "$tmp"' EXIT
cat "$shared"/data/text/wikitext-2/test.txt "$shared"/data/text/wikitext-2/valid.txt \
    "$shared"/data/text/tinyshakespeare/input.txt "$shared"/data/text/botchan.txt | tr -d '\r' | grep -v '^$' > "$tmp/lines.txt"
/usr/bin/python3 -c 'import json,sys; [print(json.dumps({"text": l.rstrip("\n")})) for l in open(sys.argv[1], encoding="utf-8", errors="replace")]' \
    "$tmp/lines.txt" > "$tmp/lines.jsonl"
bytes=$(wc -c < "$tmp/lines.txt")
best() { # best wall time of 3 runs of "$@" in seconds
    local b=999999
    for _ in 1 2 3; do
        local s e
        s=$(date +%s.%N); "$@" > /dev/null; e=$(date +%s.%N)
        b=$(echo "$e - $s" | bc -l | awk -v b="$b" '{print ($1 < b) ? $1 : b}')
    done
    echo "$b"
}
echo "== $(date -u +%F), $(lscpu | sed -n 's/^Model name: *//p'), text: $bytes bytes, $(wc -l < "$tmp/lines.txt") lines"
t=$(best spm_encode --model "$shared/tokenizers/pldr/tokenizer.model" --output_format=id "$tmp/lines.txt")
echo "spm_encode (sentencepiece $(dpkg-query -W -f '${Version}' sentencepiece)), PLDR unigram: $t s, $(echo "$bytes / $t / 1000000" | bc -l | xargs printf %.2f) MB/s"
t=$(best "$peri" tokenize -m "$shared/tokenizers/pldr/tokenizer.model" --jsonl "$tmp/lines.jsonl")
echo "peri tokenize, PLDR unigram:                 $t s, $(echo "$bytes / $t / 1000000" | bc -l | xargs printf %.2f) MB/s"
t=$(best "$peri" tokenize -m "$shared/tokenizers/qwen2" --jsonl "$tmp/lines.jsonl")
echo "peri tokenize, Qwen2 byte-level BPE:         $t s, $(echo "$bytes / $t / 1000000" | bc -l | xargs printf %.2f) MB/s"
# same ids as the reference
spm_encode --model "$shared/tokenizers/pldr/tokenizer.model" --output_format=id "$tmp/lines.txt" > "$tmp/spm.ids"
"$peri" tokenize -m "$shared/tokenizers/pldr/tokenizer.model" --jsonl "$tmp/lines.jsonl" > "$tmp/peri.ids"
cmp -s "$tmp/spm.ids" "$tmp/peri.ids" && echo "ids: identical to spm_encode on every line" || echo "ids: DIFFER from spm_encode"
