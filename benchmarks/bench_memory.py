"""Where a training step's memory goes, per backend (issue 34, item 2).

Each backend runs in its own child process (JAX and PyTorch with TensorFlow
hidden by ``tests/without_tensorflow``): CLCI-Net 224 x 176 built as the
trainer builds it, compiled with ``clci_keras.training.compile_model`` (Adam,
Dice loss and metric), then ``--steps`` training steps of one batch of
``--batch`` random slices. The child prints its peak RSS after the build and
after the steps (``ru_maxrss``: the high-water mark of the whole process).

On PyTorch the child also counts the tensors autograd keeps for the backward
pass (``torch.autograd.graph.saved_tensors_hooks`` around one forward pass and
the loss, each storage counted once) and sorts them by the Keras layer class
whose ``__call__`` saved them: that is what a PyTorch training step holds
beyond the weights, the optimizer's moments and the gradients.

    python benchmarks/bench_memory.py [--backends tensorflow jax torch] [--batch 8] [--steps 2]
        [--profile-batch 2] [--json PATH]

Writes a JSON record (``--json``) with the machine and date; RESULTS.md gets
the figures by hand.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap

from _harness import ROOT, machine_line, today

BLOCKER = os.path.join(ROOT, "tests", "without_tensorflow")

CHILD = textwrap.dedent("""
    import collections, json, resource, sys, time
    import numpy as np
    import keras
    from clci_keras.models import build_model
    from clci_keras.training import compile_model

    batch, steps, profile_batch = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = {"backend": keras.backend.backend(), "batch": batch}
    t = time.perf_counter()
    model = build_model("clci_net", input_shape=(224, 176, 1))
    compile_model(model, loss="dice", learning_rate=1e-3)
    out["build_s"], out["peak_mib_after_build"] = time.perf_counter() - t, peak()
    rng = np.random.default_rng(0)
    x = rng.random((batch, 224, 176, 1), dtype="float32")
    y = (rng.random((batch, 224, 176, 1)) > 0.9).astype("float32")
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        model.train_on_batch(x, y)
        times.append(time.perf_counter() - t)
    out["step_s"], out["peak_mib_after_steps"] = times, peak()
    if out["backend"] == "torch" and profile_batch:
        import torch
        from clci_keras.models.losses import get_loss

        stack, seen, by_class = [], set(), collections.Counter()
        call = keras.Layer.__call__

        def traced_call(self, *a, **k):
            stack.append(type(self).__name__)
            try:
                return call(self, *a, **k)
            finally:
                stack.pop()

        def pack(tensor):
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                by_class[stack[-1] if stack else "loss"] += storage.nbytes()
            return tensor

        keras.Layer.__call__ = traced_call
        xb, yb = torch.tensor(x[:profile_batch]), torch.tensor(y[:profile_batch])
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            get_loss("dice")(yb, model(xb, training=True))
        keras.Layer.__call__ = call
        out["saved_mib_per_slice"] = {k: v / profile_batch / 2**20 for k, v in by_class.most_common()}
    print("RESULT " + json.dumps(out))
""")


def run(backend, batch, steps, profile_batch):
    env = dict(os.environ, KERAS_BACKEND=backend, CUDA_VISIBLE_DEVICES="")
    if backend != "tensorflow":
        env["PYTHONPATH"] = os.pathsep.join([BLOCKER, ROOT])
    res = subprocess.run([sys.executable, "-c", CHILD, str(batch), str(steps), str(profile_batch)],
                         env=env, capture_output=True, text=True)
    line = next((l for l in res.stdout.splitlines() if l.startswith("RESULT ")), None)
    if line is None:  # recorded, and the other backends still run
        return {"backend": backend, "batch": batch, "failed": f"exit {res.returncode}", "stderr": res.stderr[-2000:]}
    return json.loads(line[len("RESULT "):])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backends", nargs="+", default=["tensorflow", "jax", "torch"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--profile-batch", type=int, default=2, help="PyTorch's saved-tensor profile (0: off)")
    p.add_argument("--json", help="write the record here")
    a = p.parse_args(argv)
    record = {"machine": machine_line(), "date": today(), "command": " ".join(["bench_memory.py", *sys.argv[1:]]),
              "runs": [run(b, a.batch, a.steps, a.profile_batch) for b in a.backends]}
    for r in record["runs"]:
        if "failed" in r:
            print(f"{r['backend']}: the child failed ({r['failed']})")
            continue
        print(f"{r['backend']}: peak RSS {r['peak_mib_after_build']:.0f} MiB after the build, "
              f"{r['peak_mib_after_steps']:.0f} MiB after {len(r['step_s'])} steps of {r['batch']} "
              f"(steps {', '.join(f'{s:.1f}' for s in r['step_s'])} s)")
        for k, v in r.get("saved_mib_per_slice", {}).items():
            print(f"    saved for backward by {k}: {v:.1f} MiB per slice")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(record, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
