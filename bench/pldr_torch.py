#!/usr/bin/python3
"""PyTorch peer for `peri bench` on PLDR-LLM: our own plain-PyTorch implementation of the model as the original
code and the HF fork compute it (same operations: nn.Linear, LayerNorm, SiLU GLUs, the metric learner, the
power law, q G k^T attention), with a KV-cache and a G-cache, in float32 on the CPU.

It loads a Hugging Face folder (config.json + model.safetensors, F32) such as one made by `peri init`, checks
its logits against peri's (`peri logits`) when asked, and times prefill and decode like `peri bench`.

usage: /usr/bin/python3 bench/pldr_torch.py MODEL_DIR [-p 128] [-n 64] [-t 2] [-r 3] [--check LOGITS.bin]
"""
import argparse
import json
import math
import struct
import time

import numpy as np
import torch
import torch.nn.functional as F


def load_safetensors(path, requires_grad=False):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "F32", f"{name}: only F32 weights are supported here"
        b, e = info["data_offsets"]
        arr = np.frombuffer(data, dtype=np.float32, count=(e - b) // 4, offset=b).copy()
        out[name] = torch.from_numpy(arr).reshape(info["shape"]).requires_grad_(requires_grad)
    return out


class PLDR:
    def __init__(self, folder, requires_grad=False):
        cfg = json.load(open(f"{folder}/config.json"))
        self.V, self.D, self.L = cfg["vocab_size"], cfg["hidden_size"], cfg["num_hidden_layers"]
        self.H, self.d = cfg["num_attention_heads"], cfg["head_dim"]
        self.n_res, self.n_dense = cfg.get("num_reslayerA", 8), cfg.get("num_denseA", 2)
        self.eps = cfg.get("layer_norm_eps", 1e-6)
        self.interleaved = cfg.get("reference_rope", True)
        theta = cfg.get("rope_theta", 10000.0)
        self.w = load_safetensors(f"{folder}/model.safetensors", requires_grad)
        inv = 1.0 / (theta ** (torch.arange(0, self.d, 2).float() / self.d))
        ang = torch.einsum("i,j->ij", torch.arange(cfg["max_position_embeddings"]).float(), inv)
        self.cos, self.sin = torch.cos(ang), torch.sin(ang)

    def lin(self, x, name):
        return F.linear(x, self.w[name + ".weight"], self.w.get(name + ".bias"))

    def ln(self, x, name, n):
        return F.layer_norm(x, (n,), self.w[name + ".weight"], self.w[name + ".bias"], self.eps)

    def glu(self, x, name):
        return self.lin(F.silu(self.lin(x, name + ".gluw1")) * self.lin(x, name + ".gluw2"), name + ".gluw3")

    def rope(self, x, pos):  # x [S, H, d]
        c, s = self.cos[pos][:, None, :], self.sin[pos][:, None, :]
        if self.interleaved:
            x0, x1 = x[..., 0::2], x[..., 1::2]
            return torch.stack([x0 * c - x1 * s, x1 * c + x0 * s], -1).flatten(2)
        h = self.d // 2
        x0, x1 = x[..., :h], x[..., h:]
        return torch.cat([x0 * c - x1 * s, x1 * c + x0 * s], -1)

    @torch.no_grad()
    def forward(self, ids, cache):
        """ids: [S] new tokens; cache: dict with per-layer k, v [H, T, d] and G [H, d, d] (empty at prefill)."""
        S, past = len(ids), cache.get("len", 0)
        pos = torch.arange(past, past + S)
        x = self.ln(self.w["decoder.embedding.weight"][ids] * math.sqrt(self.D), "decoder.layernorm1", self.D)
        for l in range(self.L):
            p = f"decoder.dec_layers.{l}."
            q = self.rope(self.lin(x, p + "mha1.wq").view(S, self.H, self.d), pos).transpose(0, 1)
            k = self.rope(self.lin(x, p + "mha1.wk").view(S, self.H, self.d), pos).transpose(0, 1)
            v = self.lin(x, p + "mha1.wv").view(S, self.H, self.d).transpose(0, 1)
            if past == 0:
                A = self.ln(q.transpose(1, 2) @ q, p + "mha1.layernorm1", self.d)
                for r in range(self.n_res):
                    Ain = A
                    for g in range(self.n_dense):
                        A = self.glu(A, p + f"mha1.reslayerAs.{r}.denseAs.{g}")
                    A = self.ln(A + Ain, p + f"mha1.reslayerAs.{r}.layernormA", self.d)
                pl = p + "mha1.plgatt_layer."
                Z = self.w[pl + "Wlst"] @ A + self.w[pl + "blst"]
                AW = Z * F.silu(Z) + 1e-9
                G = self.w[pl + "alst"] @ torch.pow(AW, self.w[pl + "pwlst"]) + self.w[pl + "balst"]
                cache[f"G{l}"] = G
                cache[f"k{l}"], cache[f"v{l}"] = k, v
            else:
                G = cache[f"G{l}"]
                cache[f"k{l}"] = torch.cat([cache[f"k{l}"], k], 1)
                cache[f"v{l}"] = torch.cat([cache[f"v{l}"], v], 1)
            K, Vv = cache[f"k{l}"], cache[f"v{l}"]
            scores = (q @ G) @ K.transpose(1, 2) / math.sqrt(self.d)
            T = K.shape[1]
            mask = torch.triu(torch.full((S, T), float("-inf")), diagonal=past + 1)
            o = (F.softmax(scores + mask, dim=-1) @ Vv).transpose(0, 1).reshape(S, self.D)
            h = self.ln(x + self.lin(o, p + "mha1.dense"), p + "layernorm1", self.D)
            x = self.ln(h + self.glu(h, p + "ffn"), p + "layernorm2", self.D)
        cache["len"] = past + S
        return self.lin(x, "final_layer")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("-p", type=int, default=128)
    ap.add_argument("-n", type=int, default=64)
    ap.add_argument("-t", type=int, default=2)
    ap.add_argument("-r", type=int, default=3)
    ap.add_argument("--check", help="peri logits file of the same --ids (prefill rows) to compare with")
    ap.add_argument("--ids", help="ids for --check")
    a = ap.parse_args()
    torch.set_num_threads(a.t)
    m = PLDR(a.model)
    if a.check:
        ids = torch.tensor([int(t) for t in a.ids.split()])
        ref = np.fromfile(a.check, dtype=np.float32).reshape(-1, m.V)[: len(ids)]
        got = m.forward(ids, {}).numpy()
        print(f"max abs diff vs peri: {np.abs(got - ref).max():.3g}")
        return
    ids = torch.tensor([(i * 7919 + 13) % m.V for i in range(a.p + a.n)])
    best_pp = best_tg = 1e30
    for _ in range(a.r):
        cache = {}
        t0 = time.perf_counter()
        m.forward(ids[: a.p], cache)
        best_pp = min(best_pp, time.perf_counter() - t0)
        t0 = time.perf_counter()
        for i in range(a.n):
            m.forward(ids[a.p + i : a.p + i + 1], cache)
        best_tg = min(best_tg, time.perf_counter() - t0)
    import os
    blas = os.path.realpath("/usr/lib/x86_64-linux-gnu/libblas.so.3")  # Debian's torch uses the system BLAS
    core = "?"
    try:  # OpenBLAS picks its kernels from the CPU model: show which (Prescott is its SSE3 fallback)
        import ctypes
        lib = ctypes.CDLL(blas)
        lib.openblas_get_corename.restype = ctypes.c_char_p
        core = lib.openblas_get_corename().decode()
    except (OSError, AttributeError):
        pass
    print(f"torch {torch.__version__}, threads {a.t}, BLAS: {blas} (core {core}, "
          f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')})")
    print(f"prefill pp{a.p}: {a.p / best_pp:.1f} tokens/s ({best_pp:.3f} s)")
    print(f"decode tg{a.n} at depth {a.p}: {a.n / best_tg:.2f} tokens/s ({1e3 * best_tg / a.n:.2f} ms/token)")


if __name__ == "__main__":
    main()
