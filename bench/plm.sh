#!/bin/sh
# PLM speed, peri beside llama.cpp on the same GGUF files, back to back (BENCHMARKS.md "## PLM speed").
#
#   bench/plm.sh PERI LLAMA_BIN_DIR MODEL_DIR [TYPES] [ROUNDS] [DEPTH] [SCALING]
#
# PERI: the peri binary (Release build). LLAMA_BIN_DIR: a directory with llama-bench from a llama.cpp that knows
# the `plm` architecture (Si1w/llama.cpp; built by hand, never by this script). MODEL_DIR holds
# plm-1.8b-<type>.gguf for each type (default: "f16 q8_0 q4_0 q4_k_m"), made as BENCHMARKS.md shows; keep it on
# /dev/shm (the page cache is dropped often on these machines and that evicts mapped files).
# Each round runs, per type, peri then llama.cpp: pp512 + tg128 with 2 threads, the same tests with the same options
# (one warm-up, then one timed run each; tg128 from an empty cache); the whole set is repeated ROUNDS times (default
# 3) so that load from other jobs hits both alike. DEPTH (default 0 = skipped): decode of 32 tokens after DEPTH tokens
# of context (the model's context is 4096, so at most 4064), for the first type only, once. SCALING (default 0): when
# 1, peri alone with 1 thread and then 2 threads (pp512 + tg128), for each type, once: the thread scaling.
# Prints the raw outputs, plus the read-bandwidth probe (peri bench prints it) and the machine load.
set -eu
PERI=$1
LLAMA=$2
DIR=$3
TYPES=${4:-"f16 q8_0 q4_0 q4_k_m"}
ROUNDS=${5:-3}
DEPTH=${6:-0}
SCALING=${7:-0}
T=2

echo "# date: $(date -u +%Y-%m-%dT%H:%MZ)"
echo "# machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) CPUs; $(free -g | awk '/Mem:/ {print $2 " GiB RAM, " $7 " GiB available"}')"
echo "# load: $(cut -d' ' -f1-3 /proc/loadavg)"
r=1
while [ "$r" -le "$ROUNDS" ]; do
    for ty in $TYPES; do
        m="$DIR/plm-1.8b-$ty.gguf"
        echo "## round $r $ty peri (load $(cut -d' ' -f1 /proc/loadavg))"
        "$PERI" bench -m "$m" -p 512 -n 128 -t $T -r 1
        echo "## round $r $ty llama.cpp (load $(cut -d' ' -f1 /proc/loadavg))"
        "$LLAMA/llama-bench" -m "$m" -p 512 -n 128 -t $T -r 1 -o md 2>/dev/null
    done
    r=$((r + 1))
done
if [ "$DEPTH" -gt 0 ]; then
    ty=$(echo "$TYPES" | cut -d' ' -f1)
    m="$DIR/plm-1.8b-$ty.gguf"
    echo "## depth $DEPTH $ty peri (load $(cut -d' ' -f1 /proc/loadavg))"
    "$PERI" bench -m "$m" -p 0 -n 32 -d "$DEPTH" -t $T -r 1
    echo "## depth $DEPTH $ty llama.cpp (load $(cut -d' ' -f1 /proc/loadavg))"
    "$LLAMA/llama-bench" -m "$m" -p 0 -n 32 -d "$DEPTH" -t $T -r 1 -o md 2>/dev/null
fi
if [ "$SCALING" = 1 ]; then
    for ty in $TYPES; do
        m="$DIR/plm-1.8b-$ty.gguf"
        for t in 1 2; do
            echo "## scaling $ty peri -t $t (load $(cut -d' ' -f1 /proc/loadavg))"
            "$PERI" bench -m "$m" -p 512 -n 128 -t $t -r 1
        done
    done
fi
