"""One module per `kubectl mesh` subcommand; see kubectl_mesh/cli.py for the protocol."""
