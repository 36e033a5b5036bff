package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/client"
)

// clientFlags are the flags of the commands that talk to a cluster.
type clientFlags struct {
	masters string
	timeout time.Duration
	json    bool
}

func (f *clientFlags) add(cmd *cobra.Command) {
	cmd.PersistentFlags().StringVar(&f.masters, "master", envOr("SHOAL_MASTER", "127.0.0.1:7000"), "masters' gRPC addresses, comma separated (env SHOAL_MASTER)")
	cmd.PersistentFlags().DurationVar(&f.timeout, "timeout", envDuration("SHOAL_TIMEOUT", 10*time.Second), "give up after this long (env SHOAL_TIMEOUT)")
	cmd.PersistentFlags().BoolVar(&f.json, "json", false, "print JSON for scripts")
}

func (f *clientFlags) addrs() []string {
	var out []string
	for _, a := range strings.Split(f.masters, ",") {
		if a = strings.TrimSpace(a); a != "" {
			out = append(out, a)
		}
	}
	return out
}

// open connects a client within the command's timeout.
func (f *clientFlags) open(ctx context.Context) (*client.Client, context.Context, context.CancelFunc, error) {
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	c, err := client.Open(ctx, f.addrs())
	if err != nil {
		cancel()
		return nil, nil, nil, err
	}
	return c, ctx, func() { c.Close(); cancel() }, nil
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func newKVCmds() []*cobra.Command {
	f := &clientFlags{}
	get := &cobra.Command{
		Use:   "get KEY",
		Short: "Print a key's value",
		Long: "Print a key's value. A missing key is an error (exit status 1); with --json it prints\n" +
			"{\"key\": ..., \"found\": false} and exits 0, so that a script tells \"absent\" from a failure.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, ctx, done, err := f.open(cmd.Context())
			if err != nil {
				return err
			}
			defer done()
			it, found, err := c.Get(ctx, []byte(args[0]))
			if err != nil {
				return err
			}
			if f.json {
				out := map[string]any{"key": args[0], "found": found}
				if found {
					out["value"] = string(it.Value)
					if !it.ExpireAt.IsZero() {
						out["expire_at"] = it.ExpireAt.UTC().Format(time.RFC3339Nano)
					}
				}
				return printJSON(cmd.OutOrStdout(), out)
			}
			if !found {
				return fmt.Errorf("%s: not found", args[0])
			}
			fmt.Fprintln(cmd.OutOrStdout(), string(it.Value))
			return nil
		},
	}
	var (
		ttl    time.Duration
		nx, xx bool
	)
	set := &cobra.Command{
		Use:   "set KEY VALUE",
		Short: "Set a key",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if nx && xx {
				return fmt.Errorf("--nx and --xx exclude each other")
			}
			var opts []client.PutOption
			if ttl > 0 {
				opts = append(opts, client.WithTTL(ttl))
			}
			if nx {
				opts = append(opts, client.IfNotExists())
			}
			if xx {
				opts = append(opts, client.IfExists())
			}
			c, ctx, done, err := f.open(cmd.Context())
			if err != nil {
				return err
			}
			defer done()
			ok, err := c.Put(ctx, []byte(args[0]), []byte(args[1]), opts...)
			if err != nil {
				return err
			}
			if f.json {
				return printJSON(cmd.OutOrStdout(), map[string]any{"key": args[0], "set": ok})
			}
			if ok {
				fmt.Fprintln(cmd.OutOrStdout(), "OK")
			} else {
				fmt.Fprintln(cmd.OutOrStdout(), "not set (condition not met)")
			}
			return nil
		},
	}
	set.Flags().DurationVar(&ttl, "ttl", 0, "expire after this long")
	set.Flags().BoolVar(&nx, "nx", false, "only if the key does not exist")
	set.Flags().BoolVar(&xx, "xx", false, "only if the key exists")
	del := &cobra.Command{
		Use:   "del KEY",
		Short: "Delete a key",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, ctx, done, err := f.open(cmd.Context())
			if err != nil {
				return err
			}
			defer done()
			found, err := c.Delete(ctx, []byte(args[0]))
			if err != nil {
				return err
			}
			if f.json {
				return printJSON(cmd.OutOrStdout(), map[string]any{"key": args[0], "deleted": found})
			}
			fmt.Fprintln(cmd.OutOrStdout(), map[bool]string{true: "deleted", false: "not found"}[found])
			return nil
		},
	}
	var by int64
	incr := &cobra.Command{
		Use:   "incr KEY",
		Short: "Add to an integer key (1 by default) and print the result",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, ctx, done, err := f.open(cmd.Context())
			if err != nil {
				return err
			}
			defer done()
			v, err := c.Incr(ctx, []byte(args[0]), by)
			if err != nil {
				return err
			}
			if f.json {
				return printJSON(cmd.OutOrStdout(), map[string]any{"key": args[0], "value": v})
			}
			fmt.Fprintln(cmd.OutOrStdout(), v)
			return nil
		},
	}
	incr.Flags().Int64Var(&by, "by", 1, "amount to add (negative to subtract)")
	var (
		limit    int
		prefix   string
		keysOnly bool
	)
	scan := &cobra.Command{
		Use:   "scan",
		Short: "List keys (in slot order), with their values",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, ctx, done, err := f.open(cmd.Context())
			if err != nil {
				return err
			}
			defer done()
			s := c.Scan(ctx, client.ScanOptions{KeysOnly: keysOnly})
			type kv struct {
				Key   string `json:"key"`
				Value string `json:"value,omitempty"`
			}
			out := []kv{} // --json prints [] for no keys, not null
			for s.Next() && (limit <= 0 || len(out) < limit) {
				if !strings.HasPrefix(string(s.Key()), prefix) {
					continue
				}
				out = append(out, kv{string(s.Key()), string(s.Value())})
			}
			if err := s.Err(); err != nil {
				return err
			}
			if f.json {
				return printJSON(cmd.OutOrStdout(), out)
			}
			for _, e := range out {
				if keysOnly {
					fmt.Fprintln(cmd.OutOrStdout(), e.Key)
				} else {
					fmt.Fprintf(cmd.OutOrStdout(), "%s\t%s\n", e.Key, e.Value)
				}
			}
			return nil
		},
	}
	scan.Flags().IntVar(&limit, "limit", 100, "at most this many keys; 0 for all")
	scan.Flags().StringVar(&prefix, "prefix", "", "only keys with this prefix (filtered by the client: the whole key space is read)")
	scan.Flags().BoolVar(&keysOnly, "keys-only", false, "list keys without values")
	cmds := []*cobra.Command{get, set, del, incr, scan}
	for _, c := range cmds {
		f.add(c)
	}
	return cmds
}

