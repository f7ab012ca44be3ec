package admin

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/sluicehq/sluice/dispatch"
	"github.com/sluicehq/sluice/shard"
)

// Role is what a bearer token may do; each role may do everything the
// previous one may. Its value is the name the configuration uses
// (admin.tokens[].role), so package config decodes it as it is.
type Role string

// The roles of SPEC §6.
const (
	RoleNone   Role = ""       // no valid token
	RoleRead   Role = "read"   // GET
	RoleInvoke Role = "invoke" // also the HTTP ingress
	RoleAdmin  Role = "admin"  // everything, including changing limits
)

// rank orders the roles: 0 for none or an unknown name.
func (r Role) rank() int {
	switch r {
	case RoleRead:
		return 1
	case RoleInvoke:
		return 2
	case RoleAdmin:
		return 3
	}
	return 0
}

// Valid reports whether r is one of read, invoke, admin.
func (r Role) Valid() bool { return r.rank() > 0 }

// Allows reports whether a token of role r may do what needs role need.
func (r Role) Allows(need Role) bool { return r.Valid() && r.rank() >= need.rank() }

func (r Role) String() string {
	if r == RoleNone {
		return "none"
	}
	return string(r)
}

// ParseRole returns the role named s (read, invoke, admin).
func ParseRole(s string) (Role, error) {
	if r := Role(s); r.Valid() {
		return r, nil
	}
	return RoleNone, fmt.Errorf("admin: role %q is not one of read, invoke, admin", s)
}

// Token is one bearer token and its role.
type Token struct {
	Secret string
	Role   Role
}

// Options is what the admin API serves.
type Options struct {
	// Book holds the limits; required.
	Book *Book
	// Shards returns the status of every shard, for GET /v1/shards.
	Shards func() []shard.Status
	// Ready reports nil when sluice is ready to work (its brokers and
	// dead-letter stores reachable), for /readyz; nil means always ready.
	Ready func() error
	// Metrics serves /metrics; nil serves 404.
	Metrics http.Handler
	// Ingress serves POST /v1/functions/{fn}/invocations and POST
	// /v1/scope/{scope}/functions/{fn}/invocations (SPEC §2.3), after the
	// token check (role invoke); r.PathValue("fn") and r.PathValue("scope")
	// hold the path's parts. Nil answers 404.
	Ingress http.Handler
	// Tokens are the accepted bearer tokens. Without any, /v1 is open: the
	// caller must only serve it on a loopback address (config checks that).
	Tokens []Token
	// Lags returns the lag of every shard (records not yet checkpointed),
	// for GET /v1/shards; nil shows 0.
	Lags func() map[shard.ID]int64
	// DeadLetterCounts returns the dead letters written since start, by
	// source and condition, for GET /v1/dead-letter-counts; nil shows none.
	DeadLetterCounts func() []DeadLetterCount
	Logger           *slog.Logger
	// Now is the clock of the views (tests); default time.Now.
	Now func() time.Time
	// Cluster returns the cluster's members and shares for GET /v1/cluster
	// (cluster mode); nil answers 404.
	Cluster func() any
}

// maxBody bounds a request body: the API's bodies are a few fields.
const maxBody = 64 << 10

// Server is the admin API's http.Handler.
type Server struct {
	o      Options
	mux    *http.ServeMux
	tokens atomic.Pointer[[]tokenHash] // replaced whole by SetTokens (tokens.go)
}

type tokenHash struct {
	sum  [sha256.Size]byte
	role Role
}

