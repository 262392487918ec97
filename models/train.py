"""Train the shipped fraud-scoring MLPs and export them to ONNX.

How to run (from the repository root)::

    python3 -m venv .venv && .venv/bin/pip install -r models/requirements.txt \
        && cargo build --release && .venv/bin/python models/train.py

What it does:

1. Generates the data with the project's own generator, ``streamscore synth``:
   seed 42 / 200,000 rows for training, seed 4242 / 50,000 rows held out.
   The binary is ``$STREAMSCORE_BIN`` if set, else ``target/release/streamscore``,
   else ``target/debug/streamscore`` (a binary without the ``synth`` subcommand,
   e.g. a stale build, is skipped).
2. Trains two MLPs with numpy only (mini-batch Adam with decoupled weight decay
   and a cosine learning-rate decay, on binary cross-entropy, float64, a seeded
   ``numpy.random.default_rng``) on z-scored raw features:

   * version "1": 16-32-1, ReLU hidden, Sigmoid output;
   * version "2": 16-64-32-1, ReLU hidden, Sigmoid output.

3. Folds the standardization into the first layer
   (``W1' = W1 / std[:, None]``, ``b1' = b1 - (mean / std) @ W1``) so the ONNX
   graph takes raw features and uses only MatMul, Add, Relu and Sigmoid
   (opset 17, IR version 8): input ``features`` float32 ``[N, 16]``, output
   ``score`` float32 ``[N, 1]``, the probability of fraud.
4. Writes, per version, under ``models/fraud/<version>/``:

   * ``model.onnx``;
   * ``metadata.json``: feature specs, label/threshold, training settings,
     held-out metrics, the monitor's reference distributions (inner bin
     edges and shares of each feature and of the score on the held-out set)
     and the explanations' baseline (every feature's training mean);
   * ``golden.json``: 256 held-out feature vectors (float32 values) and the
     scores onnxruntime gives them;

   and ``models/fraud/model.json`` naming the versions and the default one.

Every ONNX model is checked with ``onnx.checker`` and its onnxruntime output on
the whole held-out set is compared with a float64 numpy forward pass of the
unfolded network (max abs difference must be below 1e-5).

The run is deterministic: the same generator, seeds and pinned packages give the
same files (BLAS is held to one thread). Results across different CPUs or BLAS
builds can differ in the last bits of the float arithmetic.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

# One BLAS thread: reproducible sums, and small matrices gain nothing from more.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent

# --- data -------------------------------------------------------------------

GENERATOR = "streamscore synth"
GENERATOR_VERSION = 1  # synth::GENERATOR_VERSION; bump together with the generator
TRAIN_SEED, TRAIN_ROWS = 42, 200_000
HOLDOUT_SEED, HOLDOUT_ROWS = 4242, 50_000

# (name, kind, min, max): the 16 model inputs in order, ranges inclusive.
# Mirrors synth::FEATURES in synth/src/lib.rs.
FEATURES: list[tuple[str, str, float, float]] = [
    ("amount", "continuous", 0, 50_000),
    ("merchant_category", "categorical", 0, 11),
    ("hour_of_day", "categorical", 0, 23),
    ("day_of_week", "categorical", 0, 6),
    ("distance_km", "continuous", 0, 20_000),
    ("velocity_1h", "count", 0, 50),
    ("velocity_24h", "count", 0, 200),
    ("account_age_days", "count", 0, 10_000),
    ("card_present", "binary", 0, 1),
    ("foreign_country", "binary", 0, 1),
    ("avg_amount_30d", "continuous", 0, 20_000),
    ("amount_to_avg_ratio", "continuous", 0, 1_000),
    ("failed_logins_24h", "count", 0, 20),
    ("device_age_days", "count", 0, 3_650),
    ("ip_risk_score", "continuous", 0, 1),
    ("chargebacks_1y", "count", 0, 10),
]
FEATURE_NAMES = [f[0] for f in FEATURES]
LABEL_COLUMN = "is_fraud"

# --- model ------------------------------------------------------------------

MODEL_NAME = "fraud"
INPUT_NAME, OUTPUT_NAME = "features", "score"
LABELS = ["legit", "fraud"]
THRESHOLD = 0.5  # score >= THRESHOLD means "fraud"
OPSET, IR_VERSION = 17, 8
GOLDEN_ROWS = 256
SCORE_EDGES = [0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9]
MAX_ABS_DIFF = 1e-5


@dataclass(frozen=True)
class Version:
    """One model version and how it is trained."""

    version: str
    hidden: tuple[int, ...]
    description: str
    epochs: int
    batch_size: int = 512
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    numpy_seed: int = 7

    @property
    def sizes(self) -> list[int]:
        return [len(FEATURES), *self.hidden, 1]

    @property
    def architecture(self) -> str:
        return "-".join(map(str, self.sizes)) + " relu/sigmoid"


VERSIONS = [
    Version("1", (32,), "small MLP on standardized raw features", epochs=20, learning_rate=3e-3, weight_decay=0.01),
    Version("2", (64, 32), "deeper MLP on standardized raw features", epochs=20, learning_rate=1e-3, weight_decay=0.1),
]
DEFAULT_VERSION = "1"


# --- the generator ----------------------------------------------------------


def _supports_synth(binary: Path) -> bool:
    try:
        done = subprocess.run(
            [str(binary), "synth", "--help"], capture_output=True, timeout=60, check=False
        )
    except OSError:
        return False
    return done.returncode == 0


def find_streamscore() -> Path:
    """The ``streamscore`` binary: ``$STREAMSCORE_BIN``, else release, else debug."""
    explicit = os.environ.get("STREAMSCORE_BIN")
    if explicit:
        binary = Path(explicit)
        if not _supports_synth(binary):
            sys.exit(f"STREAMSCORE_BIN={explicit}: not a streamscore binary with the `synth` subcommand")
        return binary
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO_ROOT / "target"))
    for profile in ("release", "debug"):
        binary = target / profile / "streamscore"
        if not binary.is_file():
            continue
        if _supports_synth(binary):
            return binary
        print(f"warning: {binary} has no `synth` subcommand (stale build?), skipping it", file=sys.stderr)
    sys.exit(
        "no usable streamscore binary: run `cargo build --release` first "
        "(or point STREAMSCORE_BIN at one)"
    )


def synth(binary: Path, seed: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Generate ``rows`` transactions: (features float64 [rows, 16], labels float64 [rows])."""
    done = subprocess.run(
        [str(binary), "synth", "--seed", str(seed), "--rows", str(rows)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        sys.exit(f"{binary} synth failed: {done.stderr.decode(errors='replace')}")
    text = done.stdout.decode()
    header = text.split("\n", 1)[0].strip().split(",")
    if header[: len(FEATURES)] != FEATURE_NAMES or header[len(FEATURES)] != LABEL_COLUMN:
        sys.exit(f"unexpected synth header: {header}")
    data = np.loadtxt(io.StringIO(text), delimiter=",", skiprows=1, dtype=np.float64, ndmin=2)
    if data.shape != (rows, len(header)):
        sys.exit(f"synth gave shape {data.shape}, expected ({rows}, {len(header)})")
    return data[:, : len(FEATURES)], data[:, len(FEATURES)]


# --- the network ------------------------------------------------------------


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # stable for any z


def init_params(sizes: list[int], rng: np.random.Generator, base_rate: float) -> list[list[np.ndarray]]:
    """He-normal weights; the output bias starts at the base rate's logit."""
    params = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        w = rng.normal(0.0, np.sqrt(2.0 / fan_in), size=(fan_in, fan_out))
        params.append([w, np.zeros(fan_out)])
    params[-1][1][:] = np.log(base_rate / (1.0 - base_rate))
    return params


def forward(params: list[list[np.ndarray]], x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Output logits [n] and every layer's input (for the backward pass)."""
    inputs = []
    h = x
    for i, (w, b) in enumerate(params):
        inputs.append(h)
        h = h @ w + b
        if i < len(params) - 1:
            h = np.maximum(h, 0.0)
    return h[:, 0], inputs


def train(spec: Version, x: np.ndarray, y: np.ndarray) -> tuple[list[list[np.ndarray]], list[float]]:
    """Mini-batch AdamW on mean binary cross-entropy, the learning rate decaying to 0 on a
    cosine; returns the parameters and the mean training loss of each epoch."""
    rng = np.random.default_rng(spec.numpy_seed)
    params = init_params(spec.sizes, rng, float(y.mean()))
    m = [[np.zeros_like(p) for p in layer] for layer in params]
    v = [[np.zeros_like(p) for p in layer] for layer in params]
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    step = 0
    history = []
    n = len(x)
    total_steps = spec.epochs * -(-n // spec.batch_size)
    for _ in range(spec.epochs):
        order = rng.permutation(n)
        total = 0.0
        for start in range(0, n, spec.batch_size):
            idx = order[start : start + spec.batch_size]
            xb, yb = x[idx], y[idx]
            logits, inputs = forward(params, xb)
            # BCE with logits: softplus(z) - y z; d/dz = sigmoid(z) - y.
            total += float(np.sum(np.logaddexp(0.0, logits) - yb * logits))
            grad = ((sigmoid(logits) - yb) / len(idx))[:, None]
            step += 1
            # Cosine decay from learning_rate to 0 over the whole run.
            lr = 0.5 * spec.learning_rate * (1.0 + np.cos(np.pi * (step - 1) / total_steps))
            for i in range(len(params) - 1, -1, -1):
                w, _ = params[i]
                grads = (inputs[i].T @ grad, grad.sum(axis=0))
                if i > 0:
                    grad = (grad @ w.T) * (inputs[i] > 0.0)
                for j, g in enumerate(grads):
                    m[i][j] = beta1 * m[i][j] + (1 - beta1) * g
                    v[i][j] = beta2 * v[i][j] + (1 - beta2) * g * g
                    m_hat = m[i][j] / (1 - beta1**step)
                    v_hat = v[i][j] / (1 - beta2**step)
                    update = m_hat / (np.sqrt(v_hat) + eps)
                    if j == 0:  # decoupled weight decay (AdamW) on weights, not biases
                        update = update + spec.weight_decay * params[i][j]
                    params[i][j] = params[i][j] - lr * update
        history.append(total / n)
    return params, history


def fold_standardization(params: list[list[np.ndarray]], mean: np.ndarray, std: np.ndarray) -> list[list[np.ndarray]]:
    """Make the first layer take raw features: W1' = W1 / std, b1' = b1 - (mean / std) @ W1."""
    (w1, b1), rest = params[0], params[1:]
    return [[w1 / std[:, None], b1 - (mean / std) @ w1], *([w.copy(), b.copy()] for w, b in rest)]


# --- ONNX -------------------------------------------------------------------


def to_onnx(spec: Version, params: list[list[np.ndarray]]) -> onnx.ModelProto:
    """The chain MatMul -> Add -> Relu -> ... -> MatMul -> Add -> Sigmoid, float32 weights."""
    nodes, initializers = [], []
    current = INPUT_NAME
    last = len(params) - 1
    for i, (w, b) in enumerate(params):
        w_name, b_name = f"layer{i}.weight", f"layer{i}.bias"
        initializers.append(numpy_helper.from_array(w.astype(np.float32), w_name))
        initializers.append(numpy_helper.from_array(b.astype(np.float32), b_name))
        mm, add = f"layer{i}.matmul", f"layer{i}.add"
        nodes.append(helper.make_node("MatMul", [current, w_name], [mm], name=mm))
        nodes.append(helper.make_node("Add", [mm, b_name], [add], name=add))
        act_op = "Sigmoid" if i == last else "Relu"
        act = OUTPUT_NAME if i == last else f"layer{i}.relu"
        nodes.append(helper.make_node(act_op, [add], [act], name=f"layer{i}.{act_op.lower()}"))
        current = act
    graph = helper.make_graph(
        nodes,
        f"{MODEL_NAME}_v{spec.version}",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", len(FEATURES)])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", 1])],
        initializer=initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="streamscore models/train.py",
        model_version=int(spec.version),
        doc_string=f"{MODEL_NAME} v{spec.version}: {spec.architecture}; score = P(fraud) from raw features",
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def ort_scores(model_bytes: bytes, x: np.ndarray) -> np.ndarray:
    """onnxruntime's scores [n] (float32) for feature rows ``x``."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    (out,) = session.run([OUTPUT_NAME], {INPUT_NAME: x.astype(np.float32)})
    assert out.dtype == np.float32 and out.shape == (len(x), 1), (out.dtype, out.shape)
    return out[:, 0]


# --- metrics and reference distributions ------------------------------------


def auc(y: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC by the rank-sum (Mann-Whitney) formula, ties averaged."""
    order = np.argsort(score, kind="mergesort")
    sorted_scores = score[order]
    ranks = np.empty(len(score), dtype=np.float64)
    # Average the 1-based ranks within each run of equal scores.
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(score)]])
    for s, e in zip(starts, ends):
        ranks[order[s:e]] = (s + 1 + e) / 2.0
    positives = y == 1
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def metrics(y: np.ndarray, score: np.ndarray) -> dict[str, float]:
    """Held-out metrics; the label is "fraud" when score >= THRESHOLD."""
    p = np.clip(score.astype(np.float64), 1e-7, 1.0 - 1e-7)
    predicted = score >= THRESHOLD
    actual = y == 1
    tp = int(np.sum(predicted & actual))
    return {
        "auc": auc(y, score.astype(np.float64)),
        "accuracy": float(np.mean(predicted == actual)),
        "log_loss": float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))),
        "precision": tp / int(predicted.sum()) if predicted.any() else 0.0,
        "recall": tp / int(actual.sum()) if actual.any() else 0.0,
        "positive_rate": float(np.mean(predicted)),
    }


