//! The OpenAPI 3.0 document of the public API as the simulator serves it
//! (`GET /v1/openapi.json`). Written by hand, with helpers for the parts every operation
//! shares (error envelope, rate-limit headers). `servers` is filled in per request.

use serde_json::{Value, json};

/// Rate-limit headers that every API response carries.
fn rate_headers() -> Value {
    json!({
        "X-RateLimit-Limit": { "$ref": "#/components/headers/X-RateLimit-Limit" },
        "X-RateLimit-Remaining": { "$ref": "#/components/headers/X-RateLimit-Remaining" },
        "X-RateLimit-Reset": { "$ref": "#/components/headers/X-RateLimit-Reset" }
    })
}

/// An error response whose `code` is one of `codes`.
fn error_response(description: &str, codes: &[&str]) -> Value {
    json!({
        "description": description,
        "headers": rate_headers(),
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "additionalProperties": false,
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "additionalProperties": false,
                            "required": ["code", "message", "details"],
                            "properties": {
                                "code": { "type": "string", "enum": codes },
                                "message": { "type": "string" },
                                "details": { "type": "object" }
                            }
                        }
                    }
                }
            }
        }
    })
}

fn ok_json(description: &str, schema: &str) -> Value {
    json!({
        "description": description,
        "headers": rate_headers(),
        "content": {
            "application/json": { "schema": { "$ref": format!("#/components/schemas/{schema}") } }
        }
    })
}

fn r(name: &str) -> Value {
    json!({ "$ref": format!("#/components/responses/{name}") })
}

/// Links from a created deployment to the operations on it (used by stateful testers).
fn links_from_created() -> Value {
    let link =
        |op: &str| json!({ "operationId": op, "parameters": { "id": "$response.body#/id" } });
    json!({
        "GetDeployment": link("getDeployment"),
        "CancelDeployment": link("cancelDeployment"),
        "DeleteDeployment": link("deleteDeployment"),
        "GetDeploymentLogs": link("getDeploymentLogs")
    })
}

