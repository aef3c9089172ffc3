"""Build steps, run from the checkout and never shipped: the Krew archive (`build_krew.py`), the
chart snapshot `kubectl mesh install` carries (`chart_snapshot.py`), emojivoto's protobuf modules
(`gen_emojivoto_proto.py`). A package so that tests import them (`python -m scripts.<step>`);
nothing of the product or the lab imports it (an import-linter contract of `make lint`)."""
