package master

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/internal/master/dashboard"
	"github.com/shoaldb/shoal/internal/metrics"
)

// HTTPHandler returns the master's HTTP API:
//
//	GET  /healthz                          "ok"
//	GET  /status                           the cluster state (JSON)
//	GET  /operators                        operators in flight and recently finished
//	GET  /metrics                          Prometheus metrics; /debug/pprof/ too
//	GET  /dashboard/                       the web dashboard (/ redirects there)
//	POST /nodes/{id}/drain                 also undrain, remove
//	POST /nodes/{id}/labels?weight=&zone=  set weight and zone
//	POST /shards/{id}/move?from=&to=       move a replica
//	POST /shards/{id}/transfer-leader?to=  hand the leadership over
//	POST /operators/{id}/cancel            roll an operator back
//	POST /scheduling/pause                 also resume
//
// Answers are JSON with the protobuf field names; errors are JSON objects
// {"error": "...", "code": "..."} with an HTTP status from the gRPC code.
// Calls that change the cluster must reach the leading master; others
// answer 421 with the leader's gRPC address in "leader".
func (s *Server) HTTPHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("GET /status", s.handleStatus)
	mux.Handle("GET /dashboard/", http.StripPrefix("/dashboard/", dashboard.Handler()))
	mux.Handle("GET /{$}", http.RedirectHandler("/dashboard/", http.StatusFound))
	metrics.Mount(mux, s.metrics)
	mux.HandleFunc("GET /operators", func(w http.ResponseWriter, _ *http.Request) {
		st := s.clusterState()
		writeProto(w, &shoalpb.ClusterState{Operators: st.Operators, Finished: st.Finished, SchedulingPaused: st.SchedulingPaused})
	})
	nodeState := map[string]shoalpb.NodeState{
		"drain": shoalpb.NodeState_NODE_STATE_DRAINING, "undrain": shoalpb.NodeState_NODE_STATE_UP, "remove": shoalpb.NodeState_NODE_STATE_REMOVED,
	}
	mux.HandleFunc("POST /nodes/{id}/{action}", func(w http.ResponseWriter, r *http.Request) {
		id, ok := pathID(w, r)
		if !ok {
			return
		}
		action := r.PathValue("action")
		if action == "labels" {
			req := &shoalpb.SetNodeLabelsRequest{NodeId: id, Zone: r.URL.Query().Get("zone")}
			req.ClearZone = r.URL.Query().Has("zone") && req.Zone == ""
			if wt := r.URL.Query().Get("weight"); wt != "" {
				v, err := strconv.ParseFloat(wt, 64)
				if err != nil || v <= 0 {
					writeError(w, http.StatusBadRequest, "weight "+strconv.Quote(wt)+": want a number > 0", "", "")
					return
				}
				req.Weight = v
			}
			s.answer(w, r, func(ctx context.Context) (proto.Message, error) { return s.SetNodeLabels(ctx, req) })
			return
		}
		state, ok := nodeState[action]
		if !ok {
			writeError(w, http.StatusNotFound, "unknown action "+strconv.Quote(action)+": want drain, undrain, remove or labels", "", "")
			return
		}
		s.answer(w, r, func(ctx context.Context) (proto.Message, error) {
			return s.SetNodeState(ctx, &shoalpb.SetNodeStateRequest{NodeId: id, State: state, Reason: "set by an administrator (HTTP " + action + ")"})
		})
	})
	mux.HandleFunc("POST /shards/{id}/move", func(w http.ResponseWriter, r *http.Request) {
		id, ok := pathID(w, r)
		from, ok2 := queryID(w, r, "from")
		to, ok3 := queryID(w, r, "to")
		if !ok || !ok2 || !ok3 {
			return
		}
		s.answer(w, r, func(ctx context.Context) (proto.Message, error) {
			return s.MoveReplica(ctx, &shoalpb.MoveReplicaRequest{ShardId: id, FromNode: from, ToNode: to})
		})
	})
	mux.HandleFunc("POST /shards/{id}/transfer-leader", func(w http.ResponseWriter, r *http.Request) {
		id, ok := pathID(w, r)
		to, ok2 := queryID(w, r, "to")
		if !ok || !ok2 {
			return
		}
		s.answer(w, r, func(ctx context.Context) (proto.Message, error) {
			return s.TransferShardLeader(ctx, &shoalpb.TransferShardLeaderRequest{ShardId: id, ToNode: to})
		})
	})
	mux.HandleFunc("POST /operators/{id}/cancel", func(w http.ResponseWriter, r *http.Request) {
		id, ok := pathID(w, r)
		if !ok {
			return
		}
		s.answer(w, r, func(ctx context.Context) (proto.Message, error) {
			return s.CancelOperator(ctx, &shoalpb.CancelOperatorRequest{Id: id})
		})
	})
	for action, paused := range map[string]bool{"pause": true, "resume": false} {
		mux.HandleFunc("POST /scheduling/"+action, func(w http.ResponseWriter, r *http.Request) {
			s.answer(w, r, func(ctx context.Context) (proto.Message, error) {
				return s.SetScheduling(ctx, &shoalpb.SetSchedulingRequest{Paused: paused})
			})
		})
	}
	// The requests that change the cluster (POST) take no credentials, so
	// a web page an operator has open could otherwise send them to this
	// port from the operator's browser: requests a browser marks as
	// coming from another site (Sec-Fetch-Site, Origin) are refused with
	// 403. curl and scripts send neither header, and the dashboard's own
	// requests are same-origin.
	return http.NewCrossOriginProtection().Handler(mux)
}

