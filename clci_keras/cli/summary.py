"""`clci-keras summary`: build a registered model and print its summary."""
from __future__ import annotations

from clci_keras.models import build_model


def add_arguments(parser):
    parser.add_argument("--model", default="clci_net", help="registered model name (default: clci_net)")
    parser.add_argument(
        "--input-shape", type=int, nargs=3, default=(224, 176, 1), metavar=("H", "W", "C"),
        help="input slice shape (default: 224 176 1)",
    )
    parser.add_argument("--num-class", type=int, default=1, help="output classes (default: 1)")
    parser.add_argument("--quiet", action="store_true", help="print only the parameter count")


def run(args) -> int:
    model = build_model(args.model, input_shape=tuple(args.input_shape), num_class=args.num_class)
    if not args.quiet:
        model.summary(line_length=110)
    print(f"{model.name}: {model.count_params():,} parameters at input {tuple(args.input_shape)}")
    return 0
