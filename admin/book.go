package admin

import (
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/sluicehq/sluice/dispatch"
)

// Origins of a rule or a reservation.
const (
	OriginConfig = "config" // as the configuration file says
	OriginAPI    = "api"    // created or changed through the admin API
)

// ErrNotFound is returned for a function or rule that does not exist.
var ErrNotFound = errors.New("admin: not found")

// ErrInvalid is wrapped by the errors of a change that was refused as a bad
// request (out of range, below min_unreserved, a new rule without
// concurrency). The limiter's own refusals wrap dispatch.ErrInvalid.
var ErrInvalid = errors.New("admin: invalid request")

// Rule is one rule as the API shows it.
type Rule struct {
	Pattern      string    `json:"pattern"`
	Concurrency  int       `json:"concurrency"`
	Description  string    `json:"description"`
	Disabled     bool      `json:"disabled"`
	Version      uint64    `json:"version"`
	LastModified time.Time `json:"lastModified"`
	Origin       string    `json:"origin"`
}

// RulePatch is a change of a rule with merge semantics: nil fields keep
// their value.
type RulePatch struct {
	Concurrency *int    `json:"concurrency"`
	Description *string `json:"description"`
	Disabled    *bool   `json:"disabled"`
}

// Book holds the live limits: the configuration layer (the file, replaced
// on reload) with the API layer on top (kept under state_dir). Every change
// goes to the limiter first (which may refuse it), then to the file; if the
// file cannot be written the limiter is put back, so the limiter, the file
// and what the API shows agree.
type Book struct {
	lim   dispatch.Limits
	store Store
	log   *slog.Logger
	now   func() time.Time
	// maxRules caps the rules (dispatch.MaxRules; tests lower it).
	maxRules int

	// mu guards the fields below and serializes changes: the limiter's own
	// lock is taken inside it, never the other way round.
	mu        sync.Mutex
	base      dispatch.Config // the configuration layer
	functions map[string]dispatch.FunctionConfig
	overlay   State                    // the API layer and rule metadata, as in the file
	rules     map[string]dispatch.Rule // effective rules, as the limiter has them
	res       map[string]int           // effective reservations
}

// BookOption configures a Book.
type BookOption func(*Book)

// WithBookLogger sets the logger of changes and reloads.
func WithBookLogger(l *slog.Logger) BookOption { return func(b *Book) { b.log = l } }

// WithStore keeps the API layer in s instead of stateDir's limits.json.
func WithStore(s Store) BookOption { return func(b *Book) { b.store = s } }

// WithBookClock sets the clock of lastModified (tests).
func WithBookClock(now func() time.Time) BookOption { return func(b *Book) { b.now = now } }

// NewBook returns the book of lim, whose limits are those of base (the
// limiter was built from base), and applies on top the API changes kept in
// stateDir. A change that no longer fits (a reservation of a function that
// is gone or that would break min_unreserved) is logged and dropped. An
// unreadable state file is an error: sluice must not run with limits other
// than the operator set.
func NewBook(lim dispatch.Limits, base dispatch.Config, stateDir string, opts ...BookOption) (*Book, error) {
	b := &Book{lim: lim, store: NewFileStore(stateDir), log: slog.Default(), now: time.Now, functions: base.Functions, maxRules: dispatch.MaxRules}
	for _, o := range opts {
		o(b)
	}
	st, err := b.store.Load()
	if err != nil {
		return nil, err
	}
	b.overlay = st
	b.base = base
	b.rules = rulesOf(base.Rules)
	b.res = reservationsOf(base)
	if n := len(st.Rules) + len(st.Reservations); n > 0 {
		b.log.Info("admin: applying limits changed through the API", "file", b.store.Where(), "changes", n)
	}
	b.applyLocked(base.Account, true)
	if err := b.store.Save(b.overlay); err != nil {
		return nil, err
	}
	return b, nil
}

// Path is where the API changes are kept (Store.Where).
func (b *Book) Path() string { return b.store.Where() }

// Limiter is the limiter the book changes.
func (b *Book) Limiter() dispatch.Limits { return b.lim }

