package store

import "sync"

// Change says that a proxy record changed. Record is its state as of the
// commit that made the change, or nil if that commit deleted it. Treat a
// change as a hint to look again: read the store for the current state.
type Change struct {
	ID     string
	OrgID  string
	Domain string
	Record *Record
}

// Subscription receives the changes committed after Subscribe returned.
// Pending changes to the same record coalesce to the newest one, so a slow
// consumer holds at most one change per record and never blocks a writer.
type Subscription struct {
	store *Store
	ready chan struct{}

	// mu guards pending and order.
	mu      sync.Mutex
	pending map[string]Change
	order   []string
}

// Subscribe starts a subscription to record changes. Call Close when done.
func (s *Store) Subscribe() *Subscription {
	sub := &Subscription{store: s, ready: make(chan struct{}, 1), pending: map[string]Change{}}
	s.subsMu.Lock()
	s.subs[sub] = struct{}{}
	s.subsMu.Unlock()
	return sub
}

// Ready receives a value when changes are waiting to be taken.
func (sub *Subscription) Ready() <-chan struct{} { return sub.ready }

// Take returns the waiting changes, oldest first, and empties the queue.
func (sub *Subscription) Take() []Change {
	sub.mu.Lock()
	defer sub.mu.Unlock()
	changes := make([]Change, 0, len(sub.order))
	for _, id := range sub.order {
		changes = append(changes, sub.pending[id])
	}
	clear(sub.pending)
	sub.order = sub.order[:0]
	return changes
}

// Close stops the subscription.
func (sub *Subscription) Close() {
	sub.store.subsMu.Lock()
	delete(sub.store.subs, sub)
	sub.store.subsMu.Unlock()
}

func (sub *Subscription) add(c Change) {
	sub.mu.Lock()
	if _, ok := sub.pending[c.ID]; !ok {
		sub.order = append(sub.order, c.ID)
	}
	sub.pending[c.ID] = c
	sub.mu.Unlock()
	select {
	case sub.ready <- struct{}{}:
	default:
	}
}

func (s *Store) publish(c Change) {
	s.subsMu.Lock()
	defer s.subsMu.Unlock()
	for sub := range s.subs {
		sub.add(c)
	}
}
