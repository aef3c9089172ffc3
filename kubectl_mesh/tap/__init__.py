"""`kubectl mesh tap` and `top`: live request events from the proxies' tap endpoints.

- `events`: TapOptions → the proxy's query; events → Linkerd-style lines (pure).
- `top`: events → the busiest routes (pure).
- `stream`: the pods of a workload, and their tap streams through pods/portforward (I/O).
"""
