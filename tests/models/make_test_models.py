"""Make the test-only model store under tests/models/ from the shipped models.

    .venv/bin/python tests/models/make_test_models.py      (the packages of models/requirements.txt)

It writes ``tests/models/masked/``: a copy of ``models/fraud/1`` in which the input weights of
one feature (``MASKED``, a row of the first layer's weight matrix) are zero, so the feature
cannot change the output and its attribution must be exactly 0. Everything else (the other
weights, features, ranges, baseline, reference distributions) is fraud/1's; the metadata gets
the new file's sha256. It is not in ``models/``: the main job never serves it.

Deterministic: the same shipped model gives byte-identical files.
"""

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
SOURCE = REPO_ROOT / "models" / "fraud" / "1"
OUT = Path(__file__).resolve().parent / "masked"
MASKED = "ip_risk_score"


def main() -> None:
    meta = json.loads((SOURCE / "metadata.json").read_text())
    names = [f["name"] for f in meta["features"]]
    row = names.index(MASKED)
    model = onnx.load_model_from_string((SOURCE / meta["onnx_file"]).read_bytes())
    (weight,) = [t for t in model.graph.initializer if t.name == "layer0.weight"]
    w = numpy_helper.to_array(weight).copy()
    assert w.shape[0] == len(names), w.shape
    w[row, :] = 0.0
    weight.CopyFrom(numpy_helper.from_array(w.astype(np.float32), "layer0.weight"))
    model.graph.name = "masked_v1"
    model.doc_string = f"fraud v1 with the input weights of {MASKED} zeroed (tests only)"
    onnx.checker.check_model(model, full_check=True)
    onnx_bytes = model.SerializeToString()

    (OUT / "1").mkdir(parents=True, exist_ok=True)
    (OUT / "1" / "model.onnx").write_bytes(onnx_bytes)
    meta.update(
        {
            "name": "masked",
            "version": "1",
            "description": f"tests only: fraud/1 with the input weights of {MASKED} zeroed "
            "(its attribution must be 0); made by tests/models/make_test_models.py",
            "sha256": hashlib.sha256(onnx_bytes).hexdigest(),
            "masked_feature": MASKED,
        }
    )
    (OUT / "1" / "metadata.json").write_text(json.dumps(meta, indent=2) + "\n")
    family = {
        "name": "masked",
        "default_version": "1",
        "versions": ["1"],
        "description": "tests only: a model with a zero-weight input",
    }
    (OUT / "model.json").write_text(json.dumps(family, indent=2) + "\n")
    print(f"wrote {OUT} (sha256 {meta['sha256']})")


if __name__ == "__main__":
    main()