func pathID(w http.ResponseWriter, r *http.Request) (uint64, bool) {
	id, err := strconv.ParseUint(r.PathValue("id"), 10, 64)
	if err != nil || id == 0 {
		writeError(w, http.StatusBadRequest, "id "+strconv.Quote(r.PathValue("id"))+": want a positive integer", "", "")
		return 0, false
	}
	return id, true
}

func queryID(w http.ResponseWriter, r *http.Request, name string) (uint64, bool) {
	v := r.URL.Query().Get(name)
	id, err := strconv.ParseUint(v, 10, 64)
	if err != nil || id == 0 {
		writeError(w, http.StatusBadRequest, name+"="+strconv.Quote(v)+": want a node ID", "", "")
		return 0, false
	}
	return id, true
}

// answer runs a gRPC handler for an HTTP request and writes its result.
func (s *Server) answer(w http.ResponseWriter, r *http.Request, call func(context.Context) (proto.Message, error)) {
	msg, err := call(r.Context())
	if err == nil {
		writeProto(w, msg)
		return
	}
	st := status.Convert(err)
	d := shoalpb.DetailOf(err)
	code := httpStatus(st.Code())
	if d.GetCode() == shoalpb.ErrorCode_ERROR_CODE_NOT_LEADER {
		code = http.StatusMisdirectedRequest
	}
	writeError(w, code, st.Message(), d.GetCode().String(), d.GetLeaderAddr())
}

// httpStatus maps a gRPC code to an HTTP status.
func httpStatus(c codes.Code) int {
	switch c {
	case codes.InvalidArgument, codes.FailedPrecondition, codes.OutOfRange:
		return http.StatusBadRequest
	case codes.NotFound:
		return http.StatusNotFound
	case codes.AlreadyExists, codes.Aborted:
		return http.StatusConflict
	case codes.DeadlineExceeded:
		return http.StatusGatewayTimeout
	case codes.Unavailable, codes.ResourceExhausted:
		return http.StatusServiceUnavailable
	case codes.PermissionDenied, codes.Unauthenticated:
		return http.StatusForbidden
	}
	return http.StatusInternalServerError
}

func writeProto(w http.ResponseWriter, m proto.Message) {
	b, err := protojson.MarshalOptions{Multiline: true, UseProtoNames: true}.Marshal(m)
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error(), "", "")
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(append(b, '\n'))
}

func writeError(w http.ResponseWriter, code int, msg, errCode, leader string) {
	body := map[string]string{"error": msg}
	if errCode != "" {
		body["code"] = errCode
	}
	if leader != "" {
		body["leader"] = leader
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(body)
}
