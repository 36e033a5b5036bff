package resp

import (
	"strings"
	"testing"
)

// incrByFloat is INCRBYFLOAT's arithmetic without the store: the reply,
// or the error text.
func incrByFloat(cur string, found bool, incr string) string {
	in, ok := parseLongDouble([]byte(incr))
	if !ok {
		return "ERR value is not a valid float"
	}
	c := longDouble{f: newLongDouble()}
	if found {
		if c, ok = parseLongDouble([]byte(cur)); !ok {
			return "ERR value is not a valid float"
		}
	}
	sum, ok := addLongDouble(c, in)
	if !ok {
		return "ERR increment would produce NaN or Infinity"
	}
	return sum
}

// TestIncrByFloatLikeRedis checks INCRBYFLOAT against replies of Redis
// 7.0.15 on x86-64 (redis-server from Debian 12, same commands).
func TestIncrByFloatLikeRedis(t *testing.T) {
	const (
		notFloat = "ERR value is not a valid float"
		nanOrInf = "ERR increment would produce NaN or Infinity"
	)
	oneDot := "1." + strings.Repeat("0", 5117) // 5119 bytes: the longest number
	for _, tt := range []struct {
		cur   string
		found bool
		incr  string
		want  string
	}{
		// Redis's documentation example.
		{"10.50", true, "0.1", "10.6"},
		{"10.6", true, "-5", "5.6"},
		{"5.0e3", true, "2.0e2", "5200"},
		// Long double, not double: no 0.30000000000000004.
		{"0.1", true, "0.2", "0.3"},
		// 64 significant bits: a 23-digit integer is rounded to them.
		{"12345678901234567890123", true, "0", "12345678901234567889920"},
		// 17 decimals, trailing zeros and point removed, ties to even.
		{"", false, "1.234567890123456789012345678901234", "1.23456789012345679"},
		{"", false, "3.0000000000000000000001", "3"},
		{"", false, "0.000003814697265625", "0.00000381469726562"},
		{"", false, "0.000000000000000001", "0"},
		{"", false, "1e-17", "0.00000000000000001"},
		{"", false, "5e-18", "0"},
		{"", false, "2.000", "2"},
		{"", false, "1.", "1"},
		{"", false, ".5", "0.5"},
		// "-0" is written 0.
		{"", false, "-0.0", "0"},
		{"", false, "-0.000000000000000001", "0"},
		// Fixed point even for huge values.
		{"", false, "1e308", "99999999999999999996685879655845645660560099847415567207797047994921734868838061872100126921888539320446747225054013223152134749593960583597420814430196418767959100019603190778663109604507106667939153395788938914560543563061268364901618630217086589253444881623791300855757318142424510452728255046343928578048"},
		// strtold's other forms.
		{"", false, "0x10", "16"},
		{"", false, "0x1p3", "8"},
		{"", false, "0x1.8p1", "3"},
		{"", false, "-0x1P-2", "-0.25"},
		{"", false, oneDot, "1"},
		// A subnormal long double is a number (its sum prints as 0).
		{"", false, "1e-4950", "0"},
		// Refused operands.
		{"", false, "nan", notFloat},
		{"", false, " 1", notFloat},
		{"", false, "1 ", notFloat},
		{"", false, "", notFloat},
		{"", false, "1e", notFloat},
		{"", false, "1_0", notFloat},
		{"", false, "0x", notFloat},
		{"", false, "abc", notFloat},
		{"", false, "1e5000", notFloat},  // overflows
		{"", false, "1e-5000", notFloat}, // underflows to zero
		{"", false, oneDot + "0", notFloat},
		{" 1", true, "1", notFloat},
		{"1 ", true, "1", notFloat},
		{"abc", true, "1", notFloat},
		{"", true, "1", notFloat},
		// Infinite operands or sums.
		{"", false, "+inf", nanOrInf},
		{"", false, "-Infinity", nanOrInf},
		{"inf", true, "1", nanOrInf},
		{"1e4932", true, "1e4932", nanOrInf},
	} {
		if got := incrByFloat(tt.cur, tt.found, tt.incr); got != tt.want {
			t.Errorf("%.30q (found %v) + %.30q = %.60q, want %.60q", tt.cur, tt.found, tt.incr, got, tt.want)
		}
	}

	// 1e4000 is not a double; as a long double it is 4000 digits.
	got := incrByFloat("", false, "1e4000")
	if len(got) != 4000 || !strings.HasPrefix(got, "9999999999999999999965463873099623784932") || !strings.HasSuffix(got, "206648276349901340672") {
		t.Errorf("1e4000: %d digits %.40s...%s", len(got), got, got[max(0, len(got)-21):])
	}
}
