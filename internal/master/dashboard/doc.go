// Package dashboard holds the master's web dashboard: static files
// embedded in the binary, which read the master's JSON API (/status) once
// a second and draw the ring of shards coloured by leader node, the nodes
// with state, weight, zone and load, the operators in flight with progress
// bars, and the cluster's throughput over time. It has no state of its own.
package dashboard

import (
	"embed"
	"io/fs"
	"net/http"
)

//go:embed static
var static embed.FS

// Handler serves the dashboard's files (index.html at its root).
func Handler() http.Handler {
	sub, err := fs.Sub(static, "static")
	if err != nil {
		// INVARIANT: the directory is embedded above.
		panic(err)
	}
	return http.FileServerFS(sub)
}
