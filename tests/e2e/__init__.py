"""End-to-end: the walkthrough of the seed, in the demo (no cluster) and on the lab (root)."""
