// UTF-8 decoding and NFC (canonical decomposition, canonical ordering, canonical composition) over the
// generated tables in unicode_data.c; Hangul syllables are composed and decomposed algorithmically.
#include "tokenizers/unicode.h"

#include <stdlib.h>
#include <string.h>

size_t peri_utf8_decode(const unsigned char *s, size_t n, uint32_t *cp) {
    unsigned c = s[0];
    if (c < 0x80) { *cp = c; return 1; }
    if (c < 0xC2) return 0;
    if (c < 0xE0) {
        if (n < 2 || (s[1] & 0xC0) != 0x80) return 0;
        *cp = ((c & 0x1F) << 6) | (s[1] & 0x3F);
        return 2;
    }
    if (c < 0xF0) {
        if (n < 3 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80) return 0;
        uint32_t v = ((c & 0x0F) << 12) | ((uint32_t)(s[1] & 0x3F) << 6) | (s[2] & 0x3F);
        if (v < 0x800 || (v >= 0xD800 && v <= 0xDFFF)) return 0;
        *cp = v;
        return 3;
    }
    if (c < 0xF5) {
        if (n < 4 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80 || (s[3] & 0xC0) != 0x80) return 0;
        uint32_t v = ((c & 0x07) << 18) | ((uint32_t)(s[1] & 0x3F) << 12) | ((uint32_t)(s[2] & 0x3F) << 6) |
                     (s[3] & 0x3F);
        if (v < 0x10000 || v > 0x10FFFF) return 0;
        *cp = v;
        return 4;
    }
    return 0;
}

// Unicode 15 §3.9 "U+FFFD substitution of maximal subparts" (table 3-7 ranges of the second byte).
size_t peri_utf8_invalid_len(const unsigned char *s, size_t n) {
    unsigned c = s[0];
    size_t need;
    unsigned lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) need = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        need = 3;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 4;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
    } else return 1;
    size_t i = 1;
    if (i < n && s[i] >= lo && s[i] <= hi) {
        i++;
        while (i < need && i < n && (s[i] & 0xC0) == 0x80) i++;
    }
    return i;
}

size_t peri_utf8_encode(uint32_t cp, char *out) {
    unsigned char *o = (unsigned char *)out;
    if (cp < 0x80) { o[0] = (unsigned char)cp; return 1; }
    if (cp < 0x800) { o[0] = 0xC0 | (cp >> 6); o[1] = 0x80 | (cp & 0x3F); return 2; }
    if (cp < 0x10000) {
        o[0] = 0xE0 | (cp >> 12); o[1] = 0x80 | ((cp >> 6) & 0x3F); o[2] = 0x80 | (cp & 0x3F);
        return 3;
    }
    o[0] = 0xF0 | (cp >> 18); o[1] = 0x80 | ((cp >> 12) & 0x3F); o[2] = 0x80 | ((cp >> 6) & 0x3F);
    o[3] = 0x80 | (cp & 0x3F);
    return 4;
}

enum { SBASE = 0xAC00, LBASE = 0x1100, VBASE = 0x1161, TBASE = 0x11A7, LCOUNT = 19, VCOUNT = 21, TCOUNT = 28,
       NCOUNT = VCOUNT * TCOUNT, SCOUNT = LCOUNT * NCOUNT };

static unsigned ccc_of(uint32_t cp) {
    if (!(peri_uni_flags(cp) & PERI_UNI_NFC)) return 0;
    size_t lo = 0, hi = peri_uni_ccc_n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        uint32_t k = peri_uni_ccc[mid] >> 8;
        if (k == cp) return peri_uni_ccc[mid] & 0xFF;
        if (k < cp) lo = mid + 1; else hi = mid;
    }
    return 0;
}

static const uint32_t *decomp_of(uint32_t cp, uint32_t *len) {
    size_t lo = 0, hi = peri_uni_decomp_n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        uint32_t k = peri_uni_decomp[mid][0];
        if (k == cp) { *len = peri_uni_decomp[mid][2]; return peri_uni_decomp_data + peri_uni_decomp[mid][1]; }
        if (k < cp) lo = mid + 1; else hi = mid;
    }
    return NULL;
}

