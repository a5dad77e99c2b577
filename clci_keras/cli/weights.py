"""`clci-keras weights`: the catalogue of published weights (and the trained ones of a manifest)."""
from __future__ import annotations

import sys


def add_arguments(parser):
    parser.add_argument("name", nargs="?", default=None, help="show only this entry")
    parser.add_argument("--manifest", default="weights/manifest.json",
                        help="also list the trained weights of this manifest (default: weights/manifest.json)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def run(args) -> int:
    import json

    from clci_keras.models.catalog import describe, list_weights

    try:
        entries = list_weights(args.manifest)
    except (OSError, ValueError) as e:
        print(f"clci-keras weights: error: {e}", file=sys.stderr)
        return 2
    if args.name is not None:
        entries = [e for e in entries if e.get("name") == args.name]
        if not entries:
            names = sorted({str(e.get("name")) for e in list_weights(args.manifest)})
            print(f"clci-keras weights: error: no entry named {args.name!r}; known: {names}", file=sys.stderr)
            return 2
    if args.json:
        print(json.dumps(entries, indent=2, default=str))
    else:
        print("\n\n".join(describe(e) for e in entries))
    return 0