def histogram(values: np.ndarray, edges: list[float]) -> dict[str, list[float]]:
    """Shares of the bins (-inf, e0), [e0, e1), ..., [e_{k-1}, +inf)."""
    bins = np.searchsorted(np.asarray(edges, dtype=np.float64), values, side="right")
    counts = np.bincount(bins, minlength=len(edges) + 1)
    return {"edges": [float(e) for e in edges], "shares": (counts / len(values)).tolist()}


def reference(x: np.ndarray, score: np.ndarray) -> dict:
    """The monitor's reference distributions of every feature and of the score."""
    features = {}
    for j, (name, kind, lo, hi) in enumerate(FEATURES):
        if kind in ("categorical", "binary"):
            edges = [c + 0.5 for c in range(int(lo), int(hi))]
        else:
            deciles = np.quantile(x[:, j], np.linspace(0.1, 0.9, 9))
            edges = sorted(set(float(q) for q in deciles))
        features[name] = histogram(x[:, j], edges)
    return {"features": features, "score": histogram(score.astype(np.float64), SCORE_EDGES)}


def baseline(mean: np.ndarray) -> dict[str, float]:
    """The row explanations are relative to: every feature's training mean (the model store
    checks each is present, finite and within its feature's range)."""
    return {name: float(m) for (name, _, _, _), m in zip(FEATURES, mean)}


