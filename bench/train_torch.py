#!/usr/bin/python3
"""PyTorch peer for `peri train` on PLDR-LLM: one training step (forward, backward, clipping, AdamW) of the same
model shape in plain PyTorch autograd, our own code (the operations of bench/pldr_torch.py, batched, in training
mode). It loads a Hugging Face folder with F32 weights (e.g. `peri init`), runs the original PLDR-LLM loss
convention (inputs ids[:, :-1], targets ids[:, 1:]) and prints the loss of the first step, so it can be compared
with `peri grad --orig` on the same ids, then the time per step and tokens/s.

usage: /usr/bin/python3 bench/train_torch.py MODEL_DIR [--seq 256] [--batch 8] [--steps 5] [-t 2] [--print-ids]
"""
import argparse
import math
import time

import torch
import torch.nn.functional as F

from pldr_torch import PLDR


class PLDRTrain(PLDR):
    """The inference model of bench/pldr_torch.py with trainable weights and a batched, position-0 RoPE."""

    def __init__(self, folder):
        super().__init__(folder, requires_grad=True)

    def rope(self, x):  # x [B, T, H, d]
        T = x.shape[1]
        c, s = self.cos[:T][None, :, None, :], self.sin[:T][None, :, None, :]
        if self.interleaved:
            x0, x1 = x[..., 0::2], x[..., 1::2]
            return torch.stack([x0 * c - x1 * s, x1 * c + x0 * s], -1).flatten(3)
        h = self.d // 2
        x0, x1 = x[..., :h], x[..., h:]
        return torch.cat([x0 * c - x1 * s, x1 * c + x0 * s], -1)

    def loss(self, ids):
        """ids [B, T+1]: mean cross-entropy of ids[:, 1:] given ids[:, :-1] (target 0 ignored, keys 0 masked)."""
        x_ids, y = ids[:, :-1], ids[:, 1:]
        B, T = x_ids.shape
        H, d, D = self.H, self.d, self.D
        x = self.ln(self.w["decoder.embedding.weight"][x_ids] * math.sqrt(D), "decoder.layernorm1", D)
        mask = torch.triu(torch.full((T, T), float("-inf")), diagonal=1)[None, None]
        mask = mask.masked_fill((x_ids == 0)[:, None, None, :], float("-inf"))
        for l in range(self.L):
            p = f"decoder.dec_layers.{l}."
            q = self.rope(self.lin(x, p + "mha1.wq").view(B, T, H, d)).transpose(1, 2)   # [B, H, T, d]
            k = self.rope(self.lin(x, p + "mha1.wk").view(B, T, H, d)).transpose(1, 2)
            v = self.lin(x, p + "mha1.wv").view(B, T, H, d).transpose(1, 2)
            A = self.ln(q.transpose(2, 3) @ q, p + "mha1.layernorm1", d)                   # [B, H, d, d]
            for r in range(self.n_res):
                Ain = A
                for g in range(self.n_dense):
                    A = self.glu(A, p + f"mha1.reslayerAs.{r}.denseAs.{g}")
                A = self.ln(A + Ain, p + f"mha1.reslayerAs.{r}.layernormA", d)
            pl = p + "mha1.plgatt_layer."
            Z = self.w[pl + "Wlst"] @ A + self.w[pl + "blst"]
            AW = Z * F.silu(Z) + 1e-9
            G = self.w[pl + "alst"] @ torch.pow(AW, self.w[pl + "pwlst"]) + self.w[pl + "balst"]
            scores = (q @ G) @ k.transpose(2, 3) / math.sqrt(d) + mask
            o = (F.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(B, T, D)
            h = self.ln(x + self.lin(o, p + "mha1.dense"), p + "layernorm1", D)
            x = self.ln(h + self.glu(h, p + "ffn"), p + "layernorm2", D)
        logits = self.lin(x, "final_layer")
        return F.cross_entropy(logits.reshape(-1, self.V), y.reshape(-1), ignore_index=0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("-t", type=int, default=2)
    ap.add_argument("--print-ids", action="store_true", help="print the first batch as peri grad --ids options")
    a = ap.parse_args()
    torch.set_num_threads(a.t)
    m = PLDRTrain(a.model)
    params = list(m.w.values())
    opt = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    g = torch.Generator().manual_seed(1)
    times = []
    for step in range(a.steps):
        ids = torch.randint(4, m.V, (a.batch, a.seq + 1), generator=g)
        if step == 0 and a.print_ids:
            print(" ".join('--ids "' + " ".join(str(int(t)) for t in row) + '"' for row in ids))
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = m.loss(ids)
        loss.backward()
        for p in params:
            p.grad.clamp_(-1.0, 1.0)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        times.append(time.perf_counter() - t0)
        if step == 0:
            print(f"step 1 loss {loss.item():.6f}")
    import os
    blas = os.path.realpath("/usr/lib/x86_64-linux-gnu/libblas.so.3")
    best = min(times[1:]) if len(times) > 1 else times[0]
    med = sorted(times)[len(times) // 2]
    n_tok = a.batch * a.seq
    print(f"torch {torch.__version__}, threads {a.t}, BLAS: {blas}")
    print(f"{sum(p.numel() for p in params)} parameters, batch {a.batch} x seq {a.seq} = {n_tok} tokens per step")
    print(f"step: best {best:.3f} s ({n_tok / best:.0f} tokens/s), median {med:.3f} s ({n_tok / med:.0f} tokens/s)")


if __name__ == "__main__":
    main()
