"""`clci-keras weights`: the catalogue of published weights (and the trained ones of a manifest),
and model cards (``--show W``)."""
from __future__ import annotations

import json
import os
import sys

from clci_keras.models.card import card_path, describe_card, read_card
from clci_keras.models.catalog import CATALOG, catalog_card, describe, list_weights


def add_arguments(parser):
    parser.add_argument("name", nargs="?", default=None, help="show only this entry")
    parser.add_argument("--manifest", default="weights/manifest.json",
                        help="also list the trained weights of this manifest (default: weights/manifest.json)")
    parser.add_argument("--show", metavar="W", default=None,
                        help="print the model card of W: a weights file (its W.card.json), a catalogue name "
                             "(e.g. spin_clcinet) or a manifest entry name")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def run(args) -> int:
    if args.show is not None:
        return _show(args)
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


def _show(args) -> int:
    """Print one model card; bad names raise ValueError (one line, exit 2, by :func:`clci_keras.cli.main`)."""
    if args.name is not None:
        raise ValueError(f"give either a NAME to list or --show W, not both (got {args.name!r} and --show)")
    card, where = find_card(args.show, args.manifest)
    if args.json:
        print(json.dumps(card, indent=2, default=str))
    else:
        print(f"{describe_card(card)}\n  (card: {where})")
    return 0


def find_card(what, manifest=None):
    """``(card, where)`` for a weights path, a catalogue name or a manifest entry name; ValueError otherwise."""
    if os.path.exists(what) or os.path.exists(card_path(what)):
        card = read_card(what)
        if card is None:
            raise ValueError(f"{what}: no model card ({card_path(what)} does not exist; `clci-keras train` "
                             "writes one beside the weights it exports)")
        return card, card_path(what)
    if what in CATALOG:
        return catalog_card(what), f"catalogue entry {what!r} (generated)"
    for e in list_weights(manifest):
        if e.get("kind") == "trained" and e.get("name") == what:
            base = os.path.dirname(os.path.abspath(e["manifest"]))
            return find_card(os.path.join(base, e["file"]))
    raise ValueError(f"--show {what}: no such weights file, catalogue entry ({', '.join(sorted(CATALOG))}) "
                     f"or entry of {manifest}")
