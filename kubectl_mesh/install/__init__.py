"""`kubectl mesh install`: the chart's objects, without helm on the user's machine.

- `manifest`: pure. Fills the chart snapshot's value tokens and certificates, drops disabled
  components, recomputes the config checksums, writes YAML.
- `certs`: the webhook's CA and serving certificate.

The snapshot itself is made by a build step outside the package (it needs helm and the chart's
folder): `python -m scripts.chart_snapshot` renders the chart with `helm template` into
`kubectl_mesh/data/chart-snapshot.json`. tests/chart compares `kubectl mesh install` with real
helm object by object, so the two cannot drift apart.
"""
