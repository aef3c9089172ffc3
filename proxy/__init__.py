"""The sidecar proxy: transparent HTTP/1.1 and TCP proxying with Prometheus metrics."""
