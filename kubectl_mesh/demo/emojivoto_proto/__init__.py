"""emojivoto's protobuf messages, generated from examples/emojivoto/proto by
scripts/gen_emojivoto_proto.py and checked in (no build step, no protoc at install)."""
