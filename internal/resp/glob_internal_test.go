package resp

import (
	"math/rand/v2"
	"strings"
	"testing"
)

func TestGlobMatch(t *testing.T) {
	for _, tt := range []struct {
		pattern, s string
		want       bool
	}{
		{"*", "", true},
		{"*", "anything", true},
		{"", "", true},
		{"", "a", false},
		{"h?llo", "hello", true},
		{"h?llo", "hllo", false},
		{"h*llo", "hllo", true},
		{"h*llo", "heeeello", true},
		{"h[ae]llo", "hallo", true},
		{"h[ae]llo", "hillo", false},
		{"h[^e]llo", "hallo", true},
		{"h[^e]llo", "hello", false},
		{"h[a-b]llo", "hbllo", true},
		{"h[b-a]llo", "hbllo", true}, // a reversed range, as Redis reads it
		{"h[a-b]llo", "hcllo", false},
		{`h\*llo`, "h*llo", true},
		{`h\*llo`, "hello", false},
		{`[\]]`, "]", true},
		{"user:*:name", "user:42:name", true},
		{"user:*:name", "user:42:nam", false},
		{"*a*b", "aaab", true},
		{"*a*b", "aaa", false},
		{"a*", "b", false},
		{"[abc", "b", true}, // no closing ]: the class runs to the end
	} {
		if got := globMatch(tt.pattern, tt.s); got != tt.want {
			t.Errorf("globMatch(%q, %q) = %v, want %v", tt.pattern, tt.s, got, tt.want)
		}
	}
}

// TestGlobMatchLikeBacktracking compares globMatch with a matcher that tries
// every split at every * (exponential, so only on short inputs) over random
// patterns and keys.
func TestGlobMatchLikeBacktracking(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	elems := []string{"a", "b", "*", "*", "?", "[ab]", "[^a]", "[a-b]", `\*`, `\a`}
	for range 20000 {
		var p strings.Builder
		for range r.IntN(7) {
			p.WriteString(elems[r.IntN(len(elems))])
		}
		var s strings.Builder
		for range r.IntN(8) {
			s.WriteByte("ab*"[r.IntN(3)])
		}
		if got, want := globMatch(p.String(), s.String()), globExhaustive(p.String(), s.String()); got != want {
			t.Fatalf("globMatch(%q, %q) = %v, want %v", p.String(), s.String(), got, want)
		}
	}
}

// TestGlobMatchPathological: a pattern that made a matcher trying every
// split run for hours (Redis's CVE-2022-36021) returns at once.
func TestGlobMatchPathological(t *testing.T) {
	s := strings.Repeat("a", 4096)
	if globMatch(strings.Repeat("*a", 40)+"*b", s) {
		t.Fatal("matched a pattern ending in b against a run of a's")
	}
	if !globMatch(strings.Repeat("*a", 40)+"*", s) {
		t.Fatal("no match of *a*a...* against a run of a's")
	}
}

// globExhaustive is the reference: every * tries every split.
func globExhaustive(pattern, s string) bool {
	if pattern == "" {
		return s == ""
	}
	if pattern[0] == '*' {
		for i := 0; i <= len(s); i++ {
			if globExhaustive(pattern[1:], s[i:]) {
				return true
			}
		}
		return false
	}
	if s == "" {
		return false
	}
	next, ok := globByte(pattern, 0, s[0])
	return ok && globExhaustive(pattern[next:], s[1:])
}
