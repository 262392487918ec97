"""NVIDIA's tritonclient.http, unchanged, against the streamscore bridge.

Usage: triton_client.py HOST:PORT API_KEY MODEL ROWS_JSON [CA_PEM]
With CA_PEM the client speaks HTTPS (ssl=True), verifying the bridge's certificate and host
name against that CA.
Prints one JSON object: liveness, readiness, model readiness and metadata, the scores of an
infer call on ROWS (JSON tensors, as the bridge refuses the binary extension), and what the
client reports for an unknown key.
"""

import json
import sys

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException


def main() -> None:
    url, key, model, rows_json = sys.argv[1:5]
    ca = sys.argv[5] if len(sys.argv) > 5 else None
    rows = np.array(json.loads(rows_json), dtype=np.float32)
    headers = {"Authorization": f"Bearer {key}"}
    if ca is None:
        client = httpclient.InferenceServerClient(url=url)
    else:
        client = httpclient.InferenceServerClient(url=url, ssl=True, ssl_options={"ca_certs": ca})
    out = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready(model),
        "metadata": client.get_model_metadata(model, headers=headers),
    }
    features = httpclient.InferInput("features", list(rows.shape), "FP32")
    features.set_data_from_numpy(rows, binary_data=False)
    score = httpclient.InferRequestedOutput("score", binary_data=False)
    result = client.infer(model, [features], outputs=[score], headers=headers, request_id="client-42")
    out["scores"] = result.as_numpy("score").reshape(-1).tolist()
    out["response"] = result.get_response()
    try:
        client.infer(model, [features], outputs=[score], headers={"Authorization": "Bearer not-a-key"})
        out["unknown_key"] = None
    except InferenceServerException as e:
        out["unknown_key"] = {"status": str(e.status()), "message": e.message()}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
