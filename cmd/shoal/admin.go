package main

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/client"
)

// adminCall runs f against the leading master within the command's timeout.
func (f *clientFlags) adminCall(ctx context.Context, call func(ctx context.Context, mc shoalpb.MasterClient) error) error {
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	m, err := client.DialMasters(f.addrs())
	if err != nil {
		return err
	}
	defer m.Close()
	if err := m.Call(ctx, call); err != nil {
		if st, ok := status.FromError(err); ok {
			return fmt.Errorf("%s: %s", strings.ToLower(st.Code().String()), st.Message())
		}
		return err
	}
	return nil
}

func (f *clientFlags) print(w io.Writer, msg proto.Message, human func()) error {
	if f.json {
		b, err := protojson.MarshalOptions{Multiline: true, UseProtoNames: true}.Marshal(msg)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintln(w, string(b))
		return err
	}
	human()
	return nil
}

func parseID(what, s string) (uint64, error) {
	id, err := strconv.ParseUint(s, 10, 64)
	if err != nil || id == 0 {
		return 0, fmt.Errorf("%s %q: want a positive integer", what, s)
	}
	return id, nil
}

// addNodeAdminCmds adds drain, undrain, remove and set under `shoal node`.
func addNodeAdminCmds(nodeCmd *cobra.Command) {
	f := &clientFlags{}
	setState := func(use, short, long string, state shoalpb.NodeState) *cobra.Command {
		return &cobra.Command{
			Use: use + " NODE_ID", Short: short, Long: long, Args: cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				id, err := parseID("node", args[0])
				if err != nil {
					return err
				}
				var resp *shoalpb.SetNodeStateResponse
				if err := f.adminCall(cmd.Context(), func(ctx context.Context, mc shoalpb.MasterClient) error {
					resp, err = mc.SetNodeState(ctx, &shoalpb.SetNodeStateRequest{NodeId: id, State: state, Reason: "set by an administrator (shoal node " + use + ")"})
					return err
				}); err != nil {
					return err
				}
				return f.print(cmd.OutOrStdout(), resp, func() {
					fmt.Fprintf(cmd.OutOrStdout(), "node %d is %s\n", id, resp.Node.State.Name())
				})
			},
		}
	}
	drain := setState("drain", "Move every replica and leadership off a node; it is removed once empty",
		`Drain a node: the master moves its leaderships and replicas to other nodes,
within the operator concurrency limits, and marks it removed once it holds
nothing. Follow with 'shoal cluster status' or 'shoal operator list'.`, shoalpb.NodeState_NODE_STATE_DRAINING)
	undrain := setState("undrain", "Stop draining a node: it takes replicas again", "", shoalpb.NodeState_NODE_STATE_UP)
	remove := setState("remove", "Remove a node from the cluster now (its replicas are rebuilt elsewhere)",
		`Remove a node at once, for a node that is gone for good: its replicas are
replaced on other nodes right away, without waiting for --repair-after. A
removed node cannot come back (wipe its data directory to add it again as a
new node). A node that is up and holds replicas is refused: drain it (it is
removed once empty), or stop it and remove it once the master sees it down.`, shoalpb.NodeState_NODE_STATE_REMOVED)
	var (
		weight float64
		zone   string
	)
	set := &cobra.Command{
		Use: "set NODE_ID", Short: "Set a node's weight or zone (kept across its restarts)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := parseID("node", args[0])
			if err != nil {
				return err
			}
			req := &shoalpb.SetNodeLabelsRequest{NodeId: id, Weight: weight}
			if cmd.Flags().Changed("zone") {
				req.Zone, req.ClearZone = zone, zone == ""
			}
			if req.Weight == 0 && !cmd.Flags().Changed("zone") {
				return fmt.Errorf("give --weight or --zone")
			}
			if cmd.Flags().Changed("weight") && weight <= 0 {
				return fmt.Errorf("--weight %v: want > 0", weight)
			}
			var resp *shoalpb.SetNodeStateResponse
			if err := f.adminCall(cmd.Context(), func(ctx context.Context, mc shoalpb.MasterClient) error {
				resp, err = mc.SetNodeLabels(ctx, req)
				return err
			}); err != nil {
				return err
			}
			return f.print(cmd.OutOrStdout(), resp, func() {
				fmt.Fprintf(cmd.OutOrStdout(), "node %d: weight %v, zone %q\n", id, resp.Node.Weight, resp.Node.Zone)
			})
		},
	}
	set.Flags().Float64Var(&weight, "weight", 0, "capacity weight (> 0)")
	set.Flags().StringVar(&zone, "zone", "", "zone; empty clears it")
	for _, c := range []*cobra.Command{drain, undrain, remove, set} {
		f.add(c)
		nodeCmd.AddCommand(c)
	}
}

