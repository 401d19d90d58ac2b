#!/usr/bin/env bash
# PLDR-LLM-110M shape, F32 weights (and the Q8_0 GGUF peri converts from them): peri vs PyTorch in one run.
# usage: bench/pldr.sh [PERI_BIN] ; needs /usr/bin/python3 with python3-torch (Debian) and libopenblas0-pthread.
# The model is made with `peri init` on /dev/shm (the page cache is dropped every minute here).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
peri=${1:-$here/../build/peri}
dir=/dev/shm/peri-bench-pldr110m
[ -f "$dir/model.safetensors" ] || "$peri" init --config "$here/../examples/pldr-110m.json" --seed 1 --out "$dir" >/dev/null
[ -f "$dir.q8_0.gguf" ] || "$peri" convert "$dir" -o "$dir.q8_0.gguf" --type q8_0 >/dev/null 2>&1 || true
echo "== machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; $(date -u +%F)"
for t in 1 2; do
    echo "== peri, F32, $t thread(s)"
    # prefill of 128 tokens, then decode of 64 after a 128-token prompt (as pldr_torch.py decodes)
    "$peri" bench -m "$dir" -p 128 -n 0 -t "$t" -r 10
    "$peri" bench -m "$dir" -p 0 -n 64 -d 128 -t "$t" -r 10
    if [ -f "$dir.q8_0.gguf" ]; then
        echo "== peri, Q8_0, $t thread(s)"
        "$peri" bench -m "$dir.q8_0.gguf" -p 128 -n 0 -t "$t" -r 10
        "$peri" bench -m "$dir.q8_0.gguf" -p 0 -n 64 -d 128 -t "$t" -r 10
    fi
done
# Debian's OpenBLAS 0.3.21 does not recognise the CPU of these VMs ("Intel(R) Xeon(R) Processor") and falls back to
# its Prescott (SSE3) kernels, about 3x slower; OPENBLAS_CORETYPE picks the kernels the CPU can run (SkylakeX:
# AVX-512). Threads: OpenBLAS's own with torch's intra-op threads at 1 is the fastest configuration here, torch's
# threads with a single-threaded OpenBLAS the other; both are printed.
core=
if grep -qw avx512f /proc/cpuinfo; then core=SkylakeX; elif grep -qw avx2 /proc/cpuinfo; then core=Haswell; fi
for t in 1 2; do
    echo "== PyTorch (bench/pldr_torch.py: same model, KV + G cache), F32, OpenBLAS $core x $t thread(s), torch 1 thread"
    env ${core:+OPENBLAS_CORETYPE=$core} OPENBLAS_NUM_THREADS=$t OMP_NUM_THREADS=$t \
        /usr/bin/python3 "$here/pldr_torch.py" "$dir" -p 128 -n 64 -t 1 -r 5
    [ "$t" = 1 ] && continue
    echo "== PyTorch, F32, OpenBLAS $core x 1 thread, torch $t threads"
    env ${core:+OPENBLAS_CORETYPE=$core} OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=$t \
        /usr/bin/python3 "$here/pldr_torch.py" "$dir" -p 128 -n 64 -t "$t" -r 5
done
