package node

import (
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/internal/transport"
)

// sentResponses records what sendResults sends.
type sentResponses struct {
	shoalpb.KV_BatchCommandsServer
	sent []*shoalpb.BatchCommandsResponse
}

func (s *sentResponses) Send(r *shoalpb.BatchCommandsResponse) error {
	s.sent = append(s.sent, r)
	return nil
}

// Results ready together share a message up to maxResultBatchBytes; a
// larger one goes alone; one over the message limit is answered
// RESOURCE_EXHAUSTED instead of breaking the stream for every command.
func TestSendResultsBatchesWithinLimits(t *testing.T) {
	get := func(id uint64, n int) *commandResult {
		return &commandResult{Id: id, Response: &shoalpb.BatchCommandsResponse_Result_Get{Get: &shoalpb.GetResponse{Found: true, Value: make([]byte, n)}}}
	}
	results := make(chan *commandResult, 5)
	results <- get(1, 10)
	results <- get(2, 10)
	results <- get(3, maxResultBatchBytes)
	results <- get(4, 10)
	results <- get(5, transport.MaxMessageBytes)
	close(results)
	var s sentResponses
	if err := sendResults(&s, results); err != nil {
		t.Fatal(err)
	}
	var got [][]uint64
	for _, r := range s.sent {
		var ids []uint64
		for _, res := range r.Results {
			ids = append(ids, res.Id)
		}
		got = append(got, ids)
	}
	if len(got) != 3 || len(got[0]) != 2 || len(got[1]) != 1 || got[1][0] != 3 || len(got[2]) != 2 || got[2][1] != 5 {
		t.Fatalf("messages carry %v, want [[1 2] [3] [4 5]]", got)
	}
	last := s.sent[2].Results[1]
	if codes.Code(last.GetError().GetCode()) != codes.ResourceExhausted || last.GetGet() != nil || last.GetError().GetDetail() != nil {
		t.Fatalf("read result over the message limit: %v", last.GetError())
	}
}

// A write's result over the message limit says the write was applied and
// its answer lost: TOO_LARGE, ambiguous, so that the client neither runs
// it again without a session nor reports a plain failure.
func TestSendResultsOversizedWrite(t *testing.T) {
	results := make(chan *commandResult, 1)
	results <- &commandResult{Id: 1, Response: &shoalpb.BatchCommandsResponse_Result_Put{
		Put: &shoalpb.PutResponse{Applied: true, Old: make([]byte, transport.MaxMessageBytes)}}}
	close(results)
	var s sentResponses
	if err := sendResults(&s, results); err != nil {
		t.Fatal(err)
	}
	d := s.sent[0].Results[0].GetError().GetDetail()
	if d.GetCode() != shoalpb.ErrorCode_ERROR_CODE_TOO_LARGE || !d.GetAmbiguous() {
		t.Fatalf("write result over the message limit: %v, want TOO_LARGE, ambiguous", s.sent[0].Results[0].GetError())
	}
}
