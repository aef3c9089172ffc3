"""The call graph from Prometheus (`kubectl mesh edges`) and the walk that finds where failures
start in it (`kubectl mesh diagnose`). Pure, like `kubectl_mesh.stat`: queries in, edges out,
edges in, diagnosis out; the commands and the demo inject the Prometheus query."""