// Function returns the configuration of fn and whether it is configured.
func (b *Book) Function(fn string) (dispatch.FunctionConfig, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	f, ok := b.functions[fn]
	return f, ok
}

// Functions returns the names of the configured functions, sorted.
func (b *Book) Functions() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Sorted(maps.Keys(b.functions))
}

// ReservationOrigin says where fn's reservation comes from: OriginAPI when
// the API changed it (including deleting one the file sets), else OriginConfig.
func (b *Book) ReservationOrigin(fn string) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.overlay.Reservations[fn]; ok {
		return OriginAPI
	}
	return OriginConfig
}

// PutReservation reserves n slots for fn (PUT /v1/functions/{fn}/concurrency).
func (b *Book) PutReservation(fn string, n int) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.functions[fn]; !ok {
		return fmt.Errorf("%w: function %q is not configured", ErrNotFound, fn)
	}
	old, had := b.lim.Reservation(fn)
	if err := b.lim.PutReservation(fn, n); err != nil {
		return err
	}
	prev := b.overlay.clone()
	b.overlay.Reservations[fn] = ReservationChange{Reserved: &n, LastModified: b.now().UTC()}
	if err := b.saveLocked(prev); err != nil {
		b.restoreReservation(fn, old, had)
		return err
	}
	b.res[fn] = n
	b.log.Info("admin: reservation set", "function", fn, "reserved", n)
	return nil
}

// DeleteReservation makes fn share the unreserved pool again (DELETE
// /v1/functions/{fn}/concurrency), even if the file reserves for it.
func (b *Book) DeleteReservation(fn string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.functions[fn]; !ok {
		return fmt.Errorf("%w: function %q is not configured", ErrNotFound, fn)
	}
	old, had := b.lim.Reservation(fn)
	b.lim.DeleteReservation(fn)
	prev := b.overlay.clone()
	if _, inBase := reservationsOf(b.base)[fn]; inBase {
		b.overlay.Reservations[fn] = ReservationChange{Deleted: true, LastModified: b.now().UTC()}
	} else {
		delete(b.overlay.Reservations, fn)
	}
	if err := b.saveLocked(prev); err != nil {
		b.restoreReservation(fn, old, had)
		return err
	}
	delete(b.res, fn)
	b.log.Info("admin: reservation deleted", "function", fn)
	return nil
}

func (b *Book) restoreReservation(fn string, n int, had bool) {
	if !had {
		b.lim.DeleteReservation(fn)
		return
	}
	if err := b.lim.PutReservation(fn, n); err != nil {
		b.log.Error("admin: could not restore a reservation", "function", fn, "reserved", n, "error", err)
	}
}

// Rules returns the effective rules, "*" first, then by pattern.
func (b *Book) Rules() []Rule {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]Rule, 0, len(b.rules))
	for _, p := range sortedPatterns(b.rules) {
		out = append(out, b.viewLocked(p))
	}
	return out
}

// Rule returns the effective rule of pattern.
func (b *Book) Rule(pattern string) (Rule, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.rules[pattern]; !ok {
		return Rule{}, fmt.Errorf("%w: no rule %q", ErrNotFound, pattern)
	}
	return b.viewLocked(pattern), nil
}

func (b *Book) viewLocked(p string) Rule {
	r := b.rules[p]
	m := b.overlay.Meta[p]
	origin := OriginConfig
	if ch, ok := b.overlay.Rules[p]; ok && !ch.Deleted {
		origin = OriginAPI
	}
	return Rule{Pattern: p, Concurrency: r.Concurrency, Description: r.Description, Disabled: r.Disabled,
		Version: m.Version, LastModified: m.LastModified, Origin: origin}
}

