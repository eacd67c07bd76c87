"""OpenAPI documentation of the routes: parameters, request bodies, responses and credentials.

The routes read and write JSON themselves (orjson, no pydantic models on the hot path), so
FastAPI cannot infer any of this. Admin request bodies are documented from the request models
that validate them (`request_body`); the rest is declared here as plain JSON Schema (OpenAPI
3.1) dicts. Both are attached with `openapi_extra=` and `responses=`; nothing here runs per
request, except two no-op dependencies on the admin routes that put the credential schemes in
the document (see `PROTECTED`). The `Authenticator` is what checks credentials.

Nothing here may hold a secret or an example key: the document is public.
"""
