package chaos

import (
	"fmt"
	"math"
	"sort"
	"time"

	"github.com/anishathalye/porcupine"
)

// OpKind is a register operation.
type OpKind uint8

// Register operations.
const (
	OpGet OpKind = iota + 1
	OpPut
	OpCAS
)

// Outcome says what a client learned about an operation.
type Outcome uint8

// Outcomes. A failed write did certainly not apply; an unknown one may
// have. Reads that fail are not recorded at all (they change nothing).
const (
	OutcomeOK Outcome = iota + 1
	OutcomeFailed
	OutcomeUnknown
)

// RegisterOp is one operation of the register workload: a read, a write
// of a value no other write uses, or a compare-and-set.
type RegisterOp struct {
	Client int
	Key    string
	Kind   OpKind
	// Value is what Put writes or CAS sets; Expect is what CAS compares.
	Value, Expect string
	// Out is what Get read ("" with Found false for a missing key), and
	// Swapped whether CAS swapped.
	Out     string
	Found   bool
	Swapped bool
	Outcome Outcome
	// Call and Return are nanoseconds since the start of the run; Return
	// is meaningless for an unknown outcome.
	Call, Return int64
}

// absent is the model's value of a key that does not exist. Workloads
// never write the empty string, so it cannot be confused with a value.
const absent = ""

type regInput struct {
	kind          OpKind
	value, expect string
}

type regOutput struct {
	out     string
	found   bool
	swapped bool
	unknown bool
}

// registerModel is a map of independent registers, partitioned by key so
// that porcupine checks each register's history on its own.
func registerModel() porcupine.Model {
	return porcupine.Model{
		Partition: func(h []porcupine.Operation) [][]porcupine.Operation {
			byKey := map[string][]porcupine.Operation{}
			var order []string
			for _, op := range h {
				k := op.Metadata.(string)
				if _, ok := byKey[k]; !ok {
					order = append(order, k)
				}
				byKey[k] = append(byKey[k], op)
			}
			out := make([][]porcupine.Operation, 0, len(order))
			for _, k := range order {
				out = append(out, byKey[k])
			}
			return out
		},
		Init: func() any { return absent },
		Step: func(state, input, output any) (bool, any) {
			s, in, out := state.(string), input.(regInput), output.(regOutput)
			switch in.kind {
			case OpGet:
				if out.found {
					return out.out == s, s
				}
				return s == absent, s
			case OpPut:
				return true, in.value
			case OpCAS:
				if out.unknown {
					// It applied (it must have, to be linearized before
					// the end of the history) and swapped iff it matched.
					if s == in.expect {
						return true, in.value
					}
					return true, s
				}
				if out.swapped {
					return s == in.expect, in.value
				}
				return s != in.expect, s
			}
			return false, s
		},
		DescribeOperation: func(input, output any) string {
			in, out := input.(regInput), output.(regOutput)
			switch in.kind {
			case OpGet:
				if !out.found {
					return "get() -> nil"
				}
				return fmt.Sprintf("get() -> %s", out.out)
			case OpPut:
				if out.unknown {
					return fmt.Sprintf("put(%s) -> ?", in.value)
				}
				return fmt.Sprintf("put(%s)", in.value)
			default:
				if out.unknown {
					return fmt.Sprintf("cas(%s, %s) -> ?", in.expect, in.value)
				}
				return fmt.Sprintf("cas(%s, %s) -> %v", in.expect, in.value, out.swapped)
			}
		},
	}
}

// LinearizabilityResult is the outcome of checking a register history.
type LinearizabilityResult struct {
	// Ops is the number of operations checked (failed writes excluded).
	Ops int
	// Unknown counts writes whose outcome the client could not learn.
	Unknown int
	// Result is porcupine's verdict: Ok, Illegal, or Unknown (timed out).
	Result porcupine.CheckResult
	// Info visualises the history (porcupine.Visualize) when not Ok.
	Info porcupine.LinearizationInfo
}

// OK reports whether the history was proven linearizable.
func (r LinearizabilityResult) OK() bool { return r.Result == porcupine.Ok }

// CheckLinearizable checks a register history with porcupine. A write that
// certainly failed is left out; a write whose outcome is unknown may take
// effect at any point after its call (its return is the end of time). A
// check that does not finish within timeout is reported as
// porcupine.Unknown, which is not a pass.
//
// Writes of unknown outcome stay open to the end of the history, and a few
// dozen on one key (a fault that timed out many writes to its shard) can
// make porcupine's search explode. So the history is first checked without
// the unknown writes whose value no read returned and no successful CAS
// expected. That check can only pass when the whole history is
// linearizable: the writes it left out can all be linearized at the end of
// the history, after every other operation, where they change nothing
// anyone saw. If it does not pass, the whole history is checked.
func CheckLinearizable(ops []RegisterOp, timeout time.Duration) LinearizabilityResult {
	var h, reduced []porcupine.Operation
	res := LinearizabilityResult{}
	observed := map[[2]string]bool{}
	for _, op := range ops {
		switch {
		case op.Kind == OpGet && op.Outcome == OutcomeOK && op.Found:
			observed[[2]string{op.Key, op.Out}] = true
		case op.Kind == OpCAS && op.Outcome == OutcomeOK && op.Swapped:
			observed[[2]string{op.Key, op.Expect}] = true
		}
	}
	for _, op := range ops {
		if op.Outcome == OutcomeFailed {
			continue
		}
		if op.Kind == OpGet && op.Outcome != OutcomeOK {
			continue
		}
		in := regInput{kind: op.Kind, value: op.Value, expect: op.Expect}
		out := regOutput{out: op.Out, found: op.Found, swapped: op.Swapped}
		ret := op.Return
		if op.Outcome == OutcomeUnknown {
			out.unknown = true
			ret = math.MaxInt64
			res.Unknown++
		}
		o := porcupine.Operation{ClientId: op.Client, Input: in, Call: op.Call, Output: out, Return: ret, Metadata: op.Key}
		h = append(h, o)
		if !out.unknown || observed[[2]string{op.Key, op.Value}] {
			reduced = append(reduced, o)
		}
	}
	byCall := func(ops []porcupine.Operation) {
		sort.SliceStable(ops, func(i, j int) bool { return ops[i].Call < ops[j].Call })
	}
	byCall(h)
	res.Ops = len(h)
	if len(reduced) < len(h) {
		byCall(reduced)
		res.Result, res.Info = porcupine.CheckOperationsVerbose(registerModel(), reduced, timeout)
		if res.Result == porcupine.Ok {
			return res
		}
	}
	res.Result, res.Info = porcupine.CheckOperationsVerbose(registerModel(), h, timeout)
	return res
}

// Visualize writes porcupine's HTML view of the checked history (each
// key's operations on a timeline, the longest linearizable prefix marked)
// to path.
func (r LinearizabilityResult) Visualize(path string) error {
	return porcupine.VisualizePath(registerModel(), r.Info, path)
}