func newShardCmd() *cobra.Command {
	f := &clientFlags{}
	cmd := &cobra.Command{Use: "shard", Short: "Move shard replicas and leaders by hand"}
	f.add(cmd)
	var from, to uint64
	var wait bool
	move := &cobra.Command{
		Use:   "move SHARD_ID --from NODE --to NODE",
		Short: "Move a shard's replica from one node to another",
		Long: `Move a shard's replica: a new replica is added on --to as a learner, gets a
snapshot and catches up, is promoted, and the replica on --from is removed
(its leadership handed over first). With --wait, show progress until it ends.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			shard, err := parseID("shard", args[0])
			if err != nil {
				return err
			}
			if from == 0 || to == 0 {
				return fmt.Errorf("give --from and --to")
			}
			var op *shoalpb.Operator
			if err := f.adminCall(cmd.Context(), func(ctx context.Context, mc shoalpb.MasterClient) error {
				op, err = mc.MoveReplica(ctx, &shoalpb.MoveReplicaRequest{ShardId: shard, FromNode: from, ToNode: to})
				return err
			}); err != nil {
				return err
			}
			return f.started(cmd, op, wait)
		},
	}
	move.Flags().Uint64Var(&from, "from", 0, "node the replica leaves")
	move.Flags().Uint64Var(&to, "to", 0, "node the replica goes to")
	move.Flags().BoolVar(&wait, "wait", false, "wait until the move ends, showing progress")
	var leaderTo uint64
	transfer := &cobra.Command{
		Use:   "transfer-leader SHARD_ID --to NODE",
		Short: "Hand a shard's leadership to its replica on a node",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			shard, err := parseID("shard", args[0])
			if err != nil {
				return err
			}
			if leaderTo == 0 {
				return fmt.Errorf("give --to")
			}
			var op *shoalpb.Operator
			if err := f.adminCall(cmd.Context(), func(ctx context.Context, mc shoalpb.MasterClient) error {
				op, err = mc.TransferShardLeader(ctx, &shoalpb.TransferShardLeaderRequest{ShardId: shard, ToNode: leaderTo})
				return err
			}); err != nil {
				return err
			}
			return f.started(cmd, op, wait)
		},
	}
	transfer.Flags().Uint64Var(&leaderTo, "to", 0, "node whose replica takes over")
	transfer.Flags().BoolVar(&wait, "wait", false, "wait until the transfer ends")
	cmd.AddCommand(move, transfer)
	return cmd
}

// started reports a new operator and, with wait, follows it to its end.
func (f *clientFlags) started(cmd *cobra.Command, op *shoalpb.Operator, wait bool) error {
	w := cmd.OutOrStdout()
	if !wait {
		return f.print(w, op, func() {
			fmt.Fprintf(w, "operator %d started: %s\n  steps: %s\n", op.Id, op.Reason, strings.Join(shoalpb.DescribeSteps(op.Steps), ", "))
		})
	}
	if !f.json {
		fmt.Fprintf(w, "operator %d started: %s\n", op.Id, op.Reason)
	}
	var missingSince time.Time
	for {
		st, err := f.clusterState(cmd.Context())
		if err == nil {
			found := false
			for _, done := range st.Finished {
				if done.Id == op.Id {
					if f.json {
						if err := f.print(w, done, nil); err != nil {
							return err
						}
					} else {
						fmt.Fprintf(w, "operator %d: %s after %s\n", op.Id, done.Outcome,
							time.UnixMilli(done.FinishedMs).Sub(time.UnixMilli(done.CreatedMs)).Round(time.Millisecond))
					}
					if done.Outcome != "done" {
						return fmt.Errorf("operator %d did not complete: %s", op.Id, done.Outcome)
					}
					return nil
				}
			}
			for _, cur := range st.Operators {
				if cur.Id == op.Id {
					found = true
					if !f.json {
						fmt.Fprintf(w, "  %s\n", progressLine(cur))
					}
				}
			}
			switch {
			case found:
				missingSince = time.Time{}
			case missingSince.IsZero():
				// A master that answered may not have applied the
				// operator's start yet: give it time.
				missingSince = time.Now()
			case time.Since(missingSince) > 10*time.Second:
				// The masters keep the last 64 finished operators: this
				// one finished while the polls failed and others
				// finished after it.
				return fmt.Errorf("operator %d is neither running nor among the finished operators the masters keep: its outcome is unknown (see the shard's replicas: shoal cluster status)", op.Id)
			}
		}
		select {
		case <-cmd.Context().Done():
			return cmd.Context().Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func (f *clientFlags) clusterState(ctx context.Context) (*shoalpb.ClusterState, error) {
	var st *shoalpb.ClusterState
	err := f.adminCall(ctx, func(ctx context.Context, mc shoalpb.MasterClient) error {
		var err error
		st, err = mc.GetCluster(ctx, &shoalpb.GetClusterRequest{})
		return err
	})
	return st, err
}

func newScheduleCmd() *cobra.Command {
	f := &clientFlags{}
	cmd := &cobra.Command{Use: "schedule", Short: "Pause or resume automatic scheduling (repair, balance, drain)"}
	f.add(cmd)
	for _, paused := range []bool{true, false} {
		use, short := "resume", "Resume automatic scheduling"
		if paused {
			use, short = "pause", "Pause automatic scheduling; operators in flight and administrators' moves still run"
		}
		cmd.AddCommand(&cobra.Command{
			Use: use, Short: short, Args: cobra.NoArgs,
			RunE: func(cmd *cobra.Command, _ []string) error {
				var resp *shoalpb.SetSchedulingRequest
				if err := f.adminCall(cmd.Context(), func(ctx context.Context, mc shoalpb.MasterClient) error {
					var err error
					resp, err = mc.SetScheduling(ctx, &shoalpb.SetSchedulingRequest{Paused: paused})
					return err
				}); err != nil {
					return err
				}
				if f.json {
					// Not the message: protojson leaves out a false paused.
					return printJSON(cmd.OutOrStdout(), map[string]bool{"paused": resp.GetPaused()})
				}
				fmt.Fprintf(cmd.OutOrStdout(), "scheduling %sd\n", use)
				return nil
			},
		})
	}
	return cmd
}

func newOperatorCmd() *cobra.Command {
	f := &clientFlags{}
	cmd := &cobra.Command{Use: "operator", Short: "List or cancel the master's operators (shard moves, repairs, leader transfers)"}
	f.add(cmd)
	var all bool
	list := &cobra.Command{
		Use: "list", Short: "List operators in flight with progress and ETA (--all: with the recently finished)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := f.clusterState(cmd.Context())
			if err != nil {
				return err
			}
			out := &shoalpb.ClusterState{Operators: st.Operators, SchedulingPaused: st.SchedulingPaused}
			if all {
				out.Finished = st.Finished
			}
			return f.print(cmd.OutOrStdout(), out, func() { printOperators(cmd.OutOrStdout(), out, all) })
		},
	}
	list.Flags().BoolVar(&all, "all", false, "also list the recently finished operators")
	cancel := &cobra.Command{
		Use: "cancel OPERATOR_ID", Short: "Stop an operator and roll it back", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := parseID("operator", args[0])
			if err != nil {
				return err
			}
			var op *shoalpb.Operator
			if err := f.adminCall(cmd.Context(), func(ctx context.Context, mc shoalpb.MasterClient) error {
				op, err = mc.CancelOperator(ctx, &shoalpb.CancelOperatorRequest{Id: id})
				return err
			}); err != nil {
				return err
			}
			return f.print(cmd.OutOrStdout(), op, func() {
				fmt.Fprintf(cmd.OutOrStdout(), "operator %d is rolling back\n", id)
			})
		},
	}
	cmd.AddCommand(list, cancel)
	return cmd
}

// printOperators prints the operators table of `cluster status` and
// `operator list`.
func printOperators(w io.Writer, st *shoalpb.ClusterState, finished bool) {
	paused := ""
	if st.SchedulingPaused {
		paused = " (automatic scheduling paused)"
	}
	if len(st.Operators) == 0 {
		fmt.Fprintf(w, "OPERATORS: none in flight%s\n", paused)
	} else {
		fmt.Fprintf(w, "OPERATORS in flight%s:\n", paused)
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tSHARD\tKIND\tSTEP\tPROGRESS\tAGE\tREASON")
		for _, op := range st.Operators {
			fmt.Fprintf(tw, "%d\t%d\t%s\t%s\t%s\t%s\t%s\n", op.Id, op.ShardId, op.Kind.Name(), stepCell(op), progressCell(op),
				time.Since(time.UnixMilli(op.CreatedMs)).Round(time.Second), op.Reason)
		}
		tw.Flush()
	}
	if finished && len(st.Finished) > 0 {
		fmt.Fprintln(w, "\nFINISHED (most recent last):")
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tSHARD\tKIND\tTOOK\tOUTCOME\tREASON")
		for _, op := range st.Finished {
			fmt.Fprintf(tw, "%d\t%d\t%s\t%s\t%s\t%s\n", op.Id, op.ShardId, op.Kind.Name(),
				time.UnixMilli(op.FinishedMs).Sub(time.UnixMilli(op.CreatedMs)).Round(time.Millisecond), op.Outcome, op.Reason)
		}
		tw.Flush()
	}
}

func stepCell(op *shoalpb.Operator) string {
	if int(op.Current) >= len(op.Steps) {
		return fmt.Sprintf("%d/%d", op.Current, len(op.Steps))
	}
	s := fmt.Sprintf("%d/%d %s", op.Current+1, len(op.Steps), op.Steps[op.Current].Describe())
	if op.RollingBack {
		s += " (rolling back)"
	}
	return s
}

func progressCell(op *shoalpb.Operator) string {
	if op.TotalBytes == 0 {
		if op.LastError != "" {
			return "retrying: " + op.LastError
		}
		return "-"
	}
	s := fmt.Sprintf("%.0f%% of %s", 100*float64(op.ProgressBytes)/float64(op.TotalBytes), humanBytes(op.TotalBytes))
	if op.EtaMs > 0 {
		s += fmt.Sprintf(", ETA %s", (time.Duration(op.EtaMs) * time.Millisecond).Round(time.Second))
	}
	return s
}

func progressLine(op *shoalpb.Operator) string {
	return fmt.Sprintf("step %s: %s", stepCell(op), progressCell(op))
}

func humanBytes(b uint64) string {
	switch {
	case b >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(b)/(1<<30))
	case b >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20))
	case b >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(b)/(1<<10))
	}
	return fmt.Sprintf("%d B", b)
}
