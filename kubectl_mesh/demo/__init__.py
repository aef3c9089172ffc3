"""The demo: emojivoto re-created in plain Python, and the local mesh behind `kubectl mesh demo`.

`emojivoto` is standard-library only, so that a container image needs nothing but `python3` and
this package's `__init__.py` files; the rest of `kubectl_mesh` is not imported by it.
"""
