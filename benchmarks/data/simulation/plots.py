"""Plots of the simulation benchmarks' saved outputs (sensitivity-n200.txt, the largest A/A run:
aa-200xBLOCK.txt)."""

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

out = str(Path(__file__).resolve().parent) + "/"
# sensitivity
rows = []
for line in Path(out + "sensitivity-n200.txt").read_text().splitlines():
    m = re.match(r"\| (.+?) \| ([\d.]+)% \| ([\d.]+)% \| ([-+\d.]+) \|", line)
    if m and m.group(1) != "personas":
        rows.append((m.group(1), float(m.group(2)), float(m.group(3))))
rows = list(dict.fromkeys(rows))
labels = [r[0] for r in rows][::-1]
fig, ax = plt.subplots(figsize=(7, 4.8))
y = range(len(labels))
ax.scatter([r[1] for r in rows][::-1], y, label="hybrid", marker="o")
ax.scatter([r[2] for r in rows][::-1], y, label="pure_llm", marker="s")
for i, r in enumerate(rows[::-1]):
    ax.plot([r[2], r[1]], [i, i], color="grey", lw=0.8)
ax.set_yticks(list(y))
ax.set_yticklabels(labels)
ax.set_xlabel("close rate, % (200 customers per arm, paired)")
ax.set_title(
    "Sensitivity: close rate by arm as persona parameters move\n"
    "(script-sampler LLM stand-in, tf-idf embedder)"
)
ax.legend(loc="upper right")
ax.grid(axis="x", alpha=0.3)
fig.tight_layout()
fig.savefig(out + "sensitivity.png", dpi=110)
# A/A
aa = []
aa_runs = sorted(Path(out).glob("aa-200x*.txt"), key=lambda p: int(p.stem.split("x")[1]))
aa_file = aa_runs[-1]
for line in aa_file.read_text().splitlines():
    m = re.match(r"\| (.+?) \| (\d+)/(\d+) \| ([\d.]+)% \| ([\d.]+)-([\d.]+)% \|", line)
    if m:
        aa.append(
            (m.group(1).split(" (")[0], float(m.group(4)), float(m.group(5)), float(m.group(6)))
        )
fig, ax = plt.subplots(figsize=(8, 2.8))
for i, (_name, r, lo, hi) in enumerate(aa[::-1]):
    ax.errorbar(r, i, xerr=[[r - lo], [hi - r]], fmt="o", capsize=4, color="C0")
ax.axvline(5, color="C3", ls="--", label="alpha = 5%")
ax.set_yticks(range(len(aa)))
ax.set_yticklabels([a[0] for a in aa[::-1]])
ax.set_xlabel("false positives, % (200 A/A runs, 95% Wilson CI)")
ax.set_title(f"A/A, 200 replications of {aa_file.stem.split('x')[1]} customers per arm")
ax.legend(loc="lower right")
ax.grid(axis="x", alpha=0.3)
fig.tight_layout()
fig.savefig(out + "aa.png", dpi=110)
print("ok", len(rows), len(aa))