static uint32_t compose(uint32_t a, uint32_t b) {
    if (a >= LBASE && a < LBASE + LCOUNT && b >= VBASE && b < VBASE + VCOUNT)
        return SBASE + ((a - LBASE) * VCOUNT + (b - VBASE)) * TCOUNT;
    if (a >= SBASE && a < SBASE + SCOUNT && (a - SBASE) % TCOUNT == 0 && b > TBASE && b < TBASE + TCOUNT)
        return a + (b - TBASE);
    size_t lo = 0, hi = peri_uni_comp_n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        const uint32_t *e = peri_uni_comp[mid];
        if (e[0] == a && e[1] == b) return e[2];
        if (e[0] < a || (e[0] == a && e[1] < b)) lo = mid + 1; else hi = mid;
    }
    return 0;
}

int peri_nfc_quick(const char *in, size_t n) {
    const unsigned char *s = (const unsigned char *)in;
    for (size_t i = 0; i < n;) {
        if (s[i] < 0xCC) { i += s[i] < 0x80 ? 1 : 2; continue; }   // below U+0300: always stable
        uint32_t cp;
        size_t l = peri_utf8_decode(s + i, n - i, &cp);
        if (!l) { i++; continue; }
        if (peri_uni_flags(cp) & PERI_UNI_NFC) return 0;
        i += l;
    }
    return 1;
}

static int reserve(char **out, size_t *cap, size_t need) {
    if (need <= *cap) return 0;
    size_t nc = *cap ? *cap : 64;
    while (nc < need) nc *= 2;
    char *p = realloc(*out, nc);
    if (!p) return -1;
    *out = p;
    *cap = nc;
    return 0;
}

int peri_nfc(const char *in, size_t n, char **out, size_t *out_len, size_t *cap) {
    // Decompose into a code point buffer (full canonical decompositions are at most 4 code points).
    uint32_t *cps = malloc((n * 4 + 1) * sizeof *cps);
    if (!cps) return -1;
    size_t m = 0;
    const unsigned char *s = (const unsigned char *)in;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        size_t l = peri_utf8_decode(s + i, n - i, &cp);
        if (!l) { cp = 0xFFFD; l = 1; }
        i += l;
        if (cp >= SBASE && cp < SBASE + SCOUNT) {
            uint32_t si = cp - SBASE;
            cps[m++] = LBASE + si / NCOUNT;
            cps[m++] = VBASE + (si % NCOUNT) / TCOUNT;
            if (si % TCOUNT) cps[m++] = TBASE + si % TCOUNT;
            continue;
        }
        uint32_t dl = 0;
        const uint32_t *d = (peri_uni_flags(cp) & PERI_UNI_NFC) ? decomp_of(cp, &dl) : NULL;
        if (d) { memcpy(cps + m, d, dl * sizeof *d); m += dl; }
        else cps[m++] = cp;
    }
    // Canonical ordering: stable insertion sort of each run of non-starters by combining class.
    for (size_t i = 1; i < m; i++) {
        unsigned c = ccc_of(cps[i]);
        if (!c) continue;
        size_t j = i;
        uint32_t v = cps[i];
        while (j > 0) {
            unsigned pc = ccc_of(cps[j - 1]);
            if (pc == 0 || pc <= c) break;
            cps[j] = cps[j - 1];
            j--;
        }
        cps[j] = v;
    }
    // Canonical composition (UAX #15 sample algorithm).
    if (m > 0) {
        size_t starter = 0, w = 1;
        unsigned last = ccc_of(cps[0]);
        if (last) last = 256;
        for (size_t i = 1; i < m; i++) {
            uint32_t ch = cps[i];
            unsigned c = ccc_of(ch);
            uint32_t comp = compose(cps[starter], ch);
            if (comp && (last < c || last == 0)) { cps[starter] = comp; continue; }
            if (c == 0) starter = w;
            last = c;
            cps[w++] = ch;
        }
        m = w;
    }
    if (reserve(out, cap, *out_len + m * 4 + 1)) { free(cps); return -1; }
    for (size_t i = 0; i < m; i++) *out_len += peri_utf8_encode(cps[i], *out + *out_len);
    free(cps);
    return 0;
}
