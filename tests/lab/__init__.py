"""Self-tests of the lab (the package `lab/`): its pure parts, the cluster, and its lifecycle."""
