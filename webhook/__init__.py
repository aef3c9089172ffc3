"""The admission webhook: Flask app, gunicorn config, TLS. It serves `kubectl_mesh.inject`, the
pure injector it shares with `kubectl mesh inject`; nothing imports this package."""
