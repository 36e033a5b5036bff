package lint

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
)

const module = "github.com/shoaldb/shoal"

// allowed lists, for each package of the module, the module packages its
// non-test code may import. Imports point one way:
//
//	keys ← storage ← raftlog ← raftstore ← {kv, node, master} ← cmd
//
// api/shoalpb is a leaf everyone may use; client is public and sees only
// the API; master/schedule is pure; front ends are thin adapters. A package
// missing here fails the test, so new packages must take a place.
var allowed = map[string][]string{
	"api/shoalpb":               {},
	"client":                    {"api/shoalpb", "internal/keys"},
	"internal/keys":             {},
	"internal/storage":          {"internal/keys"},
	"internal/raftlog":          {"api/shoalpb", "internal/keys", "internal/storage"},
	"internal/raftstore":        {"api/shoalpb", "internal/keys", "internal/storage", "internal/raftlog"},
	"internal/transport":        {"api/shoalpb"},
	"internal/kv":               {"api/shoalpb", "internal/keys", "internal/storage", "internal/raftstore"},
	"internal/node":             {"api/shoalpb", "client", "internal/resp", "internal/keys", "internal/storage", "internal/raftlog", "internal/raftstore", "internal/transport", "internal/kv", "internal/metrics"},
	"internal/master":           {"api/shoalpb", "internal/keys", "internal/storage", "internal/raftlog", "internal/raftstore", "internal/transport", "internal/master/schedule", "internal/master/dashboard", "internal/metrics"},
	"internal/master/dashboard": {},
	"internal/metrics":          {"internal/kv", "internal/raftstore", "internal/storage"},
	"internal/bench":            {"internal/keys"},
	"internal/master/schedule":  {"api/shoalpb"},
	"internal/resp":             {"api/shoalpb", "internal/keys", "client"},
	"internal/admin":            {"api/shoalpb"},
	"internal/testcluster":      {"*"},
	"internal/chaos":            {"*"},
	"internal/faultfs":          {},
	"internal/testlog":          {},
	"internal/lint":             {},
	"cmd/shoal":                 {"*"},
	// A module of its own (a trace reader, docs/benchmarks.md): nothing
	// of Shoal.
	"bench/tracewaits": {},
}

// testOnly packages may be imported only from tests and cmd-free test
// infrastructure.
var testOnly = map[string]bool{"internal/testcluster": true, "internal/chaos": true, "internal/faultfs": true, "internal/testlog": true}

type pkgFiles struct {
	files, tests []*ast.File
	fset         *token.FileSet
	paths        map[*ast.File]string
}

func root(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("go.mod not found")
		}
		dir = parent
	}
}