// New returns the admin API of o.
func New(o Options) (*Server, error) {
	if o.Book == nil {
		return nil, errors.New("admin: Options.Book is required")
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Shards == nil {
		o.Shards = func() []shard.Status { return nil }
	}
	s := &Server{o: o, mux: http.NewServeMux()}
	if err := s.SetTokens(o.Tokens); err != nil {
		return nil, err
	}

	s.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	s.mux.HandleFunc("GET /readyz", s.readyz)
	if o.Metrics != nil {
		s.mux.Handle("GET /metrics", o.Metrics)
	}
	for _, rt := range s.routes() {
		s.mux.Handle(rt.pattern, s.guard(rt))
	}
	s.mountUI()
	// Anything else under /v1: authenticated first (an unknown path must
	// not tell a stranger what exists), then 404.
	s.mux.Handle("/v1/", s.guard(route{}))
	return s, nil
}

// route is one path of the API with a handler per method.
type route struct {
	pattern string
	methods map[string]endpoint
}

type endpoint struct {
	role Role
	h    func(w http.ResponseWriter, r *http.Request)
}

// Route lists the method and path pattern of every /v1 endpoint with the
// role it needs, for tests and docs.
type Route struct {
	Method, Pattern string
	Role            Role
}

// Routes returns every /v1 endpoint.
func (s *Server) Routes() []Route {
	var out []Route
	for _, rt := range s.routes() {
		for _, m := range slices.Sorted(maps.Keys(rt.methods)) {
			out = append(out, Route{Method: m, Pattern: rt.pattern, Role: rt.methods[m].role})
		}
	}
	return out
}

func (s *Server) routes() []route {
	get := func(h func(http.ResponseWriter, *http.Request)) map[string]endpoint {
		return map[string]endpoint{http.MethodGet: {RoleRead, h}}
	}
	return []route{
		{"/v1/openapi.json", get(s.getOpenAPI)},
		{"/v1/account", get(s.getAccount)},
		{"/v1/cluster", get(s.getCluster)},
		{"/v1/functions", get(s.listFunctions)},
		{"/v1/functions/{fn}", get(s.getFunction)},
		{"/v1/functions/{fn}/concurrency", map[string]endpoint{
			http.MethodPut:    {RoleAdmin, s.putConcurrency},
			http.MethodDelete: {RoleAdmin, s.deleteConcurrency},
		}},
		{"/v1/rules", get(s.getRules)},
		{"/v1/rules/{pattern}", map[string]endpoint{
			http.MethodGet:    {RoleRead, s.getRule},
			http.MethodPut:    {RoleAdmin, s.putRule},
			http.MethodDelete: {RoleAdmin, s.deleteRule},
		}},
		{"/v1/rules/{pattern}/enable", map[string]endpoint{http.MethodPost: {RoleAdmin, s.enableRule}}},
		{"/v1/rules/{pattern}/disable", map[string]endpoint{http.MethodPost: {RoleAdmin, s.disableRule}}},
		{"/v1/limits", get(s.getLimits)},
		{"/v1/shards", get(s.getShards)},
		{"/v1/queues", get(s.getQueues)},
		{"/v1/dead-letter-counts", get(s.getDeadLetterCounts)},
		{"/v1/functions/{fn}/invocations", map[string]endpoint{http.MethodPost: {RoleInvoke, s.ingress}}},
		{"/v1/scope/{scope}/functions/{fn}/invocations", map[string]endpoint{http.MethodPost: {RoleInvoke, s.ingress}}},
	}
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mux.ServeHTTP(w, r)
}

// guard checks the token (401), the path (404), the method (405) and the
// role (403), in that order, then calls the endpoint. A panic becomes a 500
// with a log line rather than a dropped connection.
func (s *Server) guard(rt route) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler { //nolint:errorlint // a sentinel value, compared as net/http does
					panic(v)
				}
				s.o.Logger.Error("admin: handler panicked", "method", r.Method, "path", r.URL.Path, "panic", v)
				writeError(w, http.StatusInternalServerError, "admin: internal error")
			}
		}()
		role, ok := s.authenticate(r)
		if !ok {
			w.Header().Set("WWW-Authenticate", `Bearer realm="sluice"`)
			writeError(w, http.StatusUnauthorized, "admin: a valid bearer token is required (Authorization: Bearer <token>)")
			return
		}
		if rt.methods == nil {
			writeError(w, http.StatusNotFound, fmt.Sprintf("admin: no endpoint %s", r.URL.Path))
			return
		}
		method := r.Method
		if method == http.MethodHead {
			method = http.MethodGet
		}
		ep, found := rt.methods[method]
		if !found {
			allow := slices.Sorted(maps.Keys(rt.methods))
			if slices.Contains(allow, http.MethodGet) {
				allow = append(allow, http.MethodHead)
			}
			w.Header().Set("Allow", strings.Join(allow, ", "))
			writeError(w, http.StatusMethodNotAllowed, fmt.Sprintf("admin: %s is not allowed on %s (allowed: %s)", r.Method, r.URL.Path, strings.Join(allow, ", ")))
			return
		}
		if !role.Allows(ep.role) {
			writeError(w, http.StatusForbidden, fmt.Sprintf("admin: %s %s needs a token of role %s, this one is %s", r.Method, r.URL.Path, ep.role, role))
			return
		}
		ep.h(w, r)
	})
}

