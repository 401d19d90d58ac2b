// Forward and backward of every training op, written once for a real type R and included twice by
// tops.c: float (the trainer's kernels) and double (the references the finite-difference tests check).
// Conventions: row-major; backward functions ACCUMULATE (+=) into every gradient they write, so a
// tensor used twice sums its gradients and the caller zeroes once per step. NULL bias = no bias.
// Requires: R (the real type), FN(name) (name with the type suffix), EXP/LOG/POW/SQRT of type R, and
// DOT(a, b, n) / AXPY(y, a, x, n) on arrays of R (the attention's inner loops).

// ---- linear: y[n,M] = x[n,K] W[M,K]^T + b -------------------------------------------------------------
void FN(peri_tr_linear_fwd)(R *y, const R *x, const R *W, const R *b, int64_t n, int64_t K, int64_t M) {
    for (int64_t i = 0; i < n; i++)
        for (int64_t m = 0; m < M; m++) {
            R acc = b ? b[m] : 0;
            const R *w = W + m * K, *xi = x + i * K;
            for (int64_t k = 0; k < K; k++) acc += xi[k] * w[k];
            y[i * M + m] = acc;
        }
}
// dx += dy W; dW += dy^T x; db += sum_rows dy. dx / dW / db may be NULL (not needed).
void FN(peri_tr_linear_bwd)(R *dx, R *dW, R *db, const R *dy, const R *x, const R *W, int64_t n, int64_t K,
                       int64_t M) {
    for (int64_t i = 0; i < n; i++) {
        const R *g = dy + i * M;
        for (int64_t m = 0; m < M; m++) {
            R gm = g[m];
            if (gm == 0) continue;
            if (dx) { R *d = dx + i * K; const R *w = W + m * K; for (int64_t k = 0; k < K; k++) d[k] += gm * w[k]; }
            if (dW) { R *d = dW + m * K; const R *xi = x + i * K; for (int64_t k = 0; k < K; k++) d[k] += gm * xi[k]; }
            if (db) db[m] += gm;
        }
    }
}

// ---- small matrix product C[m,n] = A[m,k] B[k,n] (the PLGA's W@A and a@A_P) ---------------------------
void FN(peri_tr_mm_fwd)(R *C, const R *A, const R *B, int m, int n, int k) {
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            R acc = 0;
            for (int q = 0; q < k; q++) acc += A[i * k + q] * B[q * n + j];
            C[i * n + j] = acc;
        }
}
// dA += dC B^T; dB += A^T dC
void FN(peri_tr_mm_bwd)(R *dA, R *dB, const R *dC, const R *A, const R *B, int m, int n, int k) {
    for (int i = 0; i < m; i++)
        for (int q = 0; q < k; q++) {
            R acc = 0;
            for (int j = 0; j < n; j++) acc += dC[i * n + j] * B[q * n + j];
            if (dA) dA[i * k + q] += acc;
            if (dB) for (int j = 0; j < n; j++) dB[q * n + j] += A[i * k + q] * dC[i * n + j];
        }
}

// ---- LayerNorm over rows of n (stats saved for the backward) ------------------------------------------
void FN(peri_tr_layernorm_fwd)(R *y, R *mean, R *rstd, const R *x, const R *w, const R *b, int64_t rows, int64_t n,
                          R eps) {
    for (int64_t r = 0; r < rows; r++) {
        const R *xr = x + r * n;
        R mu = 0, var = 0;
        for (int64_t i = 0; i < n; i++) mu += xr[i];
        mu /= (R)n;
        for (int64_t i = 0; i < n; i++) var += (xr[i] - mu) * (xr[i] - mu);
        var /= (R)n;
        R rs = 1 / SQRT(var + eps);
        mean[r] = mu;
        rstd[r] = rs;
        for (int64_t i = 0; i < n; i++) y[r * n + i] = (xr[i] - mu) * rs * (w ? w[i] : 1) + (b ? b[i] : 0);
    }
}
void FN(peri_tr_layernorm_bwd)(R *dx, R *dw, R *db, const R *dy, const R *x, const R *mean, const R *rstd, const R *w,
                          int64_t rows, int64_t n) {
    for (int64_t r = 0; r < rows; r++) {
        const R *xr = x + r * n, *g = dy + r * n;
        R mu = mean[r], rs = rstd[r], s1 = 0, s2 = 0;
        for (int64_t i = 0; i < n; i++) {
            R xh = (xr[i] - mu) * rs, gx = g[i] * (w ? w[i] : 1);
            s1 += gx;
            s2 += gx * xh;
            if (dw) dw[i] += g[i] * xh;
            if (db) db[i] += g[i];
        }
        s1 /= (R)n;
        s2 /= (R)n;
        for (int64_t i = 0; i < n; i++) {
            R xh = (xr[i] - mu) * rs, gx = g[i] * (w ? w[i] : 1);
            dx[r * n + i] += rs * (gx - s1 - xh * s2);
        }
    }
}

