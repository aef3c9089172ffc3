"""The admission webhook and the pure injector it shares with `kubectl mesh inject`.

Importing this package must not import Flask: the CLI uses `webhook.injector`.
"""
