"""The local lab cluster: control plane from upstream binaries, a node agent, Services, Prometheus."""
