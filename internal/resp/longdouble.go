package resp

import (
	"math/big"
	"strings"
)

// INCRBYFLOAT arithmetic. Redis parses, adds and formats INCRBYFLOAT's
// numbers as C long doubles, which on x86-64, where Redis is nearly always
// built, are x87 extended precision: a 64-bit significand and a 15-bit
// exponent. Shoal does the same arithmetic in software with math/big, so it
// answers with the same digits on every platform: every value is rounded to
// 64 significant bits (to nearest, ties to even), the largest finite value
// is just below 2^16384, and the smallest nonzero one is 2^-16445.
//
// Parsing follows Redis's string2ld (strtold, then refusals): an optional
// sign, then a decimal number with an optional exponent, a hexadecimal one
// ("0x1.8p3"), or "inf"/"infinity" in any case, and nothing else: no white
// space, no NaN, nothing longer than 5 KiB, no number that overflows or
// underflows to zero. Formatting follows ld2string's human mode: fixed
// point with 17 decimals, then trailing zeros and a trailing point removed,
// and "-0" written "0".

const (
	ldPrec = 64
	// ldMaxExp is the largest big.Float exponent (MantExp) of a finite long
	// double: they are below 2^16384.
	ldMaxExp = 16384
	// ldUnderflowExp: a value at most 2^ldUnderflowExp rounds to zero (half
	// the smallest subnormal, 2^-16445).
	ldUnderflowExp = -16446
	// ldMaxChars is Redis's MAX_LONG_DOUBLE_CHARS: longer strings are not
	// numbers.
	ldMaxChars = 5 << 10
	// ldFracDigits is the number of decimals ld2string prints.
	ldFracDigits = 17
)

// longDouble is a parsed INCRBYFLOAT operand: infinite, or a finite value
// already rounded to a long double.
type longDouble struct {
	inf bool
	f   *big.Float
}

func newLongDouble() *big.Float {
	return new(big.Float).SetPrec(ldPrec).SetMode(big.ToNearestEven)
}

// parseLongDouble parses s as Redis's string2ld does.
func parseLongDouble(s []byte) (longDouble, bool) {
	if len(s) == 0 || len(s) >= ldMaxChars {
		return longDouble{}, false
	}
	neg := s[0] == '-'
	if s[0] == '-' || s[0] == '+' {
		s = s[1:]
	}
	if w := strings.ToLower(string(s)); w == "inf" || w == "infinity" {
		return longDouble{inf: true}, true
	}
	var f *big.Float
	var ok bool
	if len(s) > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X') {
		f, ok = parseHexLD(s[2:])
	} else {
		f, ok = parseDecimalLD(s)
	}
	if !ok {
		return longDouble{}, false
	}
	if neg {
		f.Neg(f)
	}
	return longDouble{f: f}, true
}

// splitMantissa splits a mantissa such as "123.45e6" into its digits, the
// number of them after the point, and what follows (the exponent);
// isDigit says which bytes are digits. It fails without a digit.
func splitMantissa(s []byte, isDigit func(byte) bool) (ds []byte, frac int, rest []byte, ok bool) {
	point := false
	i := 0
	for ; i < len(s); i++ {
		switch c := s[i]; {
		case isDigit(c):
			ds = append(ds, c)
			if point {
				frac++
			}
		case c == '.' && !point:
			point = true
		default:
			return ds, frac, s[i:], len(ds) > 0
		}
	}
	return ds, frac, nil, len(ds) > 0
}

// parseExponent parses what follows 'e' or 'p': an optional sign and
// decimal digits, all of s. Huge exponents saturate: no number of at most
// ldMaxChars digits can bring them back into range.
func parseExponent(s []byte) (int64, bool) {
	neg := len(s) > 0 && s[0] == '-'
	if len(s) > 0 && (s[0] == '-' || s[0] == '+') {
		s = s[1:]
	}
	if len(s) == 0 {
		return 0, false
	}
	var n int64
	for _, c := range s {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = min(n*10+int64(c-'0'), 1<<40)
	}
	if neg {
		n = -n
	}
	return n, true
}

func isDecDigit(c byte) bool { return '0' <= c && c <= '9' }