// authenticate returns the role of the request's bearer token; with no
// tokens configured every request is admin.
func (s *Server) authenticate(r *http.Request) (Role, bool) {
	tokens := *s.tokens.Load()
	if len(tokens) == 0 {
		return RoleAdmin, true
	}
	scheme, tok, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	tok = strings.TrimSpace(tok)
	if !ok || !strings.EqualFold(scheme, "Bearer") || tok == "" {
		return RoleNone, false
	}
	sum := sha256.Sum256([]byte(tok))
	role := RoleNone
	// Compare with every token, without stopping at a match, so the time
	// taken says nothing about which one matched.
	for _, t := range tokens {
		if subtle.ConstantTimeCompare(sum[:], t.sum[:]) == 1 {
			role = t.role
		}
	}
	return role, role != RoleNone
}

func (s *Server) readyz(w http.ResponseWriter, _ *http.Request) {
	if s.o.Ready != nil {
		if err := s.o.Ready(); err != nil {
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = fmt.Fprintf(w, "not ready: %v\n", err)
			return
		}
	}
	_, _ = w.Write([]byte("ready\n"))
}

func (s *Server) ingress(w http.ResponseWriter, r *http.Request) {
	if s.o.Ingress == nil {
		writeError(w, http.StatusNotFound, "admin: the HTTP ingress is not enabled in this sluice")
		return
	}
	s.o.Ingress.ServeHTTP(w, r)
}

// ---------------------------------------------------------------------------
// Views

// AccountView is GET /v1/account, after Lambda's GetAccountSettings.
type AccountView struct {
	AccountLimit struct {
		ConcurrentExecutions           int `json:"concurrentExecutions"`
		UnreservedConcurrentExecutions int `json:"unreservedConcurrentExecutions"`
		MinUnreserved                  int `json:"minUnreservedConcurrentExecutions"`
	} `json:"accountLimit"`
	AccountUsage struct {
		ConcurrentExecutions           int `json:"concurrentExecutions"`
		UnreservedConcurrentExecutions int `json:"unreservedConcurrentExecutions"`
		FunctionCount                  int `json:"functionCount"`
		Waiting                        int `json:"waitingFunctions"`
		// ByProcess is, in cluster mode, the slots held by each process.
		ByProcess map[string]int `json:"byProcess,omitempty"`
	} `json:"accountUsage"`
}

func (s *Server) getAccount(w http.ResponseWriter, _ *http.Request) {
	lim := s.o.Book.Limiter()
	u := lim.Usage()
	var v AccountView
	v.AccountLimit.ConcurrentExecutions = u.AccountLimit
	v.AccountLimit.UnreservedConcurrentExecutions = u.UnreservedLimit
	v.AccountLimit.MinUnreserved = lim.Account().MinUnreserved
	v.AccountUsage.ConcurrentExecutions = u.InFlight
	v.AccountUsage.UnreservedConcurrentExecutions = u.UnreservedInUse
	v.AccountUsage.FunctionCount = len(s.o.Book.Functions())
	v.AccountUsage.Waiting = u.WaitingFunctions
	v.AccountUsage.ByProcess = u.ByProcess
	writeJSON(w, http.StatusOK, v)
}

// FunctionView is GET /v1/functions/{fn}, after Lambda's GetFunction.
type FunctionView struct {
	FunctionName  string `json:"functionName"`
	Configuration struct {
		URL        string `json:"url,omitempty"`
		Timeout    string `json:"timeout"`
		AsyncQueue string `json:"asyncQueue,omitempty"`
	} `json:"configuration"`
	Concurrency struct {
		// ReservedConcurrentExecutions is nil without a reservation.
		ReservedConcurrentExecutions *int   `json:"reservedConcurrentExecutions"`
		Origin                       string `json:"origin"`
	} `json:"concurrency"`
	Usage struct {
		ConcurrentExecutions int `json:"concurrentExecutions"`
		Waiting              int `json:"waiting"`
	} `json:"usage"`
}

