"""Operations around a running Berth: load testing (`loadtest` on the `http1` client, its
`targets`, and `locust` files for the same request)."""