func parseModule(t *testing.T) map[string]*pkgFiles {
	t.Helper()
	top := root(t)
	pkgs := map[string]*pkgFiles{}
	fset := token.NewFileSet()
	err := filepath.WalkDir(top, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			name := d.Name()
			if path != top && (strings.HasPrefix(name, ".") || name == "testdata" || name == "vendor") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") {
			return nil
		}
		rel, _ := filepath.Rel(top, filepath.Dir(path))
		rel = filepath.ToSlash(rel)
		f, err := parser.ParseFile(fset, path, nil, parser.ImportsOnly|parser.ParseComments)
		if err != nil {
			return err
		}
		p := pkgs[rel]
		if p == nil {
			p = &pkgFiles{fset: fset, paths: map[*ast.File]string{}}
			pkgs[rel] = p
		}
		p.paths[f] = path
		if strings.HasSuffix(path, "_test.go") {
			p.tests = append(p.tests, f)
		} else {
			p.files = append(p.files, f)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return pkgs
}

func moduleImports(f *ast.File) []string {
	var out []string
	for _, imp := range f.Imports {
		p, _ := strconv.Unquote(imp.Path.Value)
		if p == module {
			out = append(out, "")
		} else if strings.HasPrefix(p, module+"/") {
			out = append(out, strings.TrimPrefix(p, module+"/"))
		}
	}
	return out
}

func TestImportDirection(t *testing.T) {
	pkgs := parseModule(t)
	var names []string
	for name := range pkgs {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		p := pkgs[name]
		if len(p.files) == 0 {
			continue
		}
		rules, ok := allowed[name]
		if !ok {
			t.Errorf("package %s has no place in the import rules (internal/lint/lint_test.go)", name)
			continue
		}
		for _, f := range p.files {
			for _, v := range importViolations(name, rules, moduleImports(f)) {
				t.Errorf("%s: %s", p.paths[f], v)
			}
		}
	}
}

// importViolations says what is wrong with package name, whose rules are
// rules, importing the module packages imports.
func importViolations(name string, rules, imports []string) []string {
	var out []string
	for _, imp := range imports {
		if testOnly[imp] {
			out = append(out, name+" imports test-only "+imp)
		}
		if len(rules) == 1 && rules[0] == "*" {
			continue
		}
		ok := false
		for _, a := range rules {
			if a == imp {
				ok = true
			}
		}
		if !ok {
			out = append(out, name+" may not import "+imp+" (allowed: "+strings.Join(rules, ", ")+")")
		}
	}
	return out
}

// TestImportRulesCatch shows the rules refuse imports against the
// direction: a lower layer reaching up, a pure package doing I/O through
// another, library code importing test infrastructure.
func TestImportRulesCatch(t *testing.T) {
	for _, c := range []struct {
		pkg, imp string
		bad      bool
	}{
		{"internal/raftstore", "internal/node", true},
		{"internal/storage", "internal/raftlog", true},
		{"internal/keys", "internal/storage", true},
		{"internal/master/schedule", "internal/storage", true},
		{"client", "internal/raftstore", true},
		{"internal/node", "internal/testcluster", true},
		{"cmd/shoal", "internal/chaos", true},
		{"internal/raftlog", "internal/storage", false},
		{"internal/node", "internal/raftstore", false},
		{"cmd/shoal", "internal/master", false},
	} {
		got := importViolations(c.pkg, allowed[c.pkg], []string{c.imp})
		if bad := len(got) > 0; bad != c.bad {
			t.Errorf("%s importing %s: violations %q, want bad=%v", c.pkg, c.imp, got, c.bad)
		}
	}
}

// TestBannedCalls keeps global loggers out of library code, sleeps out of
// tests, and math/rand v1 out of everything.
func TestBannedCalls(t *testing.T) {
	pkgs := parseModule(t)
	full := token.NewFileSet()
	for name, p := range pkgs {
		for _, files := range [][]*ast.File{p.files, p.tests} {
			for _, f0 := range files {
				path := p.paths[f0]
				if name == "internal/lint" {
					continue
				}
				f, err := parser.ParseFile(full, path, nil, 0)
				if err != nil {
					t.Fatal(err)
				}
				isTest := strings.HasSuffix(path, "_test.go")
				for _, imp := range f.Imports {
					if v, _ := strconv.Unquote(imp.Path.Value); v == "math/rand" {
						t.Errorf("%s: use math/rand/v2, not math/rand", path)
					}
				}
				ast.Inspect(f, func(n ast.Node) bool {
					sel, ok := n.(*ast.SelectorExpr)
					if !ok {
						return true
					}
					x, ok := sel.X.(*ast.Ident)
					if !ok {
						return true
					}
					call := x.Name + "." + sel.Sel.Name
					pos := full.Position(sel.Pos())
					switch {
					case isTest && call == "time.Sleep":
						t.Errorf("%s: tests wait on conditions, never time.Sleep", pos)
					case name != "cmd/shoal" && !isTest && isGlobalLog(call):
						t.Errorf("%s: %s uses a global logger; inject a *slog.Logger", pos, call)
					}
					return true
				})
			}
		}
	}
}

func isGlobalLog(call string) bool {
	switch call {
	case "slog.Default", "slog.SetDefault", "slog.Info", "slog.Warn", "slog.Error", "slog.Debug", "slog.Log",
		"log.Print", "log.Printf", "log.Println", "log.Fatal", "log.Fatalf", "log.Panic", "log.Panicf":
		return true
	}
	return false
}
