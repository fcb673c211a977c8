package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"

	"github.com/dsyncd/dsyncd/client"
)

// errGap: a record's seq does not follow the last one applied. The feed
// never skips one, so a gap means records were lost (retention,
// changes.webhook.max_age): the mirror is wrong until it resyncs.
var errGap = errors.New("GAP in the change feed")

// mirror is what a product keeps: every user dsyncd lists, by id, as of
// seq. It is safe for concurrent use.
type mirror struct {
	mu    sync.Mutex
	users map[string]client.User
	seq   uint64
	out   io.Writer // the revoke lines
	log   io.Writer // with verbose, one line per record applied
	verb  bool
	// reached is closed once seq reaches until (when until > 0).
	until   uint64
	reached chan struct{}
	closed  bool
}

func newMirror(out, log io.Writer, verbose bool, until uint64) *mirror {
	return &mirror{users: map[string]client.User{}, out: out, log: log, verb: verbose, until: until, reached: make(chan struct{})}
}

// load replaces the mirror with an export's users, at its change_seq;
// users of the old mirror who lose access by it are revoked.
func (m *mirror) load(ex *client.Export) {
	m.mu.Lock()
	defer m.mu.Unlock()
	users := make(map[string]client.User, len(ex.Users))
	for _, u := range ex.Users {
		users[u.ID] = u
	}
	for id, old := range m.users {
		if u, ok := users[id]; ok {
			m.revoke(old, &u, "")
		} else {
			m.revoke(old, nil, client.ChangeUserDeleted)
		}
	}
	m.users, m.seq = users, ex.ChangeSeq
	fmt.Fprintf(m.log, "loaded the export at seq %d (%d users)\n", m.seq, len(m.users))
	m.check()
}

// apply folds one record into the mirror: a record at or below the mirror's
// seq is one already applied (at least once delivery) and is skipped; one
// that does not follow it is a gap.
func (m *mirror) apply(c client.Change) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if c.Seq <= m.seq {
		return nil
	}
	if c.Seq != m.seq+1 {
		return fmt.Errorf("%w: after seq %d came seq %d", errGap, m.seq, c.Seq)
	}
	if c.User != nil {
		if old, ok := m.users[c.User.ID]; ok {
			if c.Kind == client.ChangeUserDeleted {
				m.revoke(old, nil, c.Kind)
			} else {
				m.revoke(old, c.User, c.Kind)
			}
		}
		client.Fold(m.users, c)
	}
	m.seq = c.Seq
	if m.verb {
		id := ""
		if c.User != nil {
			id = " " + c.User.ID
		}
		fmt.Fprintf(m.log, "seq %d applied (%s%s)\n", c.Seq, c.Kind, id)
	}
	m.check()
	return nil
}

func (m *mirror) check() {
	if m.until > 0 && m.seq >= m.until && !m.closed {
		m.closed = true
		close(m.reached)
	}
}

// revoke prints what a product must do when a user loses access: its
// sessions revoked when it is deleted or deprovisioned, or a badge's
// privileges when it loses that badge.
func (m *mirror) revoke(old client.User, now *client.User, kind string) {
	if !old.Active() && len(old.Badges) == 0 {
		return // it had no access to lose
	}
	who := old.Email
	if who == "" {
		who = old.ID
	}
	switch {
	case now == nil || kind == client.ChangeUserDeleted:
		fmt.Fprintf(m.out, "revoke sessions: %s (deleted)\n", who)
	case old.Active() && !now.Active():
		fmt.Fprintf(m.out, "revoke sessions: %s (deprovisioned)\n", who)
	default:
		for _, b := range old.Badges {
			if !slices.Contains(now.Badges, b) {
				fmt.Fprintf(m.out, "revoke sessions: %s (lost badge %s)\n", who, b)
			}
		}
	}
}

// snapshot is the mirror as the consumer writes it: its seq and its users
// sorted by id, as /v1/export lists them.
type snapshot struct {
	Seq   uint64        `json:"seq"`
	Users []client.User `json:"users"`
}

func (m *mirror) write(w io.Writer) error {
	m.mu.Lock()
	s := snapshot{Seq: m.seq, Users: make([]client.User, 0, len(m.users))}
	for _, u := range m.users {
		s.Users = append(s.Users, u)
	}
	m.mu.Unlock()
	slices.SortFunc(s.Users, func(a, b client.User) int { return strings.Compare(a.ID, b.ID) })
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(s)
}
