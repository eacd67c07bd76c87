"""A loaded version's call chain: the wrappers a prediction goes through, composed at load.

From the outside in: the cache (when on for the model), the timeout (when one is set), the
batcher (when batching is on for the model), and the runtime call, on the event loop or in a
worker thread. Every wrapper is a `ModelCall` around the next one, in its own module, and
`compose` puts them together once per loaded version; a request pays only for the wrappers its
version has. Adding a feature is one more wrapper module and one line in `compose`.
"""
