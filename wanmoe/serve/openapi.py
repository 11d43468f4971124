"""The OpenAPI 3 description of the `wanmoe serve` API (served at /openapi.json)."""

from __future__ import annotations

from .jobs import FIELDS

_ERROR = {"type": "object", "required": ["error"],
          "properties": {"error": {"type": "string", "description": "one line naming the field "
                                                                     "and the rule"}}}
_NUM_OR_NULL = {"type": "number", "nullable": True}

_PROGRESS = {"type": "object", "properties": {
    "step": {"type": "integer", "description": "finished denoise steps"},
    "steps": {"type": "integer"},
    "expert": {"type": "string", "nullable": True,
               "description": "high_noise / low_noise (A14B, demo) or the dense model's name"}}}

_REQUEST = {"type": "object", "required": ["prompt"], "additionalProperties": False, "properties": {
    "prompt": {"type": "string"},
    "negative_prompt": {"type": "string", "nullable": True,
                        "description": "default: the model's official negative prompt"},
    "size": {"type": "string", "example": "1280*720", "description": "WIDTH*HEIGHT"},
    "frames": {"type": "integer", "description": "4n+1"},
    "steps": {"type": "integer"},
    "shift": {"type": "number"},
    "guide_scale": {"oneOf": [{"type": "number"},
                              {"type": "array", "items": {"type": "number"}, "minItems": 1,
                               "maxItems": 2, "description": "[high, low] (A14B)"}]},
    "solver": {"type": "string", "enum": ["unipc", "dpm++", "euler", "euler-lightning"]},
    "seed": {"type": "integer", "description": "-1 or absent: random (the drawn seed is in the job)"},
    "preset": {"type": "string", "nullable": True, "description": "see GET /v1/model presets"},
    "loras": {"type": "array", "description": "only with --lora-dir: file names in that folder",
              "items": {"oneOf": [
                  {"type": "string", "description": "NAME[:STRENGTH]"},
                  {"type": "object", "required": ["name"], "additionalProperties": False,
                   "properties": {"name": {"type": "string"}, "strength": {"type": "number"},
                                  "expert": {"type": "string", "enum": ["both", "high", "low"]}}}]}},
}}
assert set(_REQUEST["properties"]) == set(FIELDS)

_JOB = {"type": "object", "required": ["id", "state", "progress", "video_url"], "properties": {
    "id": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
    "state": {"type": "string", "enum": ["queued", "running", "succeeded", "failed", "cancelled"]},
    "progress": {"$ref": "#/components/schemas/Progress"},
    "error": {"type": "string", "nullable": True},
    "seed": {"type": "integer"},
    "created": {"type": "number", "description": "unix seconds"},
    "started": _NUM_OR_NULL, "finished": _NUM_OR_NULL,
    "video_url": {"type": "string", "nullable": True},
    "request": {"type": "object", "description": "the normalised request (every value filled in)"},
    "attempts": {"type": "integer", "description": "times a worker started this job"},
    "cancel_requested": {"type": "boolean"},
    "warnings": {"type": "array", "items": {"type": "string"},
                 "description": "only in the answer to POST /v1/jobs"}}}


def _resp(description: str, schema: dict | None = None, ctype: str = "application/json") -> dict:
    out = {"description": description}
    if schema is not None:
        out["content"] = {ctype: {"schema": schema}}
    return out


_ID = {"name": "id", "in": "path", "required": True,
       "schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"}}
_ERR = {"$ref": "#/components/schemas/Error"}
_JOBREF = {"$ref": "#/components/schemas/Job"}
_E401 = _resp("missing or wrong token (servers started with --token)", _ERR)
_E404 = _resp("unknown id, or not 32 lowercase hex characters", _ERR)


