// Command shoal is Shoal's one binary: servers, the local playground and
// (in later issues) the client and admin commands.
package main

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/spf13/cobra"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	if err := newRootCmd(os.Stdout, os.Stderr).Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}

// globalFlags are the flags every command shares.
type globalFlags struct {
	logLevel  string
	logFormat string
	config    string
}

func newRootCmd(stdout, stderr io.Writer) *cobra.Command {
	g := &globalFlags{}
	root := &cobra.Command{
		Use:   "shoal",
		Short: "Shoal: a sharded, Raft-replicated key-value store",
		Long: `Shoal is a distributed key-value store: data is split into 16384 hash slots
(as in Redis Cluster), slots are grouped into shards, and every shard is a Raft
group replicated on several nodes, stored in Pebble.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.PersistentFlags().StringVar(&g.logLevel, "log-level", envOr("SHOAL_LOG_LEVEL", "info"), "log level: debug, info, warn, error (env SHOAL_LOG_LEVEL)")
	root.PersistentFlags().StringVar(&g.logFormat, "log-format", envOr("SHOAL_LOG_FORMAT", "text"), "log format: text or json (env SHOAL_LOG_FORMAT)")
	root.PersistentFlags().StringVar(&g.config, "config", envOr("SHOAL_CONFIG", ""), "file of settings, one `name = value` per line with the flags' names; the command line and SHOAL_* variables win over it (env SHOAL_CONFIG)")
	root.PersistentPreRunE = func(cmd *cobra.Command, _ []string) error {
		if err := checkEnv(cmd); err != nil {
			return err
		}
		if g.config == "" {
			return nil
		}
		return applyConfigFile(cmd, g.config)
	}
	root.AddCommand(newPlaygroundCmd(g), newMasterCmd(g), newNodeCmd(g), newClusterCmd(), newShardCmd(), newScheduleCmd(), newOperatorCmd(), newBenchCmd(), newVersionCmd())
	root.AddCommand(newKVCmds()...)
	return root
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			fmt.Fprintln(cmd.OutOrStdout(), "shoal", version)
		},
	}
}

// logger builds the process's logger from the global flags.
func (g *globalFlags) logger(w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(g.logLevel)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", g.logLevel)
	}
	opts := &slog.HandlerOptions{Level: level}
	switch strings.ToLower(g.logFormat) {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text or json", g.logFormat)
}

func envOr(name, def string) string {
	if v, ok := os.LookupEnv(name); ok {
		return v
	}
	return def
}
