package admin

import (
	_ "embed" // the OpenAPI document
	"net/http"
)

// OpenAPI is the OpenAPI 3 document of the admin API, served at GET
// /v1/openapi.json with the same auth as the other /v1 reads. A test checks
// it against the handlers: every operation it lists answers as it says, and
// every route the server has is in it.
//
//go:embed openapi.json
var OpenAPI []byte

func (s *Server) getOpenAPI(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = w.Write(OpenAPI)
}

// listFunctions is GET /v1/functions: every configured function's view,
// sorted by name (Lambda's ListFunctions).
func (s *Server) listFunctions(w http.ResponseWriter, _ *http.Request) {
	v := FunctionsView{Functions: []FunctionView{}}
	for _, fn := range s.o.Book.Functions() {
		if fv, ok := s.functionView(fn); ok {
			v.Functions = append(v.Functions, fv)
		}
	}
	writeJSON(w, http.StatusOK, v)
}
