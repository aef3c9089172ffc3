"""`kubectl mesh install`: the chart's objects, without helm on the user's machine.

- `manifest`: pure. Fills the chart snapshot's value tokens and certificates, drops disabled
  components, recomputes the config checksums, writes YAML.
- `snapshot`: a build step (needs helm): `python -m kubectl_mesh.install.snapshot` renders the
  chart with `helm template` into `kubectl_mesh/data/chart-snapshot.json`. tests/chart compares
  `kubectl mesh install` with real helm object by object, so the two cannot drift apart.
"""
