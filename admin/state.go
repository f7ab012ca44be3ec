package admin

import (
	"maps"
	"time"

	"github.com/sluicehq/sluice/dispatch"
)

// Store keeps the API layer of the Book (the reservations and rules changed
// through the API, and the versions of the rules) so that it outlives the
// process. FileStore, state_dir/limits.json, is the local one.
//
// A shared Store (for limits shared by several sluice processes) keeps the
// State in a replicated place. The Book calls Load once at start and Save
// after every change, under its own lock, before the change is answered; a
// Save that fails makes the Book put the limit engine back and refuse the
// change. A shared Store bounds its own calls in time (the Book passes no
// context) and refuses a Save that would overwrite a State it has not seen
// (compare-and-swap), so two processes cannot lose each other's changes.
type Store interface {
	// Load returns the kept State; nothing kept yet is an empty State with
	// non-nil maps. A State that cannot be read is an error: sluice must
	// not run with limits other than the operator set.
	Load() (State, error)
	// Save replaces the kept State with st, all or nothing.
	Save(st State) error
	// Where names the place for logs and errors (a path, a URL).
	Where() string
}

// State is the API layer of the rule book as a Store keeps it.
type State struct {
	Version      int                          `json:"version"`
	Reservations map[string]ReservationChange `json:"reservations"`
	Rules        map[string]RuleChange        `json:"rules"`
	// Meta is the version and last change of every effective rule (also
	// those of the file), with the rule as it was then, so that a change of
	// the file while sluice was stopped still counts as a new version.
	Meta map[string]RuleMeta `json:"ruleVersions"`
}

// ReservationChange is a reservation set or deleted through the API.
type ReservationChange struct {
	Reserved     *int      `json:"reserved,omitempty"`
	Deleted      bool      `json:"deleted,omitempty"`
	LastModified time.Time `json:"lastModified"`
}

// RuleChange is a rule changed through the API: the fields set (merge
// semantics), or a delete.
type RuleChange struct {
	Concurrency *int    `json:"concurrency,omitempty"`
	Description *string `json:"description,omitempty"`
	Disabled    *bool   `json:"disabled,omitempty"`
	// Deleted removes the rule, even when the file has one.
	Deleted bool `json:"deleted,omitempty"`
	// Replaces ignores the file's rule of this pattern: it was deleted
	// through the API and then created again.
	Replaces bool `json:"replaces,omitempty"`
}

// RuleMeta is the version and last change of one effective rule.
type RuleMeta struct {
	Rule         dispatch.Rule `json:"rule"`
	Version      uint64        `json:"version"`
	LastModified time.Time     `json:"lastModified"`
}

func (s State) clone() State {
	return State{Version: s.Version, Reservations: maps.Clone(s.Reservations), Rules: maps.Clone(s.Rules), Meta: maps.Clone(s.Meta)}
}
