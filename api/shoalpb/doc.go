// Package shoalpb holds Shoal's protocol buffer types and gRPC services: the
// node-to-node Raft transport, the records nodes keep on disk, and the
// commands replicated through shard Raft logs. The .proto files beside this
// file are the source; `make proto` regenerates the Go code, which is
// committed.
package shoalpb

//go:generate sh -c "cd ../.. && protoc -I api -I $(go list -m -f '{{.Dir}}' go.etcd.io/raft/v3)/raftpb --go_out=api --go_opt=paths=source_relative --go-grpc_out=api --go-grpc_opt=paths=source_relative api/shoalpb/*.proto"
