package server

import (
	"context"
	"net/http"
	"time"
)

// SnapshotInfo is one snapshot of the store kept in the snapshot bucket.
type SnapshotInfo struct {
	Name string `json:"name"`
	// StreamSeq: the snapshot holds every event of the stream up to it.
	StreamSeq uint64 `json:"stream_seq"`
	// AppliedSeq is the store's applied-sequence record in the copy.
	AppliedSeq uint64    `json:"applied_seq"`
	Bytes      uint64    `json:"bytes"`
	Taken      time.Time `json:"taken"`
}

// Snapshots is what /v1/snapshots does with the store's snapshots;
// cmd/dsyncd implements it over the queue's Object Store bucket.
type Snapshots interface {
	// List returns the kept snapshots, newest first.
	List(ctx context.Context) ([]SnapshotInfo, error)
	// Take takes one now (then prunes and purges as a scheduled one does).
	Take(ctx context.Context) (SnapshotInfo, error)
}

func (s *Server) snapshotRoutes(mux *router, sn Snapshots) {
	mux.HandleFunc("GET /v1/snapshots", s.authed(func(w http.ResponseWriter, r *http.Request) {
		l, err := sn.List(r.Context())
		s.reply(w, r, map[string]any{"snapshots": nonNil(l)}, err)
	}))
	mux.HandleFunc("POST /v1/snapshots", s.authed(func(w http.ResponseWriter, r *http.Request) {
		info, err := sn.Take(r.Context())
		s.reply(w, r, info, err)
	}))
}
