"""The demo: emojivoto re-created in Python (gRPC between its services, as the original), and the
local mesh behind `kubectl mesh demo`.

`emojivoto` needs only `grpcio`, `protobuf` and its generated messages (`emojivoto_proto`), so that
a container image needs `python3`, those two and this package's demo files; the rest of
`kubectl_mesh` is not imported by it.
"""
