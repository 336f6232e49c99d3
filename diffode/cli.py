"""The ``diffode`` command line."""

from __future__ import annotations

import argparse
import sys

from diffode import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffode", description="Verified DPM-Solver integrators for diffusion ODEs.")
    parser.add_argument("--version", action="version", version=f"diffode {__version__}")
    parser.add_subparsers(dest="command", title="commands")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
