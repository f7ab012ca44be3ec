package admin

import (
	"net/http"
	"strings"
	"testing"
)

func TestClusterEndpoint(t *testing.T) {
	alone := newTestAPI(t, Options{})
	code, body := alone.do(http.MethodGet, "/v1/cluster", "", "")
	if code != http.StatusNotFound || !strings.Contains(message(t, body), "not in cluster mode") {
		t.Errorf("GET /v1/cluster on its own: %d %s, want 404 saying it is not in cluster mode", code, body)
	}
	api := newTestAPI(t, Options{Cluster: func() any { return map[string]any{"name": "prod", "members": []string{"a", "b"}} }})
	var v struct {
		Name    string   `json:"name"`
		Members []string `json:"members"`
	}
	api.must(http.MethodGet, "/v1/cluster", "", http.StatusOK, &v)
	if v.Name != "prod" || len(v.Members) != 2 {
		t.Errorf("GET /v1/cluster = %+v", v)
	}
}
