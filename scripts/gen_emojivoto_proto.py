#!/usr/bin/env python3
"""Generate emojivoto's protobuf modules from examples/emojivoto/proto/*.proto.

The generated modules (`<Name>_pb2.py` and their `.pyi` stubs) are checked in under
kubectl_mesh/demo/emojivoto_proto/: the package and the demo image then need no build step and no
protoc, only the `protobuf` runtime. Only messages are generated (no `_pb2_grpc.py`): the services
are wired from the descriptors (kubectl_mesh/demo/emojivoto.py). Needs grpcio-tools (the `dev`
extra), which bundles protoc.

Usage: scripts/gen_emojivoto_proto.py [--out DIR]   (tests/e2e/test_demo_parts.py checks that a
fresh generation equals the checked-in files)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROTO_DIR = REPO / "examples" / "emojivoto" / "proto"
OUT_DIR = REPO / "kubectl_mesh" / "demo" / "emojivoto_proto"


def generate(out: Path) -> list[Path]:
    """protoc --python_out --pyi_out for every .proto; returns the files written."""
    try:
        from grpc_tools import protoc
    except ImportError:
        raise SystemExit("gen_emojivoto_proto: needs grpcio-tools: pip install -e '.[dev]'") from None
    protos = sorted(PROTO_DIR.glob("*.proto"))
    out.mkdir(parents=True, exist_ok=True)
    argv = ["protoc", f"-I{PROTO_DIR}", f"--python_out={out}", f"--pyi_out={out}", *map(str, protos)]
    if protoc.main(argv) != 0:
        raise SystemExit(f"gen_emojivoto_proto: protoc failed on {', '.join(p.name for p in protos)}")
    return sorted(p for p in out.iterdir() if p.name.endswith(("_pb2.py", "_pb2.pyi")))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
