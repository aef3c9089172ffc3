"""The tests (every folder a package but proxy/ and webhook/, which would shadow the real ones under
`tests` on sys.path). Shared harnesses: `support/`; the lab itself is the package `lab/`."""
