"""Regenerate docs/figures/synthetic_slices.png (synthetic subjects, lesion outlines).

Usage::

    python docs/make_synthetic_figure.py [--subjects 4] [--seed 0]
"""
import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from clci_keras.data.synthetic import plot_synthetic_slices  # noqa: E402

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--subjects", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", default=os.path.join(HERE, "figures", "synthetic_slices.png"))
    a = p.parse_args()
    print(plot_synthetic_slices(a.output, n_subjects=a.subjects, seed=a.seed))