// SetRule merges patch into the rule of pattern, creating it (then
// Concurrency is required) (PUT /v1/rules/{pattern}).
func (b *Book) SetRule(pattern string, patch RulePatch) (Rule, error) {
	if err := checkPattern(pattern); err != nil {
		return Rule{}, err
	}
	if patch.Concurrency != nil && *patch.Concurrency < 0 {
		return Rule{}, fmt.Errorf("%w: concurrency: %d is out of range (0 or more)", ErrInvalid, *patch.Concurrency)
	}
	if patch.Description != nil && len(*patch.Description) > maxDescription {
		return Rule{}, fmt.Errorf("%w: description: longer than %d bytes", ErrInvalid, maxDescription)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, exists := b.rules[pattern]; !exists && patch.Concurrency == nil {
		return Rule{}, fmt.Errorf("%w: rule %q does not exist; creating it needs concurrency", ErrInvalid, pattern)
	}
	if _, exists := b.rules[pattern]; !exists && len(b.rules) >= b.maxRules {
		return Rule{}, fmt.Errorf("%w: the rule book is full (%d rules at most); delete a rule first", ErrInvalid, b.maxRules)
	}
	return b.changeRuleLocked(pattern, func(ch *RuleChange) {
		if ch.Deleted {
			*ch = RuleChange{Replaces: true}
		}
		if patch.Concurrency != nil {
			ch.Concurrency = patch.Concurrency
		}
		if patch.Description != nil {
			ch.Description = patch.Description
		}
		if patch.Disabled != nil {
			ch.Disabled = patch.Disabled
		}
	})
}

// EnableRule switches the rule of pattern on again.
func (b *Book) EnableRule(pattern string) (Rule, error) { return b.setDisabled(pattern, false) }

// DisableRule switches the rule of pattern off: it is kept but skipped when
// matching, so its scopes fall back to "*" (or no limit).
func (b *Book) DisableRule(pattern string) (Rule, error) { return b.setDisabled(pattern, true) }

func (b *Book) setDisabled(pattern string, disabled bool) (Rule, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.rules[pattern]; !ok {
		return Rule{}, fmt.Errorf("%w: no rule %q", ErrNotFound, pattern)
	}
	return b.changeRuleLocked(pattern, func(ch *RuleChange) { ch.Disabled = &disabled })
}

// DeleteRule removes the rule of pattern, also one the file sets (DELETE
// /v1/rules/{pattern}).
func (b *Book) DeleteRule(pattern string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.rules[pattern]; !ok {
		return fmt.Errorf("%w: no rule %q", ErrNotFound, pattern)
	}
	prev := b.overlay.clone()
	if _, inBase := rulesOf(b.base.Rules)[pattern]; inBase {
		b.overlay.Rules[pattern] = RuleChange{Deleted: true}
	} else {
		delete(b.overlay.Rules, pattern)
	}
	old := b.rules[pattern]
	b.lim.DeleteRule(pattern)
	delete(b.overlay.Meta, pattern)
	if err := b.saveLocked(prev); err != nil {
		if serr := b.lim.SetRule(old); serr != nil {
			b.log.Error("admin: could not restore a rule", "pattern", pattern, "error", serr)
		}
		return err
	}
	delete(b.rules, pattern)
	b.log.Info("admin: rule deleted", "pattern", pattern)
	return nil
}

// changeRuleLocked applies edit to the API change of pattern, then the
// result to the limiter and the file.
func (b *Book) changeRuleLocked(pattern string, edit func(*RuleChange)) (Rule, error) {
	prev := b.overlay.clone()
	ch := b.overlay.Rules[pattern]
	edit(&ch)
	b.overlay.Rules[pattern] = ch
	eff := effectiveRules(b.base.Rules, b.overlay.Rules)
	r, ok := eff[pattern]
	if !ok {
		b.overlay = prev
		return Rule{}, fmt.Errorf("%w: rule %q has no concurrency", ErrInvalid, pattern)
	}
	old, had := b.rules[pattern]
	if err := b.lim.SetRule(r); err != nil {
		b.overlay = prev
		return Rule{}, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	b.touchLocked(pattern, r)
	if err := b.saveLocked(prev); err != nil {
		if had {
			_ = b.lim.SetRule(old)
		} else {
			b.lim.DeleteRule(pattern)
		}
		return Rule{}, err
	}
	b.rules[pattern] = r
	v := b.viewLocked(pattern)
	b.log.Info("admin: rule set", "pattern", pattern, "concurrency", r.Concurrency, "disabled", r.Disabled, "version", v.Version)
	return v, nil
}

// touchLocked records a new version of pattern's rule when r differs from
// the last one seen.
func (b *Book) touchLocked(pattern string, r dispatch.Rule) {
	m := b.overlay.Meta[pattern]
	if m.Version != 0 && m.Rule == r {
		return
	}
	b.overlay.Meta[pattern] = RuleMeta{Rule: r, Version: m.Version + 1, LastModified: b.now().UTC()}
}

// saveLocked writes the overlay; on failure it puts prev back and returns
// the error.
func (b *Book) saveLocked(prev State) error {
	if err := b.store.Save(b.overlay); err != nil {
		b.overlay = prev
		return err
	}
	return nil
}

// Reload replaces the configuration layer with base (a reloaded file),
// keeps the API layer on top, applies the result to the limiter without
// touching running invocations, and logs what changed. Functions added to
// or removed from the file need a restart; their reservations are ignored
// until then. A change the limiter refuses is logged and skipped.
func (b *Book) Reload(base dispatch.Config) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	for name := range base.Functions {
		if _, ok := b.functions[name]; !ok {
			b.log.Warn("admin: reload: a new function needs a restart to run; its limits are ignored until then", "function", name)
			delete(base.Functions, name)
		}
	}
	base.Account = base.Account.WithDefaults()
	b.base = base
	b.applyLocked(base.Account, false)
	return b.store.Save(b.overlay)
}

// applyLocked brings the limiter to the effective limits of b.base with
// b.overlay on top, logging each change; it also updates the rule metadata.
// Reservations that shrink go first and those that grow last, so that a
// valid end state is reached through valid steps.
func (b *Book) applyLocked(account dispatch.AccountConfig, startup bool) {
	what := "reload"
	if startup {
		what = "start-up"
	}
	wantRes := b.effectiveReservationsLocked()
	wantRules := effectiveRules(b.base.Rules, b.overlay.Rules)

	// Rules.
	for _, p := range sortedPatterns(b.rules) {
		if _, keep := wantRules[p]; !keep {
			b.lim.DeleteRule(p)
			delete(b.rules, p)
			delete(b.overlay.Meta, p)
			b.log.Info("admin: "+what+": rule removed", "pattern", p)
		}
	}
	for _, p := range sortedPatterns(wantRules) {
		r := wantRules[p]
		if cur, ok := b.rules[p]; ok && cur == r {
			b.touchLocked(p, r)
			continue
		}
		if err := b.lim.SetRule(r); err != nil {
			b.log.Warn("admin: "+what+": rule refused", "pattern", p, "error", err)
			continue
		}
		b.touchLocked(p, r)
		if _, ok := b.rules[p]; ok || !startup {
			b.log.Info("admin: "+what+": rule set", "pattern", p, "concurrency", r.Concurrency, "disabled", r.Disabled, "description", r.Description)
		}
		b.rules[p] = r
	}
	// Drop metadata of patterns that are gone (e.g. deleted while stopped).
	for p := range b.overlay.Meta {
		if _, ok := b.rules[p]; !ok {
			delete(b.overlay.Meta, p)
		}
	}

	// Reservations: shrink, then the account, then grow.
	fns := slices.Sorted(maps.Keys(b.functions))
	for _, fn := range fns {
		n, want := wantRes[fn]
		cur, has := b.lim.Reservation(fn)
		switch {
		case has && !want:
			b.lim.DeleteReservation(fn)
			b.log.Info("admin: "+what+": reservation removed", "function", fn)
		case has && want && n < cur:
			b.putReservationLocked(what, fn, n)
		}
	}
	if cur := b.lim.Account(); cur != account {
		if err := b.lim.SetAccount(account); err != nil {
			b.log.Warn("admin: "+what+": account settings refused", "error", err)
		} else {
			b.log.Info("admin: "+what+": account settings changed", "concurrency", account.Concurrency, "min_unreserved", account.MinUnreserved)
		}
	}
	for _, fn := range fns {
		n, want := wantRes[fn]
		cur, has := b.lim.Reservation(fn)
		if want && (!has || n > cur) {
			b.putReservationLocked(what, fn, n)
		}
	}
	b.res = map[string]int{}
	for _, fn := range fns {
		if n, ok := b.lim.Reservation(fn); ok {
			b.res[fn] = n
		}
	}
	// An API reservation that the limiter refused is dropped, so the file
	// says what runs.
	for fn, ch := range b.overlay.Reservations {
		if _, known := b.functions[fn]; !known {
			b.log.Warn("admin: "+what+": dropping the reservation of a function that is not configured", "function", fn)
			delete(b.overlay.Reservations, fn)
			continue
		}
		if n, ok := b.res[fn]; ch.Reserved != nil && (!ok || n != *ch.Reserved) {
			delete(b.overlay.Reservations, fn)
		}
	}
}

func (b *Book) putReservationLocked(what, fn string, n int) {
	if err := b.lim.PutReservation(fn, n); err != nil {
		b.log.Warn("admin: "+what+": reservation refused", "function", fn, "reserved", n, "error", err)
		return
	}
	b.log.Info("admin: "+what+": reservation set", "function", fn, "reserved", n)
}

func (b *Book) effectiveReservationsLocked() map[string]int {
	out := reservationsOf(b.base)
	for fn, ch := range b.overlay.Reservations {
		switch {
		case ch.Deleted:
			delete(out, fn)
		case ch.Reserved != nil:
			out[fn] = *ch.Reserved
		}
	}
	return out
}

// effectiveRules is the file's rules with the API changes on top.
func effectiveRules(base []dispatch.Rule, changes map[string]RuleChange) map[string]dispatch.Rule {
	out := make(map[string]dispatch.Rule, len(base)+len(changes))
	for _, r := range base {
		if ch, ok := changes[r.Pattern]; ok && (ch.Deleted || ch.Replaces) {
			continue
		}
		out[r.Pattern] = r
	}
	for p, ch := range changes {
		if ch.Deleted {
			continue
		}
		r, ok := out[p]
		if !ok {
			if ch.Concurrency == nil {
				continue // nothing to merge into: the file's rule is gone
			}
			r = dispatch.Rule{Pattern: p}
		}
		if ch.Concurrency != nil {
			r.Concurrency = *ch.Concurrency
		}
		if ch.Description != nil {
			r.Description = *ch.Description
		}
		if ch.Disabled != nil {
			r.Disabled = *ch.Disabled
		}
		out[p] = r
	}
	return out
}

func rulesOf(rules []dispatch.Rule) map[string]dispatch.Rule {
	out := make(map[string]dispatch.Rule, len(rules))
	for _, r := range rules {
		out[r.Pattern] = r
	}
	return out
}

func reservationsOf(c dispatch.Config) map[string]int {
	out := map[string]int{}
	for name, f := range c.Functions {
		if f.ReservedConcurrency != nil {
			out[name] = *f.ReservedConcurrency
		}
	}
	return out
}

// sortedPatterns returns the keys of m, "*" first, then sorted.
func sortedPatterns[V any](m map[string]V) []string {
	out := slices.Collect(maps.Keys(m))
	slices.SortFunc(out, func(a, b string) int {
		switch {
		case a == b:
			return 0
		case a == "*":
			return -1
		case b == "*":
			return 1
		}
		return strings.Compare(a, b)
	})
	return out
}

// Limits on what the API accepts, so that a request cannot grow the book
// without bound.
const (
	maxPattern     = 256
	maxDescription = 1024
)

func checkPattern(p string) error {
	if p == "" || len(p) > maxPattern {
		return fmt.Errorf("%w: pattern: must be \"*\" or an exact scope of 1..%d bytes", ErrInvalid, maxPattern)
	}
	for _, c := range p {
		if c < 0x20 || c == 0x7f || c == 0xfffd {
			return fmt.Errorf("%w: pattern %q: control characters and invalid UTF-8 are not allowed", ErrInvalid, p)
		}
	}
	return nil
}