pub(crate) fn document() -> Value {
    let status_enum = json!([
        "queued",
        "building",
        "deploying",
        "success",
        "failed",
        "cancelled"
    ]);
    let id_param = json!({
        "name": "id",
        "in": "path",
        "required": true,
        "description": "Deployment id, like `dep_9x2m4p`.",
        "schema": { "type": "string", "minLength": 1 },
        "example": "dep_9x2m4p"
    });

    let mut created = ok_json(
        "Deployment created. `status` is always `queued` here.",
        "CreatedDeployment",
    );
    created["headers"]["Location"] = json!({
        "description": "Path of the new deployment.",
        "schema": { "type": "string" }
    });
    created["links"] = links_from_created();

    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "git.dev Deployments API",
            "version": "1.0.0",
            "description": "Create, monitor, cancel and delete deployments. Served by gitdev-sim, the simulator of the API; see docs/simulator.md. Every response of the API carries the X-RateLimit-* headers; every non-2xx response has the body {\"error\": {\"code\", \"message\", \"details\"}}. Unknown routes answer 404 `not_found` and known routes with a wrong method 405 `method_not_allowed` with an `Allow` header."
        },
        "servers": [ { "url": "https://api.git.dev/v1" } ],
        "security": [ { "bearerAuth": [] } ],
        "paths": {
            "/deployments": {
                "post": {
                    "operationId": "createDeployment",
                    "summary": "Trigger a new deployment of a project's branch",
                    "description": "Needs deploy:write or deploy:admin. There is no idempotency key: a repeated request creates another deployment.",
                    "requestBody": {
                        "required": true,
                        "content": {
                            "application/json": {
                                "schema": { "$ref": "#/components/schemas/CreateDeploymentRequest" },
                                "example": {
                                    "project_id": "proj_8f3k29",
                                    "branch": "main",
                                    "commit_sha": "a1b2c3d4e5f6",
                                    "env_vars": { "NODE_ENV": "production" }
                                }
                            }
                        }
                    },
                    "responses": {
                        "201": created,
                        "400": error_response(
                            "Invalid body (`invalid_request`, naming the field in `details.field`), unknown branch (`invalid_branch`) or malformed commit (`invalid_commit`).",
                            &["invalid_request", "invalid_branch", "invalid_commit"]
                        ),
                        "401": r("Unauthorized"),
                        "403": r("Forbidden"),
                        "404": error_response(
                            "`project_id` is not the token's project (or does not exist).",
                            &["project_not_found"]
                        ),
                        "413": error_response("Request body larger than 64 KiB.", &["payload_too_large"]),
                        "429": r("RateLimited"),
                        "500": r("InternalError")
                    }
                },
                "get": {
                    "operationId": "listDeployments",
                    "summary": "List the token's project's deployments, newest first",
                    "parameters": [
                        {
                            "name": "limit", "in": "query", "required": false,
                            "description": "Page size.",
                            "schema": { "type": "integer", "minimum": 1, "maximum": 100, "default": 20 }
                        },
                        {
                            "name": "offset", "in": "query", "required": false,
                            "description": "Number of deployments to skip.",
                            "schema": { "type": "integer", "minimum": 0, "default": 0 }
                        },
                        {
                            "name": "status", "in": "query", "required": false,
                            "description": "Only deployments currently in this status.",
                            "schema": { "$ref": "#/components/schemas/DeploymentStatus" }
                        }
                    ],
                    "responses": {
                        "200": ok_json("One page of deployments; `meta.total` counts all that match the filter.", "DeploymentList"),
                        "400": error_response("A query parameter is out of range or malformed; `details.parameter` names it.", &["invalid_parameter"]),
                        "401": r("Unauthorized"),
                        "429": r("RateLimited"),
                        "500": r("InternalError")
                    }
                }
            },
            "/deployments/{id}": {
                "parameters": [ id_param.clone() ],
                "get": {
                    "operationId": "getDeployment",
                    "summary": "Full details of one deployment",
                    "responses": {
                        "200": ok_json("The deployment.", "DeploymentDetails"),
                        "401": r("Unauthorized"),
                        "404": r("NotFound"),
                        "429": r("RateLimited"),
                        "500": r("InternalError")
                    }
                },
                "delete": {
                    "operationId": "deleteDeployment",
                    "summary": "Remove a deployment and its hosted URL",
                    "description": "Needs deploy:write or deploy:admin. A second DELETE answers 404.",
                    "responses": {
                        "204": { "description": "Deleted; empty body.", "headers": rate_headers() },
                        "401": r("Unauthorized"),
                        "403": r("Forbidden"),
                        "404": r("NotFound"),
                        "429": r("RateLimited"),
                        "500": r("InternalError")
                    }
                }
            },
            "/deployments/{id}/cancel": {
                "parameters": [ id_param.clone() ],
                "post": {
                    "operationId": "cancelDeployment",
                    "summary": "Stop a queued, building or deploying deployment",
                    "description": "Needs deploy:write or deploy:admin. Cannot be undone. No request body.",
                    "responses": {
                        "200": ok_json("Cancelled.", "CancelledDeployment"),
                        "401": r("Unauthorized"),
                        "403": r("Forbidden"),
                        "404": r("NotFound"),
                        "409": error_response("The deployment is already success, failed or cancelled.", &["not_cancellable"]),
                        "429": r("RateLimited"),
                        "500": r("InternalError")
                    }
                }
            },
            "/deployments/{id}/logs": {
                "parameters": [ id_param ],
                "get": {
                    "operationId": "getDeploymentLogs",
                    "summary": "The build log (this is `logs_url`)",
                    "responses": {
                        "200": {
                            "description": "Timestamped log lines; they grow as the deployment progresses.",
                            "headers": rate_headers(),
                            "content": { "text/plain": { "schema": { "type": "string" } } }
                        },
                        "401": r("Unauthorized"),
                        "404": r("NotFound"),
                        "429": r("RateLimited"),
                        "500": r("InternalError")
                    }
                }
            }
        },
        "components": {
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API token, scoped to one project, with deploy:read, deploy:write or deploy:admin."
                }
            },
            "headers": {
                "X-RateLimit-Limit": {
                    "description": "Requests per minute allowed for this token (its plan's figure).",
                    "required": true,
                    "schema": { "type": "integer", "minimum": 1 }
                },
                "X-RateLimit-Remaining": {
                    "description": "Whole requests left in the token's bucket now.",
                    "required": true,
                    "schema": { "type": "integer", "minimum": 0 }
                },
                "X-RateLimit-Reset": {
                    "description": "Unix epoch seconds at which the bucket is full again.",
                    "required": true,
                    "schema": { "type": "integer", "minimum": 0 }
                },
                "Retry-After": {
                    "description": "Whole seconds until one request would be admitted.",
                    "required": true,
                    "schema": { "type": "integer", "minimum": 1 }
                }
            },
            "responses": {
                "Unauthorized": {
                    "description": "Token missing, malformed, unknown or expired.",
                    "headers": {
                        "X-RateLimit-Limit": { "$ref": "#/components/headers/X-RateLimit-Limit" },
                        "X-RateLimit-Remaining": { "$ref": "#/components/headers/X-RateLimit-Remaining" },
                        "X-RateLimit-Reset": { "$ref": "#/components/headers/X-RateLimit-Reset" },
                        "WWW-Authenticate": { "schema": { "type": "string" } }
                    },
                    "content": error_response("", &["unauthorized"])["content"].clone()
                },
                "Forbidden": error_response("The token lacks deploy:write / deploy:admin.", &["insufficient_scope"]),
                "NotFound": error_response("No such deployment in the token's project (never existed, deleted, or another project's).", &["not_found"]),
                "RateLimited": {
                    "description": "Over the token's rate limit. Nothing was consumed.",
                    "headers": {
                        "X-RateLimit-Limit": { "$ref": "#/components/headers/X-RateLimit-Limit" },
                        "X-RateLimit-Remaining": { "$ref": "#/components/headers/X-RateLimit-Remaining" },
                        "X-RateLimit-Reset": { "$ref": "#/components/headers/X-RateLimit-Reset" },
                        "Retry-After": { "$ref": "#/components/headers/Retry-After" }
                    },
                    "content": error_response("", &["rate_limited"])["content"].clone()
                },
                "InternalError": error_response("Infrastructure fault; safe requests may be retried.", &["internal_error"])
            },
            "schemas": {
                "DeploymentStatus": { "type": "string", "enum": status_enum },
                "CreateDeploymentRequest": {
                    "type": "object",
                    "required": ["project_id", "branch"],
                    "additionalProperties": true,
                    "description": "Unknown fields are ignored.",
                    "properties": {
                        "project_id": { "type": "string", "description": "The token's project.", "example": "proj_8f3k29" },
                        "branch": { "type": "string", "description": "An existing branch of the project.", "example": "main" },
                        "commit_sha": {
                            "type": "string", "nullable": true, "pattern": "^[0-9a-f]{7,40}$",
                            "description": "Commit to deploy; defaults to the branch HEAD.",
                            "example": "a1b2c3d4e5f6"
                        },
                        "env_vars": {
                            "type": "object", "nullable": true,
                            "additionalProperties": { "type": "string" },
                            "description": "Runtime environment variables, string to string.",
                            "example": { "NODE_ENV": "production" }
                        }
                    }
                },
                "CreatedDeployment": {
                    "type": "object",
                    "additionalProperties": false,
                    "required": ["id", "status", "project_id", "branch", "commit_sha", "created_at", "url"],
                    "properties": {
                        "id": { "$ref": "#/components/schemas/DeploymentId" },
                        "status": { "type": "string", "enum": ["queued"] },
                        "project_id": { "type": "string" },
                        "branch": { "type": "string" },
                        "commit_sha": { "$ref": "#/components/schemas/CommitSha" },
                        "created_at": { "type": "string", "format": "date-time" },
                        "url": { "$ref": "#/components/schemas/DeploymentUrl" }
                    }
                },
                "DeploymentSummary": {
                    "type": "object",
                    "additionalProperties": false,
                    "required": ["id", "status", "branch", "created_at"],
                    "properties": {
                        "id": { "$ref": "#/components/schemas/DeploymentId" },
                        "status": { "$ref": "#/components/schemas/DeploymentStatus" },
                        "branch": { "type": "string" },
                        "created_at": { "type": "string", "format": "date-time" }
                    }
                },
                "DeploymentList": {
                    "type": "object",
                    "additionalProperties": false,
                    "required": ["data", "meta"],
                    "properties": {
                        "data": { "type": "array", "maxItems": 100, "items": { "$ref": "#/components/schemas/DeploymentSummary" } },
                        "meta": {
                            "type": "object",
                            "additionalProperties": false,
                            "required": ["total", "limit", "offset"],
                            "properties": {
                                "total": { "type": "integer", "minimum": 0 },
                                "limit": { "type": "integer", "minimum": 1, "maximum": 100 },
                                "offset": { "type": "integer", "minimum": 0 }
                            }
                        }
                    }
                },
                "DeploymentDetails": {
                    "type": "object",
                    "additionalProperties": false,
                    "required": ["id", "status", "project_id", "branch", "commit_sha", "build_duration", "deploy_url", "logs_url", "created_at", "completed_at"],
                    "properties": {
                        "id": { "$ref": "#/components/schemas/DeploymentId" },
                        "status": { "$ref": "#/components/schemas/DeploymentStatus" },
                        "project_id": { "type": "string" },
                        "branch": { "type": "string" },
                        "commit_sha": { "$ref": "#/components/schemas/CommitSha" },
                        "build_duration": {
                            "type": "string", "nullable": true, "pattern": "^[0-9]+\\.[0-9]s$",
                            "description": "Seconds from creation to the end, one decimal, like `14.2s`; null until finished."
                        },
                        "deploy_url": { "$ref": "#/components/schemas/DeploymentUrl" },
                        "logs_url": { "type": "string", "description": "`<base url>/deployments/<id>/logs`." },
                        "created_at": { "type": "string", "format": "date-time" },
                        "completed_at": { "type": "string", "format": "date-time", "nullable": true },
                        "cancelled_by": { "type": "string", "description": "Only on cancelled deployments." },
                        "cancelled_at": { "type": "string", "format": "date-time", "description": "Only on cancelled deployments." }
                    }
                },
                "CancelledDeployment": {
                    "type": "object",
                    "additionalProperties": false,
                    "required": ["id", "status", "cancelled_by", "cancelled_at"],
                    "properties": {
                        "id": { "$ref": "#/components/schemas/DeploymentId" },
                        "status": { "type": "string", "enum": ["cancelled"] },
                        "cancelled_by": { "type": "string" },
                        "cancelled_at": { "type": "string", "format": "date-time" }
                    }
                },
                "DeploymentId": { "type": "string", "pattern": "^dep_[a-z0-9]+$", "example": "dep_9x2m4p" },
                "CommitSha": { "type": "string", "pattern": "^[0-9a-f]{7,40}$" },
                "DeploymentUrl": { "type": "string", "pattern": "^https://dep_[a-z0-9]+\\.git\\.dev$" }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_documents_the_rate_limit_headers_on_every_response() {
        let doc = document();
        let mut responses = 0;
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                if method == "parameters" {
                    continue;
                }
                for (code, resp) in op["responses"].as_object().unwrap() {
                    let resp = match resp.get("$ref").and_then(Value::as_str) {
                        Some(reference) => {
                            let name = reference.rsplit('/').next().unwrap();
                            &doc["components"]["responses"][name]
                        }
                        None => resp,
                    };
                    let headers = resp["headers"].as_object();
                    assert!(
                        headers.is_some_and(|h| h.contains_key("X-RateLimit-Remaining")),
                        "{method} {path} {code}"
                    );
                    responses += 1;
                }
            }
        }
        assert!(responses > 30);
    }
}