func (s *Server) getFunction(w http.ResponseWriter, r *http.Request) {
	fn := r.PathValue("fn")
	v, ok := s.functionView(fn)
	if !ok {
		writeError(w, http.StatusNotFound, fmt.Sprintf("admin: function %q is not configured", fn))
		return
	}
	writeJSON(w, http.StatusOK, v)
}

// functionView returns the view of function fn, false if it is not
// configured.
func (s *Server) functionView(fn string) (FunctionView, bool) {
	cfg, ok := s.o.Book.Function(fn)
	if !ok {
		return FunctionView{}, false
	}
	var v FunctionView
	v.FunctionName = fn
	v.Configuration.URL = dispatch.RedactURL(cfg.URL) // a read token must not reveal a password or an API key in the URL
	timeout := cfg.Timeout
	if timeout <= 0 {
		timeout = dispatch.DefaultTimeout
	}
	v.Configuration.Timeout = timeout.String()
	v.Configuration.AsyncQueue = cfg.AsyncQueue
	if n, ok := s.o.Book.Limiter().Reservation(fn); ok {
		v.Concurrency.ReservedConcurrentExecutions = &n
	}
	v.Concurrency.Origin = s.o.Book.ReservationOrigin(fn)
	if fu, ok := s.o.Book.Limiter().Usage().Functions[fn]; ok {
		v.Usage.ConcurrentExecutions, v.Usage.Waiting = fu.InFlight, fu.Waiting
	}
	return v, true
}

// ConcurrencyBody is the body of PUT /v1/functions/{fn}/concurrency.
type ConcurrencyBody struct {
	ReservedConcurrentExecutions *int `json:"reservedConcurrentExecutions"`
}

func (s *Server) putConcurrency(w http.ResponseWriter, r *http.Request) {
	var body ConcurrencyBody
	if !decode(w, r, &body) {
		return
	}
	if body.ReservedConcurrentExecutions == nil {
		writeError(w, http.StatusBadRequest, "admin: body: reservedConcurrentExecutions is required")
		return
	}
	fn := r.PathValue("fn")
	if err := s.o.Book.PutReservation(fn, *body.ReservedConcurrentExecutions); err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, body)
}

func (s *Server) deleteConcurrency(w http.ResponseWriter, r *http.Request) {
	if err := s.o.Book.DeleteReservation(r.PathValue("fn")); err != nil {
		writeErr(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) getRules(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{"rules": s.o.Book.Rules()})
}

func (s *Server) getRule(w http.ResponseWriter, r *http.Request) {
	v, err := s.o.Book.Rule(r.PathValue("pattern"))
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, v)
}

func (s *Server) putRule(w http.ResponseWriter, r *http.Request) {
	var body RulePatch
	if !decode(w, r, &body) {
		return
	}
	v, err := s.o.Book.SetRule(r.PathValue("pattern"), body)
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, v)
}

func (s *Server) deleteRule(w http.ResponseWriter, r *http.Request) {
	if err := s.o.Book.DeleteRule(r.PathValue("pattern")); err != nil {
		writeErr(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) enableRule(w http.ResponseWriter, r *http.Request) {
	v, err := s.o.Book.EnableRule(r.PathValue("pattern"))
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, v)
}

func (s *Server) disableRule(w http.ResponseWriter, r *http.Request) {
	v, err := s.o.Book.DisableRule(r.PathValue("pattern"))
	if err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, v)
}

// LimitsView is GET /v1/limits: per scope, its usage, limit (-1: none),
// available slots and matching rule; and the rules that match no active
// scope yet, so a "*" rule is visible before traffic.
type LimitsView struct {
	Scopes []dispatch.ScopeUsage `json:"scopes"`
	Rules  []Rule                `json:"rules"`
}

func (s *Server) getLimits(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, LimitsView{Scopes: s.o.Book.Limiter().Scopes(), Rules: s.o.Book.Rules()})
}

