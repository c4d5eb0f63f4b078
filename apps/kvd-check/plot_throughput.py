#!/usr/bin/env python3
"""Plots throughput vs connections from a kvd-check bench CSV (the median rows).

usage: plot_throughput.py BENCH.csv OUT.png
"""
import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    src, dst = sys.argv[1], sys.argv[2]
    rows = [r for r in csv.DictReader(open(src)) if r["kind"] == "median"]
    panels = sorted({(int(r["get_pct"]), int(r["size"])) for r in rows}, key=lambda x: (-x[0], x[1]))
    servers = list(dict.fromkeys(r["server"] for r in rows))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (g, size) in zip(axes[0], panels):
        for s in servers:
            pts = sorted((int(r["conns"]), float(r["ops_per_s"]) / 1000) for r in rows
                         if r["server"] == s and int(r["get_pct"]) == g and int(r["size"]) == size)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=s)
        ax.set_xscale("log", base=2)
        ax.set_title(f"{g}% get, {size} B values")
        ax.set_xlabel("connections")
        ax.set_ylabel("kops/s (median)")
        ax.grid(True, alpha=0.3)
        ax.set_ylim(bottom=0)
    axes[0][0].legend()
    fig.suptitle("memcached-protocol servers, 2 server threads, loopback, client on the same 2 vCPUs")
    fig.tight_layout()
    fig.savefig(dst, dpi=110)


if __name__ == "__main__":
    main()
