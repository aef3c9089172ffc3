"""kubectl-mesh: a small service mesh for Kubernetes.

Kept import-free so that `kubectl mesh --version` and the proxy start fast.
"""

__version__ = "0.1.0"