// ShardView is one shard in GET /v1/shards.
type ShardView struct {
	Source      string    `json:"source"`
	Shard       int32     `json:"shard"`
	State       string    `json:"state"`
	Since       time.Time `json:"since"`
	Reason      string    `json:"reason,omitempty"`
	Position    int64     `json:"position"`
	Lag         int64     `json:"lag"`
	IteratorAge float64   `json:"iteratorAgeSeconds"`
	Buffered    int       `json:"buffered"`
	Delivered   int64     `json:"delivered"`
	DeadLetters int64     `json:"deadLetters"`
}

func (s *Server) getShards(w http.ResponseWriter, _ *http.Request) {
	now := s.o.Now()
	out := []ShardView{}
	var lags map[shard.ID]int64
	if s.o.Lags != nil {
		lags = s.o.Lags()
	}
	for _, st := range s.o.Shards() {
		v := ShardView{Source: st.Shard.Source, Shard: st.Shard.Partition, State: string(st.State), Since: st.Since,
			Reason: st.Reason, Position: st.Position, Lag: lags[st.Shard], Buffered: st.Buffered, Delivered: st.Delivered, DeadLetters: st.DeadLetters}
		if !st.Oldest.IsZero() {
			v.IteratorAge = max(0, now.Sub(st.Oldest).Seconds())
		}
		out = append(out, v)
	}
	writeJSON(w, http.StatusOK, map[string]any{"shards": out})
}

// QueueView is one queue in GET /v1/queues: the invocations of one function
// with one set of scopes waiting for slots.
type QueueView struct {
	Function   string   `json:"function"`
	Scopes     []string `json:"scopes"`
	Waiting    int      `json:"waiting"`
	OldestWait float64  `json:"oldestWaitSeconds"`
	Reason     string   `json:"reason"`
	// Process is the cluster member whose waiters these are (cluster mode).
	Process string `json:"process,omitempty"`
}

func (s *Server) getQueues(w http.ResponseWriter, _ *http.Request) {
	now := s.o.Now()
	out := []QueueView{}
	for _, q := range s.o.Book.Limiter().Queues() {
		scopes := q.Scopes
		if scopes == nil {
			scopes = []string{}
		}
		out = append(out, QueueView{Function: q.Function, Scopes: scopes, Waiting: q.Waiting,
			OldestWait: max(0, now.Sub(q.Oldest).Seconds()), Reason: string(q.Reason), Process: q.Process})
	}
	writeJSON(w, http.StatusOK, map[string]any{"queues": out})
}

// ---------------------------------------------------------------------------
// Encoding

// decode reads a JSON object into v, refusing unknown fields, trailing data
// and bodies over maxBody; on failure it has answered 4xx and returns false.
func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("admin: body: larger than %d bytes", maxBody))
			return false
		}
		writeError(w, http.StatusBadRequest, "admin: body: "+err.Error())
		return false
	}
	b = bytes.TrimSpace(b)
	if len(b) == 0 || b[0] != '{' {
		writeError(w, http.StatusBadRequest, "admin: body: must be a JSON object")
		return false
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		writeError(w, http.StatusBadRequest, "admin: body: "+err.Error())
		return false
	}
	if dec.More() {
		writeError(w, http.StatusBadRequest, "admin: body: more than one JSON value")
		return false
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		writeError(w, http.StatusBadRequest, "admin: body: data after the JSON object")
		return false
	}
	return true
}

// writeErr maps an error of the Book to its status: not found 404, a
// refused change 400, anything else (the state file could not be written)
// 500.
func writeErr(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, ErrNotFound):
		writeError(w, http.StatusNotFound, err.Error())
	case errors.Is(err, ErrInvalid), errors.Is(err, dispatch.ErrInvalid):
		// The sentinels' words add nothing for the caller: the status says it.
		msg := strings.TrimPrefix(err.Error(), ErrInvalid.Error()+": ")
		msg = strings.TrimPrefix(msg, dispatch.ErrInvalid.Error()+": ")
		writeError(w, http.StatusBadRequest, "admin: "+msg)
	default:
		writeError(w, http.StatusInternalServerError, err.Error())
	}
}

// ErrorBody is the body of every error answer.
type ErrorBody struct {
	Message string `json:"message"`
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, ErrorBody{Message: msg})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// Routes returns every /v1 endpoint of the admin API with the role it needs.
func Routes() []Route { return (*Server)(nil).Routes() }
