"""The browser console at /console: server-rendered pages over the same services as the admin API.

An edge like `berth.api`, above it: it signs callers in with the API's own verification of keys
and JWTs, maps domain errors with the API's statuses, and acts through the service functions the
admin API calls (the rollout service, ...). `berth.server` mounts it into the served app.
"""