// ---- RMSNorm: y = w * x / sqrt(mean(x^2) + eps) -------------------------------------------------------
void FN(peri_tr_rmsnorm_fwd)(R *y, R *rstd, const R *x, const R *w, int64_t rows, int64_t n, R eps) {
    for (int64_t r = 0; r < rows; r++) {
        const R *xr = x + r * n;
        R ss = 0;
        for (int64_t i = 0; i < n; i++) ss += xr[i] * xr[i];
        R rs = 1 / SQRT(ss / (R)n + eps);
        rstd[r] = rs;
        for (int64_t i = 0; i < n; i++) y[r * n + i] = xr[i] * rs * w[i];
    }
}
void FN(peri_tr_rmsnorm_bwd)(R *dx, R *dw, const R *dy, const R *x, const R *rstd, const R *w, int64_t rows, int64_t n) {
    for (int64_t r = 0; r < rows; r++) {
        const R *xr = x + r * n, *g = dy + r * n;
        R rs = rstd[r], s = 0;
        for (int64_t i = 0; i < n; i++) {
            s += g[i] * w[i] * xr[i];
            if (dw) dw[i] += g[i] * xr[i] * rs;
        }
        s *= rs * rs * rs / (R)n;
        for (int64_t i = 0; i < n; i++) dx[r * n + i] += g[i] * w[i] * rs - xr[i] * s;
    }
}

// ---- RoPE on n_rot leading dims of a vector, in place; inverse = the transpose (rotation by -angle) -----
// interleaved: pairs (2i, 2i+1) (GPT-J); otherwise pairs (i, i + n_rot/2) (NeoX).
void FN(peri_tr_rope)(R *x, int n_rot, const float *cs, const float *sn, int interleaved, int inverse) {
    int half = n_rot / 2;
    for (int i = 0; i < half; i++) {
        int i0 = interleaved ? 2 * i : i, i1 = interleaved ? 2 * i + 1 : i + half;
        R c = cs[i], s = inverse ? -(R)sn[i] : (R)sn[i];
        R a = x[i0], b = x[i1];
        x[i0] = a * c - b * s;
        x[i1] = b * c + a * s;
    }
}

// ---- elementwise activations -----------------------------------------------------------------------------
static inline R FN(peri_tr_sigmoid)(R z) { return 1 / (1 + EXP(-z)); }

// GLU hidden: h = silu(a) * b
void FN(peri_tr_swiglu_fwd)(R *h, const R *a, const R *b, int64_t n) {
    for (int64_t i = 0; i < n; i++) h[i] = a[i] * FN(peri_tr_sigmoid)(a[i]) * b[i];
}
void FN(peri_tr_swiglu_bwd)(R *da, R *db, const R *dh, const R *a, const R *b, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        R s = FN(peri_tr_sigmoid)(a[i]);
        da[i] += dh[i] * b[i] * s * (1 + a[i] * (1 - s));
        db[i] += dh[i] * a[i] * s;
    }
}
// iSwiGLU: y = z * silu(z) = z^2 sigmoid(z)
void FN(peri_tr_iswiglu_fwd)(R *y, const R *z, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = z[i] * z[i] * FN(peri_tr_sigmoid)(z[i]);
}
void FN(peri_tr_iswiglu_bwd)(R *dz, const R *dy, const R *z, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        R s = FN(peri_tr_sigmoid)(z[i]);
        dz[i] += dy[i] * (2 * z[i] * s + z[i] * z[i] * s * (1 - s));
    }
}
// power law y = x^p (x > 0): dx += dy p x^(p-1) = dy p y / x; dp += dy y ln x
void FN(peri_tr_pow_fwd)(R *y, const R *x, const R *p, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = POW(x[i], p[i]);
}
void FN(peri_tr_pow_bwd)(R *dx, R *dp, const R *dy, const R *x, const R *p, const R *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        if (dx) dx[i] += dy[i] * p[i] * POW(x[i], p[i] - 1);
        if (dp) dp[i] += dy[i] * y[i] * LOG(x[i]);
    }
}
// squared ReLU
void FN(peri_tr_relu2_fwd)(R *y, const R *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = x[i] > 0 ? x[i] * x[i] : 0;
}
void FN(peri_tr_relu2_bwd)(R *dx, const R *dy, const R *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) if (x[i] > 0) dx[i] += dy[i] * 2 * x[i];
}

