#!/bin/sh
# Go stubs of proto/iotstream/v1/ingest.proto into ./ingestpb (generated, not committed).
# protoc comes from grpcio-tools (iotstream's test extras; PYTHON picks the interpreter, default python3);
# the Go plugins are taken from PATH, or installed into ./.bin from the Go module proxy at pinned versions.
set -eu
cd "$(dirname "$0")"
if ! command -v protoc-gen-go >/dev/null || ! command -v protoc-gen-go-grpc >/dev/null; then
  export GOBIN="$PWD/.bin"
  go install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.10
  go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.5.1
  PATH="$GOBIN:$PATH"
fi
mkdir -p ingestpb
M=Miotstream/v1/ingest.proto=iotstream.example/go-device/ingestpb
"${PYTHON:-python3}" -m grpc_tools.protoc -I ../../proto \
  --go_out=. --go_opt=module=iotstream.example/go-device --go_opt=$M \
  --go-grpc_out=. --go-grpc_opt=module=iotstream.example/go-device --go-grpc_opt=$M \
  iotstream/v1/ingest.proto