// parseDecimalLD parses an unsigned decimal number and rounds it to a long
// double, exactly: the digits and the power of ten make a rational, which
// big.Float divides with one rounding.
func parseDecimalLD(s []byte) (*big.Float, bool) {
	ds, frac, rest, ok := splitMantissa(s, isDecDigit)
	if !ok {
		return nil, false
	}
	exp := -int64(frac)
	if len(rest) > 0 {
		if rest[0] != 'e' && rest[0] != 'E' {
			return nil, false
		}
		e, ok := parseExponent(rest[1:])
		if !ok {
			return nil, false
		}
		exp += e
	}
	ds = []byte(strings.TrimLeft(string(ds), "0"))
	f := newLongDouble()
	if len(ds) == 0 {
		return f, true // zero, whatever the exponent
	}
	// The value is below 10^(len(ds)+exp) and at least 10^(len(ds)-1+exp).
	// 2^16384 < 10^4933 and 10^-4951 < 2^-16446: outside, it overflows or
	// rounds to zero, which Redis refuses.
	if top := int64(len(ds)) + exp; top-1 >= 4933 || top <= -4951 {
		return nil, false
	}
	mant, _ := new(big.Int).SetString(string(ds), 10)
	r := new(big.Rat).SetInt(mant)
	if exp != 0 {
		p := new(big.Int).Exp(big.NewInt(10), big.NewInt(abs64(exp)), nil)
		if exp > 0 {
			r.Mul(r, new(big.Rat).SetInt(p))
		} else {
			r.Quo(r, new(big.Rat).SetInt(p))
		}
	}
	f.SetRat(r)
	return f, inLongDoubleRange(f, r)
}

func isHexDigit(c byte) bool { return isHex(c) }

// parseHexLD parses an unsigned hexadecimal number after its "0x": hex
// digits with an optional point and an optional binary exponent.
func parseHexLD(s []byte) (*big.Float, bool) {
	ds, frac, rest, ok := splitMantissa(s, isHexDigit)
	if !ok {
		return nil, false
	}
	exp := -4 * int64(frac)
	if len(rest) > 0 {
		if rest[0] != 'p' && rest[0] != 'P' {
			return nil, false
		}
		e, ok := parseExponent(rest[1:])
		if !ok {
			return nil, false
		}
		exp += e
	}
	mant, _ := new(big.Int).SetString(string(ds), 16)
	f := newLongDouble()
	if mant.Sign() == 0 {
		return f, true
	}
	// The value is in [2^(bits-1+exp), 2^(bits+exp)).
	if top := int64(mant.BitLen()) + exp; top-1 >= ldMaxExp || top <= ldUnderflowExp {
		return nil, false
	}
	r := new(big.Rat).SetInt(mant)
	if exp > 0 {
		r.Mul(r, new(big.Rat).SetInt(new(big.Int).Lsh(big.NewInt(1), uint(exp))))
	} else if exp < 0 {
		r.Quo(r, new(big.Rat).SetInt(new(big.Int).Lsh(big.NewInt(1), uint(-exp))))
	}
	f.SetRat(r)
	return f, inLongDoubleRange(f, r)
}

// inLongDoubleRange reports whether the exact value r, rounded to f, is a
// finite nonzero long double: it did not round up past the largest one,
// and it is above half the smallest subnormal.
func inLongDoubleRange(f *big.Float, r *big.Rat) bool {
	e := f.MantExp(nil)
	if e > ldMaxExp {
		return false
	}
	if e <= ldUnderflowExp+2 {
		half := new(big.Rat).SetFrac(big.NewInt(1), new(big.Int).Lsh(big.NewInt(1), -ldUnderflowExp))
		return new(big.Rat).Abs(r).Cmp(half) > 0
	}
	return true
}

func abs64(n int64) int64 {
	if n < 0 {
		return -n
	}
	return n
}

// addLongDouble returns cur+incr formatted as Redis replies and stores it,
// or false when the sum is infinite (or NaN).
func addLongDouble(cur, incr longDouble) (string, bool) {
	if cur.inf || incr.inf {
		return "", false
	}
	sum := newLongDouble().Add(cur.f, incr.f)
	if sum.Sign() != 0 && sum.MantExp(nil) > ldMaxExp {
		return "", false
	}
	return formatLongDouble(sum), true
}

// formatLongDouble writes f as ld2string's human mode does.
func formatLongDouble(f *big.Float) string {
	s := f.Text('f', ldFracDigits)
	if strings.IndexByte(s, '.') >= 0 {
		s = strings.TrimSuffix(strings.TrimRight(s, "0"), ".")
	}
	if s == "-0" {
		s = "0"
	}
	return s
}
