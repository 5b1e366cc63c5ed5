"""Markdown tables for BENCHMARKS.md from the JSON files of benchmarks/run_cpu.sh or run_gpu.sh.

Usage: python benchmarks/summarize.py runs/bench/cpu   (or the GPU results folder)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def fmt(x: float | None, spec: str = ".1f") -> str:
    return "-" if x is None else format(x, spec)


def training_table(results: dict[str, dict]) -> list[str]:
    lines = [
        "| run | body (stage, features) | body chunk | naive s/epoch | factorised s/epoch | speedup | ideal | "
        "frozen-body s/epoch | peak RSS naive / factorised (MB) | load at start / end |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        shape = "x".join(map(str, r["feature_shape"]))
        m = r["machine"]
        lines.append(
            f"| {name} | {r['backbone']} {r['stage']}, {shape} ({r['weights']}) | {r['body_chunk']} | "
            f"{fmt(r['naive_s_per_epoch'])} | {fmt(r['factorised_s_per_epoch'], '.2f')} | "
            f"**{fmt(r['speedup'])}x** | {fmt(r['ideal_speedup'], '.0f')}x | "
            f"{fmt(r['factorised_frozen_s_per_epoch'], '.2f')} | "
            f"{fmt(r.get('naive_peak_rss_mb'), '.0f')} / {fmt(r.get('factorised_peak_rss_mb'), '.0f')} | "
            f"{fmt(m.get('load_average_1min_at_start'))} / {fmt(m.get('load_average_1min'))} |"
        )
    return lines


def breakdown_table(results: dict[str, dict]) -> list[str]:
    parts = ["augment", "body_forward_no_grad", "head_forward_backward", "body_forward_backward", "optimizer"]
    lines = ["| run | " + " | ".join(p.replace("_", " ") for p in parts) + " | body share | head share |",
             "|---|" + "---|" * (len(parts) + 2)]
    for name, r in results.items():
        b = r["factorised_breakdown_s"]
        total = sum(b.values())
        body = b["body_forward_no_grad"] + b["body_forward_backward"]
        cells = " | ".join(f"{b[p]:.2f} s" for p in parts)
        lines.append(f"| {name} | {cells} | {100 * body / total:.1f}% | "
                     f"{100 * b['head_forward_backward'] / total:.1f}% |")
    return lines


def floor_table(results: dict[str, dict]) -> list[str]:
    lines = ["| run | GFLOP/image forward | GFLOP/image trained | matmul GFLOP/s (measured in the run) | "
             "floor factorised (1 pass / 2 passes) | measured | floor naive | measured |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['body_gflop_forward_per_image']:.2f} | {r['body_gflop_train_per_image']:.2f} | "
            f"{r['matmul_gflops']:.0f} | {r['floor_factorised_s']:.2f} / {r['floor_factorised_two_pass_s']:.2f} s | "
            f"{r['factorised_s_per_epoch']:.2f} s | {r['floor_naive_s']:.0f} s | {r['naive_s_per_epoch']:.0f} s |"
        )
    return lines


def head_table(rows: list[dict]) -> list[str]:
    gpu = any("peak_cuda_mb" in r for r in rows)
    lines = ["| images | pairs | s/epoch | CPU s | pairs/s | peak RSS (MB) | RSS before features (MB) |"
             + (" peak GPU (MB) |" if gpu else ""),
             "|---|---|---|---|---|---|---|" + ("---|" if gpu else "")]
    for r in rows:
        lines.append(
            f"| {r['images']:,} | {r['pairs']:,} | {r['seconds']:.2f} | {r['cpu_seconds']:.2f} | "
            f"{r['pairs_per_s'] / 1e6:.2f} M | {r['peak_rss_mb']:.0f} | {r['rss_before_features_mb']:.0f} |"
            + (f" {r.get('peak_cuda_mb', 0):.0f} |" if gpu else "")
        )
    return lines


def main(folder: str) -> None:
    files = {p.stem: json.loads(p.read_text()) for p in sorted(Path(folder).glob("*.json"))}
    training = {k: v for k, v in files.items() if "speedup" in v}
    out: list[str] = []
    if training:
        out += ["Naive against factorised:", "", *training_table(training), "",
                "Where the factorised epoch goes:", "", *breakdown_table(training), "",
                "Theoretical floor:", "", *floor_table(training), ""]
    for name, r in files.items():
        if r.get("head_scaling"):
            out += [f"Head scaling ({name}, features {'x'.join(map(str, r['head_scaling'][0]['feature_shape']))}):",
                    "", *head_table(r["head_scaling"]), ""]
        if r.get("paper_schedule"):
            out += [f"Paper schedule ({name}):", "", "```", json.dumps(r["paper_schedule"], indent=2), "```", ""]
    print("\n".join(out))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/bench/cpu")
