"""The `gitops-canary` command line: the product's public surface (SPEC §6)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from controller import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gitops-canary",
        description="GitOps canary controller: git drives stable, baseline and canary.",
    )
    parser.add_argument("--version", action="version", version=f"gitops-canary {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    parser.parse_args(argv)
    parser.print_help(sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
