package admin

import "net/http"

// getCluster is GET /v1/cluster: the members of the cluster, their shares,
// demand and lease age (Options.Cluster); 404 when sluice runs on its own.
func (s *Server) getCluster(w http.ResponseWriter, _ *http.Request) {
	if s.o.Cluster == nil {
		writeError(w, http.StatusNotFound, "admin: not in cluster mode (no cluster section in the configuration)")
		return
	}
	writeJSON(w, http.StatusOK, s.o.Cluster())
}
