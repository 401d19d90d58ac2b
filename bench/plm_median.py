#!/usr/bin/python3
"""Medians per type of a bench/plm.sh log: peri and llama.cpp pp512 / tg128 and their ratios. Reads both peri bench's
table (the rows are llama-bench's) and the older "prefill pp512: ..." lines.

usage: bench/plm_median.py LOG   (the output of bench/plm.sh with ROUNDS >= 1)
"""
import re, sys, statistics as st
txt = open(sys.argv[1]).read()
res = {}
cur = None
for line in txt.splitlines():
    m = re.match(r'## round (\d+) (\S+) (peri|llama.cpp)', line)
    if m: cur = (m.group(2), m.group(3)); continue
    if line.startswith('## '): cur = None; continue   # depth and scaling runs are not rounds
    if not cur: continue
    ty, eng = cur
    d = res.setdefault(ty, {}).setdefault(eng, {'pp': [], 'tg': [], 'bound': []})
    m = re.search(r'prefill pp512: ([\d.]+)', line)
    if m: d['pp'].append(float(m.group(1)))
    m = re.search(r'decode tg128 .*?: ([\d.]+) tokens/s.*?(\d+)% of the bound', line)
    if m: d['tg'].append(float(m.group(1))); d['bound'].append(int(m.group(2)))
    m = re.search(r'\|\s+pp512 \|\s+([\d.]+)', line)
    if m: d['pp'].append(float(m.group(1)))
    m = re.search(r'\|\s+tg128 \|\s+([\d.]+)', line)
    if m: d['tg'].append(float(m.group(1)))
    m = re.match(r'tg128: (\d+)% of the bound', line)   # peri bench's table (session 3 on)
    if m: d['bound'].append(int(m.group(1)))
for ty, e in res.items():
    p, l = e.get('peri'), e.get('llama.cpp')
    if not p or not l: continue
    mp, ml = st.median(p['pp']), st.median(l['pp'])
    tp, tl = st.median(p['tg']), st.median(l['tg'])
    print(f"{ty}: pp512 peri {p['pp']} med {mp:.1f} | llama {l['pp']} med {ml:.2f} | ratio {mp/ml:.2f}")
    print(f"{ty}: tg128 peri {p['tg']} med {tp:.2f} ({p['bound']}% bound) | llama {l['tg']} med {tl:.2f} | ratio {tp/tl:.2f}")