def schema() -> dict:
    return {
        "openapi": "3.0.3",
        "info": {"title": "wanmoe serve", "version": "1",
                 "description": "Wan2.2 text-to-video jobs: a persistent queue, progress events, "
                                "MP4 downloads. With --token every /v1 call but /v1/health needs "
                                "'Authorization: Bearer TOKEN' (the events stream also takes "
                                "?token=)."},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Error": _ERROR, "Progress": _PROGRESS, "JobRequest": _REQUEST, "Job": _JOB},
        },
        "security": [{"bearer": []}],
        "paths": {
            "/v1/jobs": {
                "post": {"summary": "submit a job", "operationId": "createJob",
                         "requestBody": {"required": True, "content": {"application/json": {
                             "schema": {"$ref": "#/components/schemas/JobRequest"}}}},
                         "responses": {"201": _resp("queued", _JOBREF),
                                       "401": _E401,
                                       "422": _resp("invalid request", _ERR),
                                       "429": _resp("the queue is full; retry later", _ERR)}},
                "get": {"summary": "jobs, newest first", "operationId": "listJobs",
                        "parameters": [
                            {"name": "limit", "in": "query",
                             "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}},
                            {"name": "offset", "in": "query",
                             "schema": {"type": "integer", "minimum": 0, "default": 0}}],
                        "responses": {"200": _resp("a page of jobs", {
                            "type": "object", "properties": {
                                "jobs": {"type": "array", "items": _JOBREF},
                                "total": {"type": "integer"}, "limit": {"type": "integer"},
                                "offset": {"type": "integer"}}}),
                            "401": _E401, "422": _resp("bad limit or offset", _ERR)}},
            },
            "/v1/check": {
                "post": {"summary": "validate a job body without queuing it (the web page's live "
                                    "check of the prompt)", "operationId": "checkJob",
                         "requestBody": {"required": True, "content": {"application/json": {
                             "schema": {"$ref": "#/components/schemas/JobRequest"}}}},
                         "responses": {"200": _resp("valid: the normalised request and the "
                                                    "warnings POST /v1/jobs would give", {
                             "type": "object", "properties": {
                                 "request": {"type": "object"},
                                 "warnings": {"type": "array", "items": {"type": "string"}}}}),
                                       "401": _E401,
                                       "422": _resp("invalid request", _ERR)}},
            },
            "/v1/jobs/{id}": {
                "parameters": [_ID],
                "get": {"summary": "one job", "operationId": "getJob",
                        "responses": {"200": _resp("the job", _JOBREF), "401": _E401, "404": _E404}},
                "delete": {"summary": "cancel (a running job stops within one step)",
                           "operationId": "cancelJob",
                           "responses": {"200": _resp("the job after the cancel request", _JOBREF),
                                         "401": _E401, "404": _E404}},
            },
            "/v1/jobs/{id}/video": {
                "parameters": [_ID],
                "get": {"summary": "the MP4 of a succeeded job (byte ranges supported)",
                        "operationId": "getVideo",
                        "responses": {"200": _resp("H.264 MP4", {"type": "string", "format": "binary"},
                                                   "video/mp4"),
                                      "206": _resp("a byte range of the MP4"),
                                      "401": _E401, "404": _E404}},
            },
            "/v1/jobs/{id}/events": {
                "parameters": [_ID, {"name": "token", "in": "query", "required": False,
                                     "schema": {"type": "string"},
                                     "description": "the token, for EventSource (no headers)"}],
                "get": {"summary": "Server-Sent Events: 'progress' (job JSON) on every change, "
                                   "then 'done' (the final job JSON) and the stream ends",
                        "operationId": "jobEvents",
                        "responses": {"200": _resp("event stream", {"type": "string"},
                                                   "text/event-stream"),
                                      "401": _E401, "404": _E404}},
            },
            "/v1/model": {
                "get": {"summary": "the model, defaults, limits, presets and suggested sizes",
                        "operationId": "getModel",
                        "responses": {"200": _resp("model information", {
                            "type": "object", "properties": {
                                "model": {"type": "string"}, "demo": {"type": "boolean"},
                                "vocabulary": {"type": "array", "items": {"type": "string"},
                                               "nullable": True},
                                "defaults": {"type": "object"}, "limits": {"type": "object"},
                                "presets": {"type": "array", "items": {"type": "string"}},
                                "sizes": {"type": "array", "items": {"type": "string"}}}}),
                            "401": _E401}},
            },
            "/v1/health": {
                "get": {"summary": "liveness (never needs the token)", "operationId": "health",
                        "security": [],
                        "responses": {"200": _resp("ok", {"type": "object", "properties": {
                            "ok": {"type": "boolean"}}})}},
            },
        },
    }


__all__ = ["schema"]
