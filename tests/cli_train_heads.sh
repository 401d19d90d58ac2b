#!/usr/bin/env bash
# peri train on task-head checkpoints (JSONL examples): a sequence classifier, a token classifier and a QA model
# made by `peri init` with the real PLDR-LLM tokenizer are fine-tuned; the training loss falls, and the saved
# checkpoints load in peri classify / tag / qa, the classifier answering its training labels.
set -u
: "${PERI_BIN:?}"
shared="${PERI_SHARED_DIR:-}"
tok="$shared/tokenizers/pldr/tokenizer.model"
[ -f "$tok" ] || { echo "cli_train_heads: $tok not found; skipping"; exit 77; }
. "$(dirname "$0")/check_lib.sh"

make_head_models "$tok"

# sequence classification: three labels, four texts each (the last one held out for validation)
: > "$tmp/seq.jsonl"
for i in 1 2 3 4; do
    echo "{\"text\": \"What a wonderful happy day number $i.\", \"label\": 2}" >> "$tmp/seq.jsonl"
    echo "{\"text\": \"This is a terrible sad mess, part $i.\", \"label\": 0}" >> "$tmp/seq.jsonl"
    echo "{\"text\": \"The meeting is on floor $i.\", \"label\": 1}" >> "$tmp/seq.jsonl"
done
"$PERI_BIN" train -m "$tmp/seq" --data "$tmp/seq.jsonl" --out "$tmp/seq-ft" --steps 40 --batch 4 --lr 3e-3 \
    --warmup 2 --val-frac 0.1 --val-every 10 -t 1 2> "$tmp/seq.log"
ok grep -q "saved" "$tmp/seq.log"
first=$(grep -m1 "^step" "$tmp/seq.log" | sed 's/.*loss \([0-9.]*\).*/\1/')
last=$(grep "^step" "$tmp/seq.log" | tail -1 | sed 's/.*| loss \([0-9.]*\).*/\1/')
ok awk -v a="$first" -v b="$last" 'BEGIN { exit !(b < 0.1 * a) }'
ok grep -q "val acc" "$tmp/seq.log"
echo "seq-cls fine-tune: loss $first -> $last"
out=$("$PERI_BIN" classify -m "$tmp/seq-ft" -p "What a wonderful happy day number 2." 2>/dev/null)
echo "$out" | head -1
ok test "$(echo "$out" | head -1 | awk '{print $1}')" = positive
out=$("$PERI_BIN" classify -m "$tmp/seq-ft" -p "This is a terrible sad mess, part 1." 2>/dev/null)
ok test "$(echo "$out" | head -1 | awk '{print $1}')" = negative

# token classification (labels per word) and QA (answer by byte offset): they train and load
printf '%s\n' '{"tokens": ["Alice", "met", "Bob", "Smith"], "labels": [1, 0, 1, 2]}' \
    '{"tokens": ["we", "saw", "Carol"], "labels": [0, 0, 1]}' > "$tmp/tok.jsonl"
"$PERI_BIN" train -m "$tmp/tok" --data "$tmp/tok.jsonl" --out "$tmp/tok-ft" --steps 3 --batch 2 --val-frac 0 -t 1 2> "$tmp/tok.log"
ok grep -q "saved" "$tmp/tok.log"
ok "$PERI_BIN" tag -m "$tmp/tok-ft" -p "Alice met Bob" > /dev/null 2>&1
printf '%s\n' '{"question": "Who came?", "context": "Yesterday Alice came home.", "answer_start": 10, "answer_text": "Alice"}' > "$tmp/qa.jsonl"
"$PERI_BIN" train -m "$tmp/qa" --data "$tmp/qa.jsonl" --out "$tmp/qa-ft" --steps 3 --batch 1 --val-frac 0 -t 1 2> "$tmp/qa.log"
ok grep -q "saved" "$tmp/qa.log"
ok "$PERI_BIN" qa -m "$tmp/qa-ft" --question "Who came?" --context "Yesterday Alice came home." > /dev/null 2>&1

# bad examples fail with the line number
echo '{"text": "no label"}' > "$tmp/bad.jsonl"
"$PERI_BIN" train -m "$tmp/seq" --data "$tmp/bad.jsonl" --out "$tmp/bad" --steps 1 -t 1 2> "$tmp/bad.log"
ok test $? -ne 0
ok grep -q "bad.jsonl:1" "$tmp/bad.log"
echo '{"text": "x", "label": 7}' > "$tmp/bad.jsonl"
"$PERI_BIN" train -m "$tmp/seq" --data "$tmp/bad.jsonl" --out "$tmp/bad" --steps 1 -t 1 2> "$tmp/bad.log"
ok grep -q "label" "$tmp/bad.log"

finish