// ---- causal attention of one head: O[T,dv] = softmax(Q K^T * scale, causal) V ----------------------------
// keep[s] == 0 masks key s (NULL: all kept). P [T,T] saved for the backward (masked entries 0).
// A row with no visible key gets O = 0 (cannot happen with the causal diagonal unless masked).
void FN(peri_tr_attn_fwd)(R *O, R *P, const R *Q, const R *K, const R *V, const uint8_t *keep, int T, int dk, int dv,
                     R scale) {
    for (int t = 0; t < T; t++) {
        R *p = P + (int64_t)t * T, mx = -INFINITY;
        for (int s = 0; s < T; s++) {
            if (s > t || (keep && !keep[s])) { p[s] = -INFINITY; continue; }
            p[s] = DOT(Q + (int64_t)t * dk, K + (int64_t)s * dk, dk) * scale;
            if (p[s] > mx) mx = p[s];
        }
        R sum = 0;
        for (int s = 0; s < T; s++) { p[s] = p[s] == -INFINITY ? 0 : EXP(p[s] - mx); sum += p[s]; }
        R *o = O + (int64_t)t * dv;
        for (int i = 0; i < dv; i++) o[i] = 0;
        if (sum == 0) continue;
        for (int s = 0; s < T; s++) {
            p[s] /= sum;
            if (p[s] != 0) AXPY(o, p[s], V + (int64_t)s * dv, dv);
        }
    }
}
// tmp: T scratch values
void FN(peri_tr_attn_bwd)(R *dQ, R *dK, R *dV, const R *dO, const R *P, const R *Q, const R *K, const R *V, int T, int dk,
                     int dv, R scale, R *tmp) {
    for (int t = 0; t < T; t++) {
        const R *p = P + (int64_t)t * T, *g = dO + (int64_t)t * dv;
        R dot = 0;
        for (int s = 0; s <= t; s++) {
            R acc = DOT(g, V + (int64_t)s * dv, dv);
            tmp[s] = acc;
            dot += p[s] * acc;
            if (p[s] != 0) AXPY(dV + (int64_t)s * dv, p[s], g, dv);
        }
        for (int s = 0; s <= t; s++) {
            R ds = p[s] * (tmp[s] - dot) * scale;
            if (ds == 0) continue;
            AXPY(dQ + (int64_t)t * dk, ds, K + (int64_t)s * dk, dk);
            AXPY(dK + (int64_t)s * dk, ds, Q + (int64_t)t * dk, dk);
        }
    }
}

// ---- cross-entropy of one row of logits: returns -log softmax(z)[label]; dz = (softmax - onehot) * w -------
R FN(peri_tr_xent)(R *dz, const R *z, int64_t n, int64_t label, R w) {
    R mx = z[0];
    for (int64_t i = 1; i < n; i++) if (z[i] > mx) mx = z[i];
    R sum = 0;
    for (int64_t i = 0; i < n; i++) sum += EXP(z[i] - mx);
    R lse = mx + LOG(sum);
    if (dz) {
        for (int64_t i = 0; i < n; i++) dz[i] += EXP(z[i] - lse) * w;
        dz[label] -= w;
    }
    return lse - z[label];
}
