package client_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"testing"

	"github.com/dsyncd/dsyncd/client"
	"github.com/dsyncd/dsyncd/storage"
)

// Example: bootstrap a mirror of the users from an export, then follow the
// changes after its change_seq, revoking the sessions of users who lose
// access.
func Example() {
	t := &exampleTB{}
	defer t.cleanup()
	r := newRig(t, storage.Options{}) // a dsyncd on loopback, for the example
	r.user(t, "dsync.user.created", "ann", "active", "billing")
	r.user(t, "dsync.user.created", "bob", "active")
	ctx := context.Background()

	c := client.New(r.srv.URL(), token)
	ex, err := c.Export(ctx)
	if err != nil {
		panic(err)
	}
	mirror := map[string]client.User{}
	for _, u := range ex.Users {
		mirror[u.ID] = u
	}
	fmt.Printf("%d users at seq %d\n", len(mirror), ex.ChangeSeq)

	r.user(t, "dsync.user.updated", "ann", "active") // ann loses the billing role
	r.user(t, "dsync.user.updated", "bob", "inactive")
	stop := errors.New("stop")
	err = c.Follow(ctx, ex.ChangeSeq, func(ch client.Change) error {
		if ch.User == nil {
			return nil // a hold or an organisation record
		}
		if old, ok := mirror[ch.User.ID]; ok && old.HasBadge("billing") && !ch.User.HasBadge("billing") {
			fmt.Printf("%s: %s lost billing\n", ch.Kind, ch.User.ID)
		}
		if !ch.User.Active() {
			fmt.Printf("%s: revoke sessions of %s\n", ch.Kind, ch.User.Email)
		}
		client.Fold(mirror, ch)
		if ch.Seq == 4 {
			return stop
		}
		return nil
	})
	fmt.Println(errors.Is(err, stop))
	// Output:
	// 2 users at seq 2
	// user.badges_changed: ann lost billing
	// user.deactivated: revoke sessions of Bob@X.example
	// true
}

// exampleTB is the little of testing.TB that newRig needs, for an example.
type exampleTB struct {
	testing.TB
	dirs     []string
	cleanups []func()
}

func (e *exampleTB) Helper()           {}
func (e *exampleTB) Fatal(args ...any) { panic(fmt.Sprint(args...)) }
func (e *exampleTB) Cleanup(f func())  { e.cleanups = append(e.cleanups, f) }
func (e *exampleTB) TempDir() string {
	d, err := os.MkdirTemp("", "dsyncd-client-example")
	if err != nil {
		panic(err)
	}
	e.dirs = append(e.dirs, d)
	return d
}

func (e *exampleTB) cleanup() {
	for i := len(e.cleanups) - 1; i >= 0; i-- {
		e.cleanups[i]()
	}
	for _, d := range e.dirs {
		_ = os.RemoveAll(d)
	}
}
