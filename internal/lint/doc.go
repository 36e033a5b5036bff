// Package lint holds tests that keep the code base in shape: the import
// direction of DESIGN.md §10 and a few banned habits (global loggers, sleeps
// in tests, math/rand v1). It has no non-test code.
package lint
