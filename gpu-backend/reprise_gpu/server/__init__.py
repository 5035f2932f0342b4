"""HTTP front of the GPU backend: POST /v1/generate (framed, HMAC-signed), health, readiness, metrics."""
