"""An independent reference for streamscore's explanations: exact baseline Shapley values
computed with onnxruntime and numpy, sharing nothing with the Rust code but the definition.

    python shapley_reference.py < request.json > reference.json

request.json: {"model": "path/to/model.onnx", "input": "features", "output": "score",
               "baseline": [b_0, ...], "rows": [[x_0, ...], ...]}   (float32 values)
reference.json: {"framework": "onnxruntime X", "rows": [{"baseline_score", "score",
                 "attributions": [phi_0, ...]}, ...]}

For each row x of n features, every coalition S (a bitmask, bit j set: feature j takes x's
value, else the baseline's) is scored by onnxruntime in one call of 2^n rows, and

    phi_i = sum over S without i of |S|! (n - |S| - 1)! / n! * (f(S + i) - f(S))

in float64, vectorised over the coalitions.
"""

import json
import math
import os
import sys

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402


def session(path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def explain(run, x, b):
    n = len(x)
    masks = np.arange(1 << n, dtype=np.int64)
    bits = ((masks[:, None] >> np.arange(n)) & 1).astype(bool)
    coalitions = np.where(bits, np.asarray(x, dtype=np.float32), np.asarray(b, dtype=np.float32))
    f = run(coalitions.astype(np.float32)).astype(np.float64)
    sizes = bits.sum(axis=1)
    weights = np.array(
        [math.factorial(s) * math.factorial(n - s - 1) / math.factorial(n) for s in range(n)] + [0.0]
    )
    phi = []
    for i in range(n):
        without = masks[~bits[:, i]]
        phi.append(float(np.sum(weights[sizes[without]] * (f[without | (1 << i)] - f[without]))))
    return {"baseline_score": float(f[0]), "score": float(f[-1]), "attributions": phi}


def main():
    request = json.load(sys.stdin)
    model = session(request["model"])
    name_in, name_out = request.get("input", "features"), request.get("output", "score")

    def run(rows):
        (out,) = model.run([name_out], {name_in: rows})
        return out.reshape(len(rows), -1)[:, -1]

    rows = [explain(run, x, request["baseline"]) for x in request["rows"]]
    json.dump({"framework": f"onnxruntime {ort.__version__}", "rows": rows}, sys.stdout)


if __name__ == "__main__":
    main()
