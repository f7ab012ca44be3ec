package admin

import (
	"crypto/sha256"
	"fmt"
)

// SetTokens replaces the accepted bearer tokens (a reload of their files
// on SIGHUP); requests already authenticated keep their role. An empty
// list opens /v1, as in Options.Tokens.
func (s *Server) SetTokens(tokens []Token) error {
	hashed := make([]tokenHash, 0, len(tokens))
	for i, t := range tokens {
		if t.Secret == "" || !t.Role.Valid() {
			return fmt.Errorf("admin: token %d: empty secret or unknown role", i)
		}
		// Hashing first makes every comparison the same length, so neither
		// the content nor the length of a secret leaks through timing.
		hashed = append(hashed, tokenHash{sum: sha256.Sum256([]byte(t.Secret)), role: t.Role})
	}
	s.tokens.Store(&hashed)
	return nil
}