# --- the run ----------------------------------------------------------------


def write_json(path: Path, value: object) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n")


def build_version(
    spec: Version,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_hold: np.ndarray,
    y_hold: np.ndarray,
    out_dir: Path,
) -> dict:
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    started = time.monotonic()
    params, history = train(spec, (x_train - mean) / std, y_train)
    seconds = time.monotonic() - started

    model = to_onnx(spec, fold_standardization(params, mean, std))
    model_bytes = model.SerializeToString()

    # The exported graph (float32, folded) against the float64 numpy network (unfolded).
    x_hold32 = x_hold.astype(np.float32)
    scores = ort_scores(model_bytes, x_hold32)
    logits, _ = forward(params, (x_hold32.astype(np.float64) - mean) / std)
    diff = float(np.max(np.abs(scores.astype(np.float64) - sigmoid(logits))))
    if not diff < MAX_ABS_DIFF:
        sys.exit(f"version {spec.version}: onnxruntime and numpy differ by {diff:.3g} (>= {MAX_ABS_DIFF})")

    version_dir = out_dir / spec.version
    version_dir.mkdir(parents=True, exist_ok=True)
    (version_dir / "model.onnx").write_bytes(model_bytes)
    held_out = metrics(y_hold, scores)
    n_params = sum(w.size + b.size for w, b in params)
    write_json(
        version_dir / "metadata.json",
        {
            "name": MODEL_NAME,
            "version": spec.version,
            "description": f"card-transaction fraud score (probability of fraud): {spec.description}",
            "architecture": spec.architecture,
            "onnx_file": "model.onnx",
            "sha256": hashlib.sha256(model_bytes).hexdigest(),
            "input_name": INPUT_NAME,
            "output_name": OUTPUT_NAME,
            "features": [{"name": n, "kind": k, "min": lo, "max": hi} for n, k, lo, hi in FEATURES],
            "labels": LABELS,
            "threshold": THRESHOLD,
            "training": {
                "generator": GENERATOR,
                "generator_version": GENERATOR_VERSION,
                "seed": TRAIN_SEED,
                "rows": TRAIN_ROWS,
                "holdout_seed": HOLDOUT_SEED,
                "holdout_rows": HOLDOUT_ROWS,
                "epochs": spec.epochs,
                "batch_size": spec.batch_size,
                "learning_rate": spec.learning_rate,
                "numpy_seed": spec.numpy_seed,
                "optimizer": "adamw",
                "weight_decay": spec.weight_decay,
                "lr_schedule": "cosine",
                "loss": "binary_cross_entropy",
                "preprocessing": "z-score with training mean/std, folded into the first layer",
            },
            "metrics": held_out,
            "reference": reference(x_hold, scores),
            "baseline": baseline(mean),
        },
    )
    write_json(
        version_dir / "golden.json",
        {
            "rows": x_hold32[:GOLDEN_ROWS].tolist(),
            "scores": scores[:GOLDEN_ROWS].tolist(),
            "framework": f"onnxruntime {ort.__version__}",
        },
    )
    print(
        f"version {spec.version}: {spec.architecture}, {spec.epochs} epochs in {seconds:.1f}s, "
        f"train loss {history[0]:.4f} -> {history[-1]:.4f}, onnxruntime vs numpy max |diff| {diff:.2e}"
    )
    return {"version": spec.version, "architecture": spec.architecture, "params": n_params, **held_out}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=REPO_ROOT / "models" / MODEL_NAME,
        help="where to write model.json and <version>/ (default: models/fraud)",
    )
    args = parser.parse_args()

    binary = find_streamscore()
    print(f"generator: {binary}")
    x_train, y_train = synth(binary, TRAIN_SEED, TRAIN_ROWS)
    x_hold, y_hold = synth(binary, HOLDOUT_SEED, HOLDOUT_ROWS)
    print(
        f"train: {len(x_train)} rows, fraud rate {y_train.mean():.4f}; "
        f"held out: {len(x_hold)} rows, fraud rate {y_hold.mean():.4f}"
    )

    args.out_dir.mkdir(parents=True, exist_ok=True)
    rows = [build_version(spec, x_train, y_train, x_hold, y_hold, args.out_dir) for spec in VERSIONS]
    write_json(
        args.out_dir / "model.json",
        {
            "name": MODEL_NAME,
            "default_version": DEFAULT_VERSION,
            "versions": [spec.version for spec in VERSIONS],
            "description": "card-transaction fraud score (probability of fraud)",
        },
    )

    print()
    print(f"{'version':<8} {'architecture':<24} {'auc':>7} {'accuracy':>9} {'params':>7}")
    for row in rows:
        print(
            f"{row['version']:<8} {row['architecture']:<24} {row['auc']:>7.4f} "
            f"{row['accuracy']:>9.4f} {row['params']:>7}"
        )
    print(f"\nwrote {args.out_dir}")


if __name__ == "__main__":
    main()
