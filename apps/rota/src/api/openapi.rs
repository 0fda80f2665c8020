//! The OpenAPI 3 document served at `/openapi.json`. [`ROUTES`] lists every route the router
//! has; a test checks that the document describes exactly these and that each one answers.

use serde_json::{Value, json};

/// Every (method, path) the router serves.
pub const ROUTES: &[(&str, &str)] = &[
    ("post", "/tasks"),
    ("get", "/tasks"),
    ("post", "/tasks/batch"),
    ("get", "/tasks/backlog"),
    ("get", "/tasks/{id}"),
    ("delete", "/tasks/{id}"),
    ("get", "/cluster"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
];

fn error_response(description: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}

fn task_response(description: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Task"}}}})
}

/// The document.
pub fn document() -> Value {
    let id = json!([{"name": "id", "in": "path", "required": true,
                     "schema": {"type": "integer", "format": "int64", "minimum": 1, "maximum": i64::MAX}}]);
    // A key: 1 to 256 characters, no NUL (no store can hold one).
    let text = |description: &str| {
        json!({"type": "string", "nullable": true, "minLength": 1, "maxLength": 256,
                                          "pattern": "^[^\\u0000]*$", "description": description})
    };
    json!({
        "openapi": "3.0.3",
        "info": {"title": "rota", "version": env!("CARGO_PKG_VERSION"),
                 "description": "A distributed task scheduler. Times are RFC 3339; a time without offset is read as UTC."},
        "paths": {
            "/tasks": {
                "post": {
                    "summary": "Create a task",
                    "parameters": [{"name": "Idempotency-Key", "in": "header", "required": false,
                                    "schema": {"type": "string", "minLength": 1, "maxLength": 256},
                                    "description": "A repeat with the same key returns the original task (200) instead of creating one."}],
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/NewTask"}}}},
                    "responses": {"201": task_response("Created"), "200": task_response("Repeat of an idempotent create"),
                                  "400": error_response("Invalid request"), "413": error_response("Body too large"),
                                  "415": error_response("Not JSON"),
                                  "422": error_response("The idempotency key names a task created by a different request")}
                },
                "get": {
                    "summary": "List tasks by increasing id",
                    "parameters": [
                        {"name": "status", "in": "query", "schema": {"$ref": "#/components/schemas/Status"}},
                        {"name": "name", "in": "query", "schema": {"type": "string", "pattern": "^[^\\u0000]*$"}},
                        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}},
                        {"name": "cursor", "in": "query", "schema": {"type": "string", "pattern": "^[1-9][0-9]{0,17}$"},
                         "description": "nextCursor of the previous page"}
                    ],
                    "responses": {"200": {"description": "A page", "content": {"application/json": {"schema": {
                        "type": "object", "properties": {"tasks": {"type": "array", "items": {"$ref": "#/components/schemas/Task"}},
                                                         "nextCursor": {"type": "string", "nullable": true}}}}}},
                                  "400": error_response("Invalid query")}
                }
            },
            "/tasks/batch": {
                "post": {
                    "summary": "Create up to 1,000 tasks atomically",
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {
                        "type": "object", "required": ["tasks"],
                        "properties": {"tasks": {"type": "array", "minItems": 1, "maxItems": 1000,
                                                 "items": {"$ref": "#/components/schemas/NewTask"}}}}}}},
                    "responses": {"201": {"description": "Created (or, for repeated idempotency keys, the originals)"},
                                  "400": error_response("Invalid request"), "413": error_response("Body too large"),
                                  "415": error_response("Not JSON")}
                }
            },
            "/tasks/backlog": {
                "get": {"summary": "How many tasks are PENDING (due or not) and RUNNING: the queue's depth",
                        "responses": {"200": {"description": "Counts", "content": {"application/json": {"schema": {
                            "type": "object", "properties": {"pending": {"type": "integer"}, "running": {"type": "integer"}}}}}},
                                      "503": error_response("Task store unreachable")}}
            },
            "/tasks/{id}": {
                "get": {"summary": "Read a task", "parameters": id,
                        "responses": {"200": task_response("The task"), "400": error_response("Not an id"), "404": error_response("No such task")}},
                "delete": {"summary": "Cancel a PENDING task", "parameters": id,
                           "responses": {"200": task_response("Cancelled"), "400": error_response("Not an id"),
                                         "404": error_response("No such task"), "409": error_response("Running or finished")}}
            },
            "/cluster": {"get": {"summary": "Controller leader, instances, partitions with holders, states and epochs",
                                 "responses": {"200": {"description": "Cluster status"}, "503": error_response("Coordination store unreachable")}}},
            "/healthz": {"get": {"summary": "The process is up", "responses": {"200": {"description": "OK"}}}},
            "/readyz": {"get": {"summary": "The task store answers and a controller leads",
                                "responses": {"200": {"description": "Ready"}, "503": error_response("Not ready")}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "Text exposition format"}}}},
            "/openapi.json": {"get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI 3"}}}}
        },
        "components": {"schemas": {
            "Status": {"type": "string", "enum": ["PENDING", "RUNNING", "COMPLETED", "FAILED", "CANCELLED"]},
            "Error": {"type": "object", "required": ["error", "message"],
                      "properties": {"error": {"type": "string"}, "message": {"type": "string"}}},
            "NewTask": {"type": "object", "required": ["name"], "additionalProperties": false, "properties": {
                "name": {"type": "string", "minLength": 1, "maxLength": 256,
                         "pattern": "^[^\\u0000]*[^\\s\\u0000][^\\u0000]*$", "description": "1 to 256 characters"},
                "scheduledTime": {"type": "string", "format": "date-time", "nullable": true,
                                  "description": "RFC 3339; without offset read as UTC; default now"},
                "payload": {"description": "Any JSON value: no NUL character in its strings, no integer beyond 64 bits (send those as strings)"},
                "partitionKey": text("Tasks with the same key share a partition"),
                "maxAttempts": {"type": "integer", "minimum": 1, "maximum": 100, "default": 3, "nullable": true},
                "handler": {"type": "string", "nullable": true, "description": "A handler some live worker offers (log, noop and http are built in)"},
                "idempotencyKey": text("For batch items")}},
            "Task": {"type": "object", "properties": {
                "id": {"type": "integer"}, "name": {"type": "string"}, "eventName": {"type": "string"},
                "status": {"$ref": "#/components/schemas/Status"}, "partitionId": {"type": "integer"},
                "scheduledTime": {"type": "string"}, "payload": {}, "attempts": {"type": "integer"},
                "maxAttempts": {"type": "integer"}, "lastError": {"type": "string"}, "handler": {"type": "string"},
                "partitionKey": {"type": "string"}, "createdAt": {"type": "string"},
                "startedAt": {"type": "string"}, "finishedAt": {"type": "string"}}}
        }}
    })
}
