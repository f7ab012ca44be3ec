package admin

// Refresh reads the API layer from the Store again and applies it: a
// shared Store (cluster mode) calls it when another process changed the
// rule book, so that the change holds here too. The configuration layer
// stays.
func (b *Book) Refresh() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	st, err := b.store.Load()
	if err != nil {
		return err
	}
	b.overlay = st
	b.applyLocked(b.base.Account.WithDefaults(), false)
	return nil
}
