package main

import (
	"bufio"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// envInUsage finds the environment variable a flag's help names.
var envInUsage = regexp.MustCompile(`\(env (SHOAL_[A-Z0-9_]+)\)`)

// applyConfigFile sets, from the file at path, every flag of cmd that
// neither the command line nor its environment variable set: command line
// first, then environment, then the file, then the default.
//
// The file has one setting per line, `name = value` with the flag's name
// (`listen = 10.0.1.1:7100`, `weight = 2`); blank lines and lines starting
// with # are ignored, and a value may be quoted. A name that is not a flag
// of the command is an error, so a typo does not pass unnoticed.
func applyConfigFile(cmd *cobra.Command, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("config file: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, value, ok := strings.Cut(line, "=")
		if !ok {
			return fmt.Errorf("config file %s line %d: want name = value, got %q", path, n, line)
		}
		name = strings.TrimSpace(name)
		value = strings.TrimSpace(value)
		if len(value) >= 2 && value[0] == '"' && value[len(value)-1] == '"' {
			value = value[1 : len(value)-1]
		}
		fl := cmd.Flags().Lookup(name)
		if fl == nil || name == "config" {
			return fmt.Errorf("config file %s line %d: %q is not a setting of %q (see its --help)", path, n, name, cmd.CommandPath())
		}
		if fl.Changed || envSet(fl) {
			continue
		}
		if err := cmd.Flags().Set(name, value); err != nil {
			return fmt.Errorf("config file %s line %d: %s: %w", path, n, name, err)
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("config file %s: %w", path, err)
	}
	return nil
}

func envSet(fl *pflag.Flag) bool {
	m := envInUsage.FindStringSubmatch(fl.Usage)
	if m == nil {
		return false
	}
	_, ok := os.LookupEnv(m[1])
	return ok
}

// checkEnv reports a SHOAL_* variable that does not parse as its flag's
// type, for every flag of cmd that the command line did not set: the
// flags' defaults read the variables (envInt, envDuration, ...), and a
// value that does not parse would otherwise leave the built-in default in
// place without a word (SHOAL_MAX_DISK_STALL=60, without a unit).
func checkEnv(cmd *cobra.Command) error {
	var bad error
	cmd.Flags().VisitAll(func(fl *pflag.Flag) {
		m := envInUsage.FindStringSubmatch(fl.Usage)
		if bad != nil || fl.Changed || m == nil {
			return
		}
		v, ok := os.LookupEnv(m[1])
		if !ok {
			return
		}
		var err error
		switch fl.Value.Type() {
		case "int":
			_, err = strconv.Atoi(v)
		case "int64":
			_, err = strconv.ParseInt(v, 10, 64)
		case "uint", "uint64":
			_, err = strconv.ParseUint(v, 10, 64)
		case "float64":
			_, err = strconv.ParseFloat(v, 64)
		case "bool":
			_, err = strconv.ParseBool(v)
		case "duration":
			_, err = time.ParseDuration(v)
		}
		if err != nil {
			bad = fmt.Errorf("%s=%q: not a valid --%s (%s): %w", m[1], v, fl.Name, fl.Value.Type(), err)
		}
	})
	return bad
}
