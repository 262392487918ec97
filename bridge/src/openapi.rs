//! The OpenAPI 3 document served on `GET /openapi.json`: every route of [`crate::api::ROUTES`]
//! (tested here) with every status it answers (tested over HTTP in `tests/bridge.rs`).

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
    // 500: the model failed on the batch (the pipeline's FAILED outcome, MODEL_ERROR).
    // 409: the first call with the same Idempotency-Key (or request id) still running; 422
    // also for a key or request id reused with another request; 503 also while the kept
    // answers are read back after a start (IDEMPOTENCY_LOADING).
    let call_errors = ["400", "401", "403", "404", "409", "413", "422", "429", "500", "503", "504"];
    let mut predict_responses = errors(error_own, &call_errors);
    predict_responses.insert(
        "200".to_owned(),
        json!({"description": "one prediction per row", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Predictions"}}}}),
    );
    let mut infer_responses = errors(error_oip, &call_errors);
    infer_responses.insert("415".to_owned(), error_oip());
    infer_responses.insert(
        "200".to_owned(),
        json!({"description": "the score tensor", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/OipResponse"}}}}),
    );
    // A kept answer that is a refusal answers as the call would have.
    let mut status_responses = errors(error_own, &["401", "403", "404", "422", "429", "500", "503"]);
    status_responses.insert("200".to_owned(), json!({"description": "answered"}));
    status_responses.insert("202".to_owned(), json!({"description": "still pending"}));
    // 403: a token without the feedback scope, or a tenant the policy does not name.
    let mut feedback_responses = errors(error_own, &["400", "401", "403", "409", "413", "422", "500", "503"]);
    feedback_responses.insert("202".to_owned(), json!({"description": "published: {\"accepted\", \"request_ids\"}"}));
    let mut metadata_responses = errors(error_oip, &["401", "403", "404", "503"]);
    metadata_responses.insert("200".to_owned(), json!({"description": "name, versions, inputs, outputs"}));
    let model = json!({"name": "model", "in": "path", "required": true, "schema": {"type": "string"}});
    let version = json!({"name": "version", "in": "path", "required": true, "schema": {"type": "string"}});
    let ready = json!({"200": {"description": "ready"}, "400": {"description": "not ready (empty body)"}});
    let key = json!([{"bearer": []}, {"apiKey": []}]);
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "streamscore HTTP bridge",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Synchronous scoring over the streamscore Kafka pipeline: Open Inference Protocol v2 and streamscore's own JSON. The API key, or the bearer token's tenant claim, decides the tenant; a token's scopes (predict, explain, feedback) decide what it may call (401 invalid_token, 403 insufficient_scope).",
        },
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "an API key, or a JWT signed with a key of the bridge's JWKS (RS256, ES256 or EdDSA)"},
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
                "FeedbackLabel": {"type": "object", "required": ["request_id", "actual"], "properties": {
                    "request_id": {"type": "string"},
                    "actual": {"type": "number", "enum": [0, 1]},
                    "observed_at": {"oneOf": [{"type": "string", "format": "date-time"}, {"type": "integer", "description": "µs since the epoch"}]},
                    "source": {"type": "string"},
                    "attributes": {"type": "object", "additionalProperties": {"type": "string"}},
                }},
                "FeedbackRequest": {"oneOf": [
                    {"$ref": "#/components/schemas/FeedbackLabel"},
                    {"type": "object", "required": ["feedback"], "properties": {"feedback": {"type": "array", "items": {"$ref": "#/components/schemas/FeedbackLabel"}}}},
                ]},
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
            "/v1/feedback": {"post": {
                "summary": "Ground truth: one label, or {\"feedback\": [...]} of up to 1,000, for the caller's tenant's requests (published to inference.feedback)",
                "security": key,
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/FeedbackRequest"}}}},
                "responses": feedback_responses,
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
            "/v2/models/{model}": {"get": {
                "summary": "Model metadata, for the version the key's tenant is routed to",
                "security": key,
                "parameters": [model],
                "responses": metadata_responses.clone(),
            }},
            "/v2/models/{model}/versions/{version}": {"get": {
                "summary": "Model metadata of one version",
                "security": key,
                "parameters": [model, version],
                "responses": metadata_responses,
            }},
            "/v2/models/{model}/ready": {"get": {"summary": "Model readiness (no key)", "parameters": [model], "responses": ready}},
            "/v2/models/{model}/versions/{version}/ready": {"get": {
                "summary": "Readiness of one version (no key)",
                "parameters": [model, version],
                "responses": ready,
            }},
            "/v2": {"get": {"summary": "Server metadata", "responses": {"200": {"description": "name, version, extensions"}}}},
            "/v2/health/live": {"get": {"summary": "Liveness (no key)", "responses": {"200": {"description": "live"}}}},
            "/v2/health/ready": {"get": {"summary": "Readiness (no key)", "responses": ready}},
            "/healthz": {"get": {"summary": "Liveness", "responses": {"200": {"description": "live"}}}},
            "/ready": {"get": {"summary": "Broker, registry, models and the kept idempotency answers read back (no key; says which check failed, nothing more)", "responses": {"200": {"description": "ready"}, "503": {"description": "not ready, with the failing checks"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text format"}}}},
            "/openapi.json": {"get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI 3"}}}},
        },
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn the_document_lists_exactly_the_route_table() {
        let document = document();
        let documented: BTreeSet<(String, String)> = document["paths"]
            .as_object()
            .expect("paths")
            .iter()
            .flat_map(|(path, operations)| {
                operations.as_object().expect("operations").keys().map(move |m| (m.to_uppercase(), path.clone()))
            })
            .collect();
        let served: BTreeSet<(String, String)> =
            crate::api::ROUTES.iter().map(|r| (r.method.to_owned(), r.path.to_owned())).collect();
        assert_eq!(documented, served);
    }

    #[test]
    fn every_operation_documents_its_answers_and_names_its_path_parameters() {
        let document = document();
        for (path, operations) in document["paths"].as_object().expect("paths") {
            for (method, operation) in operations.as_object().expect("operations") {
                let responses = operation["responses"].as_object().expect("responses");
                assert!(responses.keys().any(|c| c.starts_with('2')), "{method} {path}: no success");
                let named: BTreeSet<&str> = operation["parameters"]
                    .as_array()
                    .map(|p| p.iter().filter_map(|p| p["name"].as_str()).collect())
                    .unwrap_or_default();
                let in_path: BTreeSet<&str> =
                    path.split('/').filter_map(|s| s.strip_prefix('{')?.strip_suffix('}')).collect();
                assert_eq!(named, in_path, "{method} {path}: path parameters");
                if operation.get("security").is_some() {
                    assert!(responses.contains_key("401"), "{method} {path}: a key route without 401");
                }
            }
        }
        let predict = &document["paths"]["/v1/models/{model}/predict"]["post"]["responses"];
        let infer = &document["paths"]["/v2/models/{model}/infer"]["post"]["responses"];
        for code in ["200", "400", "401", "403", "404", "413", "422", "429", "500", "503", "504"] {
            assert!(predict[code].is_object() && infer[code].is_object(), "{code}");
        }
    }
}