func newClusterCmd() *cobra.Command {
	f := &clientFlags{}
	cmd := &cobra.Command{Use: "cluster", Short: "Look at the cluster"}
	f.add(cmd)
	status := &cobra.Command{
		Use:   "status",
		Short: "Show masters, nodes, shards, leaders and operators",
		Long: `Show masters, nodes, shards, leaders and operators.

In the node table REPLICAS and LEADERS count the route table's replicas;
HEARTBEAT (its age), USED (disk), FREE (free space on the node's disk,
"(full)" while it refuses writes for want of it, "(exhausted)" while below
half its reserve it also takes no other leader's entries) and HOSTED
(replicas/leaders) are what the node said in its last heartbeat to the
leading master, "-" when that master has none (a follower answered, or the
node has not heartbeated it yet).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), f.timeout)
			defer cancel()
			m, err := client.DialMasters(f.addrs())
			if err != nil {
				return err
			}
			defer m.Close()
			var st *shoalpb.ClusterState
			err = m.Call(ctx, func(ctx context.Context, mc shoalpb.MasterClient) error {
				st, err = mc.GetCluster(ctx, &shoalpb.GetClusterRequest{})
				return err
			})
			if err != nil {
				return err
			}
			if f.json {
				b, err := protojson.MarshalOptions{Multiline: true, UseProtoNames: true}.Marshal(st)
				if err != nil {
					return err
				}
				_, err = fmt.Fprintln(cmd.OutOrStdout(), string(b))
				return err
			}
			printStatus(cmd.OutOrStdout(), st)
			return nil
		},
	}
	cmd.AddCommand(status)
	return cmd
}

func printStatus(w io.Writer, st *shoalpb.ClusterState) {
	if st.Cluster == nil {
		fmt.Fprintln(w, "cluster: not bootstrapped")
	} else {
		fmt.Fprintf(w, "cluster %s: %d shards, replication factor %d, route table version %d\n\n",
			st.Cluster.ClusterId, st.Cluster.Shards, st.Cluster.Replicas, st.Routes.GetVersion())
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "MASTER\tADDR\tROLE")
	sort.Slice(st.Masters, func(i, j int) bool { return st.Masters[i].Id < st.Masters[j].Id })
	for _, m := range st.Masters {
		role := "follower"
		if m.Leader {
			role = "leader"
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\n", m.Id, m.Addr, role)
	}
	tw.Flush()
	fmt.Fprintln(w)

	replicas, leaders := map[uint64]int{}, map[uint64]int{}
	for _, rt := range st.Routes.GetShards() {
		for _, r := range rt.Shard.Replicas {
			replicas[r.NodeId]++
			if r.ReplicaId == rt.LeaderReplica {
				leaders[r.NodeId]++
			}
		}
	}
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	// REPLICAS and LEADERS are the route table's; HEARTBEAT, USED, FREE
	// and HOSTED (replicas/leaders) are what the node said in its last
	// heartbeat to the leading master ("-" when it has none). FREE says
	// "(full)" while the node refuses writes for want of disk space,
	// "(exhausted)" while it also drops other leaders' entries.
	fmt.Fprintln(tw, "NODE\tADDR\tZONE\tWEIGHT\tSTATE\tSINCE\tREASON\tREPLICAS\tLEADERS\tHEARTBEAT\tUSED\tFREE\tHOSTED")
	for _, n := range st.Nodes {
		since := "-"
		if n.StateSinceMs > 0 {
			since = time.UnixMilli(n.StateSinceMs).UTC().Format(time.DateTime)
		}
		zone := n.Zone
		if zone == "" {
			zone = "-"
		}
		beat, used, free, hosted := "-", "-", "-", "-"
		if hb := st.NodeHeartbeats[n.Id]; hb != nil {
			beat = heartbeatAge(hb.AgeMs)
			if hb.Stats != nil {
				used = humanBytes(hb.Stats.UsedBytes)
				if hb.Stats.FreeBytes > 0 {
					free = humanBytes(hb.Stats.FreeBytes)
				}
				switch {
				case hb.Stats.DiskExhausted:
					free += " (exhausted)"
				case hb.Stats.DiskFull:
					free += " (full)"
				}
			}
			hosted = fmt.Sprintf("%d/%d", hb.Replicas, hb.Leaders)
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%s\t%s\t%s\t%s\n", n.Id, n.Addr, zone, strconv.FormatFloat(n.Weight, 'g', -1, 64),
			n.State.Name(), since, n.StateReason, replicas[n.Id], leaders[n.Id], beat, used, free, hosted)
	}
	tw.Flush()
	fmt.Fprintln(w)

	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SHARD\tSLOTS\tEPOCH\tLEADER\tREPLICAS (node:role)")
	for _, rt := range st.Routes.GetShards() {
		d := rt.Shard
		leader := "-"
		var reps []string
		for _, r := range d.Replicas {
			role := strings.ToLower(strings.TrimPrefix(r.Role.String(), "REPLICA_ROLE_"))
			reps = append(reps, fmt.Sprintf("%d:%s", r.NodeId, role))
			if r.ReplicaId == rt.LeaderReplica {
				leader = fmt.Sprintf("node %d", r.NodeId)
			}
		}
		fmt.Fprintf(tw, "%d\t%d-%d\t%d\t%s\t%s\n", d.ShardId, d.StartSlot, d.EndSlot-1, d.Epoch, leader, strings.Join(reps, " "))
	}
	tw.Flush()
	fmt.Fprintln(w)
	printOperators(w, st, false)
}

// heartbeatAge formats how long ago a heartbeat arrived, e.g. "0.4s ago".
func heartbeatAge(ms int64) string {
	d := time.Duration(max(ms, 0)) * time.Millisecond
	if d < time.Minute {
		return fmt.Sprintf("%.1fs ago", d.Seconds())
	}
	return d.Round(time.Second).String() + " ago"
}
