//! The OpenAPI 3 document served on `GET /openapi.json`.

use serde_json::{json, Value};

fn error_own() -> Value {
    json!({"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}

fn error_oip() -> Value {
    json!({"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/OipError"}}}})
}

fn errors(dialect: fn() -> Value, codes: &[&str]) -> serde_json::Map<String, Value> {
    codes.iter().map(|c| ((*c).to_owned(), dialect())).collect()
}

/// The document.
pub fn document() -> Value {
    let call_errors = ["400", "401", "403", "404", "413", "422", "429", "503", "504"];
    let mut predict_responses = errors(error_own, &call_errors);
    predict_responses.insert(
        "200".to_owned(),
        json!({"description": "one prediction per row", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Predictions"}}}}),
    );
    let mut infer_responses = errors(error_oip, &call_errors);
    infer_responses.insert(
        "200".to_owned(),
        json!({"description": "the score tensor", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/OipResponse"}}}}),
    );
    let mut status_responses = errors(error_own, &["401", "404", "429", "500"]);
    status_responses.insert("200".to_owned(), json!({"description": "answered"}));
    status_responses.insert("202".to_owned(), json!({"description": "still pending"}));
    let key = json!([{"bearer": []}, {"apiKey": []}]);
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "streamscore HTTP bridge",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Synchronous scoring over the streamscore Kafka pipeline: Open Inference Protocol v2 and streamscore's own JSON. The API key decides the tenant.",
        },
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {
                    "type": "object",
                    "required": ["code", "message", "request_id"],
                    "properties": {
                        "code": {"type": "string", "example": "QUOTA_EXCEEDED"},
                        "message": {"type": "string"},
                        "details": {},
                        "request_id": {"type": "string", "format": "uuid"},
                    },
                }}},
                "OipError": {"type": "object", "required": ["error"], "properties": {
                    "error": {"type": "string"},
                    "code": {"type": "string"},
                    "details": {},
                    "request_id": {"type": "string"},
                }},
                "PredictRequest": {"type": "object", "properties": {
                    "features": {"type": "object", "additionalProperties": {"type": "number"}},
                    "instances": {"type": "array", "maxItems": 1000, "items": {"type": "object", "additionalProperties": {"type": "number"}}},
                    "version": {"type": "string"},
                    "id": {"type": "string", "description": "your own id, echoed back"},
                }},
                "Predictions": {"type": "object", "properties": {
                    "id": {"type": "string"},
                    "predictions": {"type": "array", "items": {"type": "object", "properties": {
                        "request_id": {"type": "string", "format": "uuid"},
                        "score": {"type": "number"},
                        "label": {"type": "string"},
                        "model": {"type": "string"},
                        "version": {"type": "string"},
                        "backend": {"type": "string"},
                    }}},
                }},
                "OipRequest": {"type": "object", "required": ["inputs"], "properties": {
                    "id": {"type": "string"},
                    "parameters": {"type": "object"},
                    "inputs": {"type": "array", "items": {"type": "object", "required": ["name", "shape", "datatype", "data"], "properties": {
                        "name": {"type": "string", "enum": ["features"]},
                        "shape": {"type": "array", "items": {"type": "integer"}},
                        "datatype": {"type": "string", "enum": ["FP32", "FP64"]},
                        "data": {"type": "array"},
                    }}},
                }},
                "OipResponse": {"type": "object", "properties": {
                    "model_name": {"type": "string"},
                    "model_version": {"type": "string"},
                    "id": {"type": "string"},
                    "outputs": {"type": "array"},
                }},
            },
        },
        "paths": {
            "/v1/models/{model}/predict": {"post": {
                "summary": "Score one row or a batch of up to 1,000",
                "security": key,
                "parameters": [{"name": "model", "in": "path", "required": true, "schema": {"type": "string"}}],
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}}}},
                "responses": predict_responses,
            }},
            "/v1/requests/{id}": {"get": {
                "summary": "The answer to a request whose call timed out (504)",
                "security": key,
                "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}],
                "responses": status_responses,
            }},
            "/v2/models/{model}/infer": {"post": {
                "summary": "Open Inference Protocol v2 inference (JSON tensors)",
                "security": key,
                "parameters": [{"name": "model", "in": "path", "required": true, "schema": {"type": "string"}}],
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/OipRequest"}}}},
                "responses": infer_responses.clone(),
            }},
            "/v2/models/{model}/versions/{version}/infer": {"post": {
                "summary": "Open Inference Protocol v2 inference on one version",
                "security": key,
                "parameters": [
                    {"name": "model", "in": "path", "required": true, "schema": {"type": "string"}},
                    {"name": "version", "in": "path", "required": true, "schema": {"type": "string"}},
                ],
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/OipRequest"}}}},
                "responses": infer_responses,
            }},
            "/v2/models/{model}": {"get": {"summary": "Model metadata", "security": key, "responses": {"200": {"description": "metadata"}, "401": error_oip(), "404": error_oip()}}},
            "/v2/models/{model}/ready": {"get": {"summary": "Model readiness (no key)", "responses": {"200": {"description": "ready"}, "400": {"description": "not ready"}}}},
            "/v2": {"get": {"summary": "Server metadata", "responses": {"200": {"description": "name, version, extensions"}}}},
            "/v2/health/live": {"get": {"summary": "Liveness (no key)", "responses": {"200": {"description": "live"}}}},
            "/v2/health/ready": {"get": {"summary": "Readiness (no key)", "responses": {"200": {"description": "ready"}, "400": {"description": "not ready"}}}},
            "/healthz": {"get": {"summary": "Liveness", "responses": {"200": {"description": "live"}}}},
            "/ready": {"get": {"summary": "Broker, registry and models", "responses": {"200": {"description": "ready"}, "503": {"description": "not ready, with the failing checks"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text format"}}}},
        },
    })
}
