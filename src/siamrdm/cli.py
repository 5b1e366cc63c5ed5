"""The `siamrdm` command: a thin layer over the library.

Exit codes: 0 success, 2 bad input or usage (one line on stderr, no traceback), 1 anything else.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from . import data, scoring


class UsageError(data.DataError):
    """A usage problem found after parsing (conflicting options); exits 2 like bad input."""


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2))


def _fmt(x: float | None, spec: str = ".4f") -> str:
    return "-" if x is None else format(x, spec)


# --------------------------------------------------------------------------- foundation commands


def cmd_score(args) -> int:
    targets = data.load_rdm_dict(args.target)
    n_images = next(iter(targets.values())).shape[-1]
    submission = data.load_rdm_dict(args.submission, n_images=n_images)
    try:
        result = scoring.score_submission(submission, targets)
    except ValueError as exc:
        raise data.DataError(f"{args.submission}: {exc}") from None
    if args.json:
        _print_json(result)
        return 0
    print(f"{'key':<18} {'r2':>8} {'p':>10} {'ceiling':>8} {'% NC':>7}")
    for key, row in result.items():
        if key != "score":
            print(
                f"{key:<18} {row['r2']:>8.4f} {_fmt(row['p'], '.2e'):>10} "
                f"{_fmt(row['noise_ceiling']):>8} {_fmt(row['pct_nc'], '.2f'):>7}"
            )
    total = result["score"]
    print(f"{'score':<18} {total['r2']:>8.4f} {'':>10} {'':>8} {_fmt(total['pct_nc'], '.2f'):>7}")
    return 0


def cmd_noise_ceiling(args) -> int:
    targets = data.load_rdm_dict(args.target)
    result = {}
    for key, rdms in targets.items():
        if data.subject_rdms(rdms).shape[0] < 2:
            raise data.DataError(f"{args.target}:{key}: a noise ceiling needs RDMs of at least 2 subjects")
        upper, lower = scoring.noise_ceiling(rdms)
        result[key] = {"upper": upper, "lower": lower}
    if args.json:
        _print_json(result)
    else:
        print(f"{'key':<18} {'upper':>8} {'lower':>8}")
        for key, row in result.items():
            print(f"{key:<18} {row['upper']:>8.4f} {row['lower']:>8.4f}")
    return 0


def cmd_data_info(args) -> int:
    info = data.describe_data_root(args.data)
    if args.json:
        _print_json(info)
        return 0
    print(f"data root: {info['root']}")
    for name, entry in info["sets"].items():
        print(f"  {name}-image set: {entry['images']} images in {entry['folder']}")
        for file, keys in entry["rdm_files"].items():
            shapes = ", ".join(f"{k} {tuple(v)}" for k, v in keys.items())
            print(f"    {file}: {shapes}")
    return 0


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="siamrdm",
        description="Predict brain RDMs from images with Siamese networks; score them as Algonauts 2019 did.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("score", help="score a submission's RDMs against target subject RDMs")
    p.add_argument("submission", help=".mat/.npz/.npy file of model RDMs (keys such as EVC_RDMs)")
    p.add_argument("--target", required=True, help="file of subject RDMs with the same keys")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("noise-ceiling", help="upper and lower noise ceilings of subject RDMs")
    p.add_argument("target", help="file of subject RDMs, (S, N, N) or (S, K, N, N) per key")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_noise_ceiling)

    p = sub.add_parser("data-info", help="the image sets, image counts and RDM keys under a data root")
    p.add_argument("--data", help=f"data root (default: ${data.DATA_ENV_VAR})")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_data_info)

    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except data.DataError as exc:
        print(f"siamrdm: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("siamrdm: interrupted", file=sys.stderr)
        return 1
    except Exception as exc:  # a one-line message; SIAMRDM_DEBUG=1 shows the traceback
        if os.environ.get("SIAMRDM_DEBUG"):
            raise
        print(f"siamrdm: {type(exc).__name__}: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())



