package storage

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/dsyncd/dsyncd/mapping"
)

// Sentinel errors.
var (
	// ErrInUse is returned by Open when another process holds the store file.
	ErrInUse = errors.New("store in use by another process")
	// ErrClosed is returned by every method called after Close.
	ErrClosed = errors.New("store closed")
	// ErrNotFound is returned when a requested record does not exist.
	ErrNotFound = errors.New("not found")
)

// The defaults of Options: Open uses each for a zero field, and dsyncd's
// configuration (store.*, safeguards.on_directory_deleted) states them from
// here.
const (
	DefaultOpenTimeout        = time.Second
	DefaultProcessedRetention = 7 * 24 * time.Hour // WorkOS retries for up to 3 days
	DefaultOnDirectoryDeleted = OnDirectoryDeletedKeep
)

// Options configures a Store. The zero value of every field is usable except Path.
type Options struct {
	// Path is the bbolt file. It is created with mode 0600 if missing.
	Path string
	// OpenTimeout bounds the wait for the file lock; when it expires Open
	// returns ErrInUse. Zero means 1s.
	OpenTimeout time.Duration
	// ProcessedRetention is how long processed event ids are remembered for
	// deduplication. Zero means 7 days (WorkOS retries for up to 3 days).
	ProcessedRetention time.Duration
	// AuditRetention is how long audit entries are kept. Zero means forever.
	// Older entries are removed a bounded number at a time by Apply; the
	// badges they explain stay (a grant's rule and source live on the user).
	// Drop entries (an operator dropped a dead letter or a paused
	// organisation's events) are set aside instead, for Drops: a rebuild
	// must go on leaving dropped dead letters out.
	AuditRetention time.Duration
	// Mapping turns groups and roles into badges.
	Mapping mapping.Config
	// Safeguards protect organisations from what sync would otherwise do.
	Safeguards Safeguards
	// OnHold, if set, is called after a commit for every hold the committed
	// transaction opened (to log and count them).
	OnHold func(Hold)
	// MaxFuture, when positive, is how far past Now an event's created_at
	// may be: a later one is not applied (Apply says Future). dsyncd sets
	// it to webhook.tolerance. Zero applies events whatever their date.
	MaxFuture time.Duration
	// Changes configures the change feed (changes.go).
	Changes ChangesOptions
	// Now is the clock used for audit times, pruning and MaxFuture. Nil means time.Now.
	Now func() time.Time
	// NoSync skips fsync on commit. Only for tests and benchmarks that
	// rebuild a store from scratch.
	NoSync bool
}

// Safeguards configures what sync may not do on its own.
type Safeguards struct {
	// OnDirectoryDeleted is "keep" (default: users, groups and badges stay as
	// sync left them) or "deprovision" (they are removed).
	OnDirectoryDeleted string
	// BreakGlass lists emails or directory user ids whose badges sync never
	// removes and whom it never deletes.
	BreakGlass []string
	// MaxDeprovisions is the mass-deprovisioning breaker.
	MaxDeprovisions Breaker
}

// Store is dsyncd's state: directories, users, groups, memberships, badges,
// processed event ids, audit trail and holds, in one bbolt file.
type Store struct {
	db   *bolt.DB
	opts Options

	mu       sync.RWMutex // guards opts.Mapping / opts.Safeguards swaps
	closed   sync.Once
	feedNote notifier // wakes the change feed's readers after a commit that wrote change records
}

var (
	bktMeta          = []byte("meta")
	bktDirs          = []byte("directories")
	bktUsers         = []byte("users")
	bktGroups        = []byte("groups")
	bktMembers       = []byte("members")         // group \x00 user -> memberRec
	bktMembersByUser = []byte("members_by_user") // user \x00 group -> {}
	bktDirUsers      = []byte("dir_users")       // dir \x00 user -> {}
	bktDirGroups     = []byte("dir_groups")      // dir \x00 group -> {}
	bktProcessed     = []byte("processed")       // event id -> unix nano processed
	bktProcessedAt   = []byte("processed_at")    // unix nano (8 bytes BE) + event id -> {}
	bktAudit         = []byte("audit")           // seq (8 bytes BE) -> AuditEntry
	bktHolds         = []byte("holds")           // seq (8 bytes BE) -> Hold
	bktPending       = []byte("pending")         // org \x00 seq (8 bytes BE) -> raw event (paused orgs)
	bktOpenHolds     = []byte("open_holds")      // hold id (8 bytes BE) -> {}
	bktOrgAdmins     = []byte("org_admins")      // org \x00 user -> {}: holders of the admin badge
	bktDeprov        = []byte("deprovisions")    // org \x00 event time (8 bytes BE) \x00 user -> badges lost (JSON; empty in older records)
	bktPaused        = []byte("paused")          // org -> hold id (8 bytes BE)
	bktOrgUsers      = []byte("org_users")       // org -> users not deleted (8 bytes BE); see orgcount.go
	bktDrops         = []byte("drops")           // audit seq (8 bytes BE) -> AuditEntry of a drop, past the audit retention
	bktOrgHolders    = []byte("org_holders")     // org -> users holding a mapped badge (8 bytes BE); see holders.go
	bktUserEmail     = []byte("user_email")      // lower-cased email \x00 user -> {}; see index.go
	bktUserIdp       = []byte("user_idp")        // idp id \x00 dir \x00 user -> {}; see index.go
	bktOrgMembers    = []byte("org_members")     // org \x00 user -> {}: the users listed in org; see index.go
	allBuckets       = [][]byte{bktMeta, bktDirs, bktUsers, bktGroups, bktMembers, bktMembersByUser,
		bktDirUsers, bktDirGroups, bktProcessed, bktProcessedAt, bktAudit, bktHolds, bktPending,
		bktOpenHolds, bktOrgAdmins, bktDeprov, bktPaused, bktOrgUsers, bktDrops, bktOrgHolders,
		bktUserEmail, bktUserIdp, bktOrgMembers, bktChanges, bktFeedUsers}
)

