"""Start-up cost of the command line (issue 21, "Fast start"): wall time and peak memory of `python -c pass`
against `siamrdm --help`, `score --help`, a real `score` (with its default permutation test, and without),
`noise-ceiling` and `data-info` on the Algonauts data, each in a fresh process, and whether the process
imported torch (or torchvision, timm, matplotlib).

Each case runs `--repeats` times, the cases interleaved (so load from other processes spreads over all of
them); the figures are the median and the range (min-max) of wall seconds and of CPU seconds (user + system,
the steadier figure on shared cores). Peak memory is the child's own maximum resident
set (`os.wait4`'s rusage, ru_maxrss; the benchmark itself imports nothing heavy, since a child's peak starts from
its parent's at the fork); "beyond start-up" subtracts the median of `python -c pass`. The heavy
imports are read in one extra run of each case, through a wrapper that runs `siamrdm` with runpy (as `-m`
does) and lists the heavy packages in sys.modules at exit.

    SIAMRDM_DATA=../shared/algonauts2019 python benchmarks/startup.py --repeats 5
    python benchmarks/startup.py --src /path/to/older/checkout/src --label before   # another tree's sources
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "torchvision", "timm", "matplotlib")
WHICH_IMPORTS = f"""
import runpy, sys
sys.argv = ["siamrdm", *sys.argv[1:]]
try:
    runpy.run_module("siamrdm", run_name="__main__", alter_sys=True)
except SystemExit:
    pass
finally:
    print("heavy:" + ",".join(sorted({{m.split(".")[0] for m in sys.modules}} & set({HEAVY!r}))), file=sys.stderr)
"""


def run_once(command: list[str], env: dict[str, str]) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds, peak RSS in MB) of one child process; a failed command stops the benchmark."""
    start = time.perf_counter()
    child = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)  # this child's own rusage, not the running maximum of all children
    seconds = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    err = child.stderr.read().decode(errors="replace")
    child.stderr.close()
    if child.returncode != 0:
        raise SystemExit(f"startup: {' '.join(command)} exited {child.returncode}: {err.strip()[-500:]}")
    return seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024  # Linux: kilobytes


def heavy_imports(args: list[str], env: dict[str, str]) -> str:
    """The heavy packages `siamrdm ARGS` imports ('-' for none)."""
    ran = subprocess.run([sys.executable, "-c", WHICH_IMPORTS, *args], env=env, capture_output=True, text=True)
    lines = [line for line in ran.stderr.splitlines() if line.startswith("heavy:")]
    return (lines[-1].removeprefix("heavy:") or "-") if lines else "?"


MAKE_SUBMISSION = """
import sys
from siamrdm.io.rdmfiles import load_rdm_dict, save_rdms
subjects = load_rdm_dict(sys.argv[1])
save_rdms(sys.argv[2], {k: v.mean(axis=0) for k, v in subjects.items()})
"""


def submission(data_root: Path, folder: Path, env: dict[str, str]) -> tuple[Path, Path]:
    """The 92 set's fMRI subject RDMs and their mean as a submission (a real file `score` reads), written by a
    child: a child's peak RSS starts from its parent's at the fork, so this process imports no numpy."""
    target = data_root / "Training_Data" / "92_Image_Set" / "target_fmri.mat"
    if not target.is_file():
        raise SystemExit(f"startup: {target} not found: give the Algonauts 2019 root as --data or $SIAMRDM_DATA")
    path = folder / "mean.mat"
    subprocess.run([sys.executable, "-c", MAKE_SUBMISSION, str(target), str(path)], env=env, check=True)
    return path, target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=os.environ.get("SIAMRDM_DATA", "../shared/algonauts2019"),
                        help="Algonauts 2019 root (default: $SIAMRDM_DATA)")
    parser.add_argument("--repeats", type=int, default=5, help="runs of each case (default: 5)")
    parser.add_argument("--src", default=str(REPO / "src"), help="the siamrdm sources to time (default: this tree)")
    parser.add_argument("--label", default="this tree", help="name of the sources in the output")
    parser.add_argument("--out", help="also write the figures as JSON to this file")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    data_root = Path(args.data).resolve()
    env = {**os.environ, "PYTHONPATH": str(Path(args.src).resolve()), "MPLBACKEND": "Agg"}
    with tempfile.TemporaryDirectory() as tmp:
        sub, target = submission(data_root, Path(tmp), env)
        cases = {
            "python -c pass": None,
            "siamrdm --help": ["--help"],
            "siamrdm score --help": ["score", "--help"],
            "siamrdm score (92 set, fMRI)": ["score", str(sub), "--target", str(target)],
            "siamrdm score --permutations 0": ["score", str(sub), "--target", str(target), "--permutations", "0"],
            "siamrdm noise-ceiling (92 set, fMRI)": ["noise-ceiling", str(target)],
            "siamrdm data-info": ["data-info", "--data", str(data_root)],
        }
        commands = {name: [sys.executable, "-c", "pass"] if argv is None else [sys.executable, "-m", "siamrdm", *argv]
                    for name, argv in cases.items()}
        load_start = os.getloadavg()[0]
        times: dict[str, list[float]] = {name: [] for name in cases}
        rss: dict[str, list[float]] = {name: [] for name in cases}
        cpu: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.repeats):
            for name, command in commands.items():
                seconds, cpu_seconds, mb = run_once(command, env)
                times[name].append(seconds)
                cpu[name].append(cpu_seconds)
                rss[name].append(mb)
        heavy = {name: "-" if argv is None else heavy_imports(argv, env) for name, argv in cases.items()}
        load_end = os.getloadavg()[0]

    base_rss = statistics.median(rss["python -c pass"])
    rows = []
    for name in cases:
        rows.append({"case": name, "wall_s_median": statistics.median(times[name]), "wall_s_min": min(times[name]),
                     "wall_s_max": max(times[name]), "cpu_s_median": statistics.median(cpu[name]),
                     "cpu_s_min": min(cpu[name]), "cpu_s_max": max(cpu[name]),
                     "peak_rss_mb_median": statistics.median(rss[name]),
                     "peak_rss_mb_beyond_python": statistics.median(rss[name]) - base_rss,
                     "heavy_imports": heavy[name]})
    result = {"label": args.label, "src": str(Path(args.src).resolve()), "repeats": args.repeats,
              "python": platform.python_version(), "cpus": os.cpu_count(), "machine": platform.machine(),
              "load_average_start": load_start, "load_average_end": load_end, "rows": rows}

    print(f"{args.label} ({result['src']}), {args.repeats} runs each, Python {result['python']}, "
          f"{result['cpus']} CPUs, load average {load_start:.1f} -> {load_end:.1f}")
    print("| case | wall s, median (min-max) | CPU s, median (min-max) | peak RSS MB, median | beyond "
          "`python -c pass` | heavy imports |")
    print("| --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row['case']} | {row['wall_s_median']:.2f} ({row['wall_s_min']:.2f}-{row['wall_s_max']:.2f}) | "
              f"{row['cpu_s_median']:.2f} ({row['cpu_s_min']:.2f}-{row['cpu_s_max']:.2f}) | "
              f"{row['peak_rss_mb_median']:.0f} | {row['peak_rss_mb_beyond_python']:.0f} | {row['heavy_imports']} |")
    if args.out:  # after the runs: the JSON is written with this tree's siamrdm
        sys.path.insert(0, str(REPO / "src"))
        from siamrdm.io.files import write_json

        write_json(args.out, result, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
