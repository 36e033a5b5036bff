package shoalpb

import (
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// grpcCodes is the one mapping between Shoal's error codes and gRPC status
// codes. Servers build errors with StatusError; clients read the code back
// with DetailOf, never by matching messages.
var grpcCodes = map[ErrorCode]codes.Code{
	ErrorCode_ERROR_CODE_NOT_LEADER:         codes.Unavailable,
	ErrorCode_ERROR_CODE_NO_LEADER:          codes.Unavailable,
	ErrorCode_ERROR_CODE_UNAVAILABLE:        codes.Unavailable,
	ErrorCode_ERROR_CODE_NOT_BOOTSTRAPPED:   codes.Unavailable,
	ErrorCode_ERROR_CODE_WRONG_CLUSTER:      codes.FailedPrecondition,
	ErrorCode_ERROR_CODE_BOOTSTRAP_MISMATCH: codes.FailedPrecondition,
	ErrorCode_ERROR_CODE_EPOCH_MISMATCH:     codes.FailedPrecondition,
	ErrorCode_ERROR_CODE_SHARD_NOT_HERE:     codes.FailedPrecondition,
	ErrorCode_ERROR_CODE_STALE_SEQUENCE:     codes.FailedPrecondition,
	ErrorCode_ERROR_CODE_STALE_DATA:         codes.FailedPrecondition,
	ErrorCode_ERROR_CODE_UNKNOWN_NODE:       codes.NotFound,
	ErrorCode_ERROR_CODE_INVALID:            codes.InvalidArgument,
	ErrorCode_ERROR_CODE_NOT_INTEGER:        codes.InvalidArgument,
	ErrorCode_ERROR_CODE_CROSS_SHARD:        codes.InvalidArgument,
	ErrorCode_ERROR_CODE_TOO_LARGE:          codes.InvalidArgument,
	ErrorCode_ERROR_CODE_OVERFLOW:           codes.OutOfRange,
	ErrorCode_ERROR_CODE_TIMEOUT:            codes.DeadlineExceeded,
	ErrorCode_ERROR_CODE_OVERLOADED:         codes.ResourceExhausted,
	ErrorCode_ERROR_CODE_DISK_FULL:          codes.ResourceExhausted,
}

// GRPCCode returns the gRPC status code that errors with code c carry.
func (c ErrorCode) GRPCCode() codes.Code {
	if g, ok := grpcCodes[c]; ok {
		return g
	}
	return codes.Unknown
}

// StatusError returns a gRPC error with detail's code and message msg,
// carrying detail.
func StatusError(detail *ErrorDetail, msg string) error {
	st, err := status.New(detail.GetCode().GRPCCode(), msg).WithDetails(detail)
	if err != nil {
		return status.Error(detail.GetCode().GRPCCode(), msg)
	}
	return st.Err()
}

// DetailOf returns the ErrorDetail a server attached to err, or nil.
func DetailOf(err error) *ErrorDetail {
	st, ok := status.FromError(err)
	if !ok {
		return nil
	}
	for _, d := range st.Details() {
		if ed, ok := d.(*ErrorDetail); ok {
			return ed
		}
	}
	return nil
}

// MayBeServed reports whether a call that failed with err, an error
// without a server's detail, may have been served: gRPC ends a call with
// Unavailable both when it could not connect (the call never left) and
// when the connection broke with the call in flight (the server may have
// applied it), with DeadlineExceeded or Canceled when the caller stopped
// waiting, and with Internal or Unknown when a stream broke oddly. Only a
// failure to dial says for sure the call never left. ResourceExhausted
// without a detail reads as not served: gRPC words a request over the
// server's limit (never run) as it words an answer over the caller's
// ("received message larger than max"), and the first is the common one;
// a node answering a write whose result is over the limit says so with
// an ambiguous detail.
func MayBeServed(err error) bool {
	switch status.Code(err) {
	case codes.Unavailable:
		return !strings.Contains(strings.ToLower(status.Convert(err).Message()), "while dialing")
	case codes.DeadlineExceeded, codes.Canceled, codes.Internal, codes.Unknown:
		return true
	}
	return false
}

// CommandStatusOf returns the status a BatchCommands result carries for
// err: the code, message and detail a unary method would have ended with.
func CommandStatusOf(err error) *CommandStatus {
	st := status.Convert(err)
	// A message that is not UTF-8 would fail to encode, and with it the
	// whole response.
	return &CommandStatus{Code: int32(st.Code()), Message: strings.ToValidUTF8(st.Message(), "\uFFFD"), Detail: DetailOf(err)}
}

// Err returns the error the command's unary method would have returned:
// the same code, message and detail, so that DetailOf and MayBeServed read
// it alike.
func (s *CommandStatus) Err() error {
	code := codes.Code(s.GetCode())
	if code == codes.OK {
		// A result must not read as success without a response.
		code = codes.Unknown
	}
	if d := s.GetDetail(); d != nil {
		if st, err := status.New(code, s.GetMessage()).WithDetails(d); err == nil {
			return st.Err()
		}
	}
	return status.Error(code, s.GetMessage())
}