// initialMmapSize is the address space bbolt maps at once (not memory: only
// the pages read count). While the file fits in it, a growing file needs no
// remap, and a remap waits for every read transaction: without this, a long
// read (a snapshot or export of a large store) would stall the worker's
// commits, and the reads queued behind them, for its whole length.
const initialMmapSize = 32 << 30

// Open opens (creating if needed) the store at opts.Path. A file that is not
// a usable store (truncated, overwritten, both meta pages invalid) is an
// error wrapping ErrDamaged, never a panic.
func Open(opts Options) (st *Store, err error) {
	if opts.Path == "" {
		return nil, errors.New("storage: no path")
	}
	if opts.OpenTimeout <= 0 {
		opts.OpenTimeout = DefaultOpenTimeout
	}
	if opts.ProcessedRetention <= 0 {
		opts.ProcessedRetention = DefaultProcessedRetention
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Safeguards.OnDirectoryDeleted == "" {
		opts.Safeguards.OnDirectoryDeleted = DefaultOnDirectoryDeleted
	}
	if err := os.MkdirAll(filepath.Dir(opts.Path), 0o700); err != nil {
		return nil, fmt.Errorf("storage: create directory: %w", err)
	}
	// bbolt panics on some damaged files (a page that is not what it
	// claims): at this edge, that is an error like any other.
	var db *bolt.DB
	defer func() {
		if r := recover(); r != nil {
			if db != nil {
				_ = db.Close()
			}
			st, err = nil, fmt.Errorf("storage: open %s: %w: %v", opts.Path, ErrDamaged, r)
		}
	}()
	db, err = bolt.Open(opts.Path, 0o600, &bolt.Options{Timeout: opts.OpenTimeout, NoSync: opts.NoSync, FreelistType: bolt.FreelistMapType,
		InitialMmapSize: initialMmapSize})
	if err != nil {
		if errors.Is(err, bolt.ErrTimeout) {
			return nil, fmt.Errorf("storage: open %s: %w (is another dsyncd running?)", opts.Path, ErrInUse)
		}
		if damaged(err) {
			return nil, fmt.Errorf("storage: open %s: %w: %w", opts.Path, ErrDamaged, err)
		}
		return nil, fmt.Errorf("storage: open %s: %w", opts.Path, err)
	}
	// bbolt applies the mode only when it creates the file; enforce it.
	if err := os.Chmod(opts.Path, 0o600); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("storage: chmod %s: %w", opts.Path, err)
	}
	st = &Store{db: db, opts: opts}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range allBuckets {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		if err := buildOrgUsers(tx); err != nil {
			return err
		}
		if err := buildUserIndex(tx); err != nil {
			return err
		}
		if err := buildOrgHolders(tx, opts.Mapping.DefaultBadges); err != nil {
			return err
		}
		return initFeed(tx, st)
	})
	if err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("storage: init buckets: %w", err)
	}
	return st, nil
}

// Close closes the store. It is safe to call more than once.
func (s *Store) Close() error {
	var err error
	s.closed.Do(func() {
		err = s.db.Close()
		s.feedNote.broadcast()
	})
	return err
}

// Path returns the store file's path.
func (s *Store) Path() string { return s.opts.Path }

// Mapping returns the mapping in force.
func (s *Store) Mapping() mapping.Config {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.opts.Mapping
}

// Check runs bbolt's consistency check and returns every problem found,
// wrapping ErrDamaged; a page so damaged that bbolt panics is such an error.
func (s *Store) Check() (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: %v", ErrDamaged, r)
		}
	}()
	defaults := s.Mapping().DefaultBadges
	err = s.db.View(func(tx *bolt.Tx) error {
		var errs []error
		for err := range tx.Check() {
			errs = append(errs, err)
		}
		if len(errs) == 0 {
			errs = append(errs, checkOrgUsers(tx), checkOrgHolders(tx, defaults), checkUserIndex(tx))
		}
		return errors.Join(errs...)
	})
	if err != nil && !errors.Is(err, bolt.ErrDatabaseNotOpen) {
		return fmt.Errorf("%w: %w", ErrDamaged, err)
	}
	return err
}

// Backup writes a consistent copy of the store to path (mode 0600) while the
// store stays in use.
func (s *Store) Backup(path string) error {
	return s.db.View(func(tx *bolt.Tx) error {
		f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
		if err != nil {
			return fmt.Errorf("storage: backup: %w", err)
		}
		if _, err := tx.WriteTo(f); err != nil {
			_ = f.Close()
			return fmt.Errorf("storage: backup: %w", err)
		}
		if err := f.Sync(); err != nil {
			_ = f.Close()
			return fmt.Errorf("storage: backup: %w", err)
		}
		return f.Close()
	})
}

func (s *Store) view(fn func(tx *bolt.Tx) error) error {
	if err := s.db.View(fn); err != nil {
		if errors.Is(err, bolt.ErrDatabaseNotOpen) {
			return ErrClosed
		}
		return err
	}
	return nil
}

// Cursor returns the value stored under name (e.g. the Events API cursor),
// or "" if none.
func (s *Store) Cursor(name string) (string, error) {
	var out string
	err := s.view(func(tx *bolt.Tx) error {
		out = string(tx.Bucket(bktMeta).Get([]byte("cursor:" + name)))
		return nil
	})
	return out, err
}

// SetCursor stores value under name, durably.
func (s *Store) SetCursor(name, value string) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bktMeta).Put([]byte("cursor:"+name), []byte(value))
	})
}
