"""Operations around a running Berth: load testing (`loadtest`, `locust`)."""
