package admin

import (
	"embed"
	"io/fs"
	"net/http"
	"slices"
	"strings"
)

// The status page's files: plain HTML, CSS and JavaScript, embedded in the
// binary (no build step). They hold no data: the page asks the /v1
// endpoints for everything, with the token the operator types in.
//
//go:embed ui
var uiFiles embed.FS

// uiCSP keeps the page to its own files: scripts, styles and fetches from
// the admin listener only, no inline script, never framed.
const uiCSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; " +
	"base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// mountUI serves the status page under /ui/. Its files are open (they carry
// no data); what the page shows comes from /v1 under the usual token check.
func (s *Server) mountUI() {
	sub, err := fs.Sub(uiFiles, "ui")
	if err != nil {
		panic(err) // the embedded tree always has ui/
	}
	files := http.StripPrefix("/ui/", http.FileServerFS(sub))
	s.mux.Handle("GET /ui/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", uiCSP)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cache-Control", "no-cache")
		files.ServeHTTP(w, r)
	}))
	s.mux.Handle("GET /ui", http.RedirectHandler("/ui/", http.StatusMovedPermanently))
}

// FunctionsView is GET /v1/functions: every configured function, sorted by
// name, as GET /v1/functions/{fn} shows it.
type FunctionsView struct {
	Functions []FunctionView `json:"functions"`
}

// DeadLetterCount is the number of records or events of one source
// dead-lettered with one condition since sluice started (the value of
// sluice_dead_letters_total).
type DeadLetterCount struct {
	Source    string `json:"source"`
	Condition string `json:"condition"`
	Count     int64  `json:"count"`
}

// DeadLetterCountsView is GET /v1/dead-letter-counts, sorted by source and
// condition.
type DeadLetterCountsView struct {
	DeadLetters []DeadLetterCount `json:"deadLetters"`
}

func (s *Server) getDeadLetterCounts(w http.ResponseWriter, _ *http.Request) {
	v := DeadLetterCountsView{DeadLetters: []DeadLetterCount{}}
	if s.o.DeadLetterCounts != nil {
		v.DeadLetters = append(v.DeadLetters, s.o.DeadLetterCounts()...)
	}
	slices.SortFunc(v.DeadLetters, func(a, b DeadLetterCount) int {
		if c := strings.Compare(a.Source, b.Source); c != 0 {
			return c
		}
		return strings.Compare(a.Condition, b.Condition)
	})
	writeJSON(w, http.StatusOK, v)
}
