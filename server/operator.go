package server

// The operator routes of /v1: holds, organisation resume, a new mapping,
// dead letters, backup, whether an event was processed, why a user has a
// badge; and the one mapping of a handler's error to its answer (fail).

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/dsyncd/dsyncd/mapping"
	"github.com/dsyncd/dsyncd/storage"
)

// DeadLetter is a parked event as /v1/dlq shows it. It has the fields of
// queue.DeadLetter (cmd/dsyncd converts one into the other), so that the
// answer's JSON is the queue's.
type DeadLetter struct {
	Seq       uint64    // sequence in the dead-letter stream; the handle for Get, Replay and Drop
	Subject   string    // subject of the original message in the events stream
	StreamSeq uint64    // sequence of the original message in the events stream
	MsgID     string    // the original message's id (the event id), if any
	Reason    string    // why it was parked
	Attempts  int       // deliveries the worker made before parking it
	ParkedAt  time.Time // when it was parked
	Data      []byte    // the event, decoded (or as stored: see Encoding)
	Encoding  string    // the stream encoding of Data when it could not be decoded; empty otherwise
}

// DeadLetters is what /v1/dlq does with the dead-letter stream; cmd/dsyncd
// implements it over the queue and the store. A method asked for a dead
// letter that does not exist returns an error matching storage.ErrNotFound.
type DeadLetters interface {
	// List returns the dead letters, oldest first.
	List(ctx context.Context) ([]DeadLetter, error)
	// Get returns one dead letter.
	Get(ctx context.Context, seq uint64) (DeadLetter, error)
	// Replay republishes one to the events stream and deletes it.
	Replay(ctx context.Context, seq uint64) error
	// ReplayAll replays every dead letter, oldest first, and returns those
	// it replayed (before the error, if any).
	ReplayAll(ctx context.Context) ([]uint64, error)
	// Drop deletes one for good and records the drop in the audit trail.
	Drop(ctx context.Context, seq uint64) error
}

// Decisions takes the operator's decisions that change the store (see
// Options.Decisions). Its errors are the store's (storage.ErrNotFound,
// ErrHoldClosed, ...) or, when the decision could not be taken in time,
// one whose Unavailable method reports true (503).
type Decisions interface {
	DecideHold(ctx context.Context, id uint64, approve bool) (*storage.Plan, error)
	Resume(ctx context.Context, org string) (*storage.Plan, error)
	// Mapping makes m the mapping in force, with onUnmap for the group
	// rules it removes (POST /v1/mapping). An error whose Invalid method
	// reports true is the mapping's own fault (400).
	Mapping(ctx context.Context, m mapping.Config, onUnmap string) (*storage.Plan, error)
}

// maxMappingBytes bounds POST /v1/mapping's body: a mapping section in
// JSON, far smaller in practice.
const maxMappingBytes = 4 << 20

// MappingChange is POST /v1/mapping's body: the configuration file's
// mapping section, in JSON, and what happens to the badges of the group
// rules it removes (keep or remove; empty: each rule's on_unmap).
type MappingChange struct {
	Mapping *mapping.Config `json:"mapping"`
	OnUnmap string          `json:"on_unmap,omitempty"`
}

// decodeMappingChange reads and checks POST /v1/mapping's body: a problem
// is a 400 naming it.
func decodeMappingChange(w http.ResponseWriter, r *http.Request) (MappingChange, error) {
	var mc MappingChange
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxMappingBytes))
	dec.DisallowUnknownFields() // a misspelt key would drop rules unnoticed
	if err := dec.Decode(&mc); err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			return mc, &publicError{http.StatusRequestEntityTooLarge, ReasonTooLarge, fmt.Sprintf("the body is larger than %d bytes", maxMappingBytes)}
		}
		return mc, badRequest("the body must be {\"mapping\": {...the configuration's mapping section...}, \"on_unmap\": \"keep\"|\"remove\"}: " + err.Error())
	}
	if dec.More() {
		return mc, badRequest("the body must be one JSON object")
	}
	if mc.Mapping == nil {
		return mc, badRequest("mapping: missing: send the configuration's mapping section as \"mapping\"")
	}
	switch mc.OnUnmap {
	case "", mapping.OnUnmapKeep, mapping.OnUnmapRemove:
	default:
		return mc, badRequest(fmt.Sprintf("on_unmap: %q is not keep or remove", mc.OnUnmap))
	}
	if errs := mc.Mapping.Validate(); len(errs) > 0 {
		msgs := make([]string, len(errs))
		for i, e := range errs {
			msgs[i] = e.Error()
		}
		return mc, badRequest(strings.Join(msgs, "; "))
	}
	return mc, nil
}

// operatorRoutes registers the operator routes, each behind authed.
func (s *Server) operatorRoutes(mux *router) {
	mux.HandleFunc("GET /v1/holds", s.authed(func(w http.ResponseWriter, r *http.Request) {
		hs, err := s.st.Holds(r.URL.Query().Get("all") != "true")
		s.reply(w, r, map[string]any{"holds": nonNil(hs)}, err)
	}))
	decide := func(approve bool) http.HandlerFunc {
		return s.authed(func(w http.ResponseWriter, r *http.Request) {
			id, err := strconv.ParseUint(r.PathValue("id"), 10, 64)
			if err != nil {
				s.fail(w, r, badRequest("hold id must be a number"))
				return
			}
			var plan *storage.Plan
			if s.opts.Decisions != nil && !dryRun(r) {
				plan, err = s.opts.Decisions.DecideHold(r.Context(), id, approve)
			} else {
				plan, err = s.st.DecideHold(id, approve, dryRun(r))
			}
			s.reply(w, r, plan, err)
		})
	}
	mux.HandleFunc("POST /v1/holds/{id}/approve", decide(true))
	mux.HandleFunc("POST /v1/holds/{id}/reject", decide(false))
	mux.HandleFunc("POST /v1/organizations/{org}/resume", s.authed(func(w http.ResponseWriter, r *http.Request) {
		var plan *storage.Plan
		var err error
		if s.opts.Decisions != nil && !dryRun(r) {
			plan, err = s.opts.Decisions.Resume(r.Context(), r.PathValue("org"))
		} else {
			plan, err = s.st.Resume(r.PathValue("org"), dryRun(r))
		}
		s.reply(w, r, plan, err)
	}))
	// A new mapping: through Decisions (the stream: every node adopts it at
	// the same position), the plan of what it did as the answer.
	mux.HandleFunc("POST /v1/mapping", s.authed(func(w http.ResponseWriter, r *http.Request) {
		mc, err := decodeMappingChange(w, r)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		var plan *storage.Plan
		if s.opts.Decisions != nil && !dryRun(r) {
			plan, err = s.opts.Decisions.Mapping(r.Context(), *mc.Mapping, mc.OnUnmap)
		} else {
			plan, err = s.st.ApplyMapping(*mc.Mapping, mc.OnUnmap, dryRun(r))
		}
		s.reply(w, r, plan, err)
	}))
	mux.HandleFunc("GET /v1/backup", s.authed(s.handleBackup))
	// Whether an event was processed (applied, or found stale) within
	// store.processed_retention: dsyncd send waits on it.
	mux.HandleFunc("GET /v1/events/{id}", s.authed(func(w http.ResponseWriter, r *http.Request) {
		ok, err := s.st.Processed(r.PathValue("id"))
		s.reply(w, r, map[string]any{"id": r.PathValue("id"), "processed": ok}, err)
	}))
	// Why a user has, or does not have, a badge: what dsyncd why prints.
	mux.HandleFunc("GET /v1/users/{id}/why/{badge}", s.authed(func(w http.ResponseWriter, r *http.Request) {
		why, err := s.st.Why(r.PathValue("id"), mapping.Badge(r.PathValue("badge")))
		s.reply(w, r, why, err)
	}))
	if s.opts.DeadLetters != nil {
		s.deadLetterRoutes(mux, s.opts.DeadLetters)
	}
	if s.opts.Snapshots != nil {
		s.snapshotRoutes(mux, s.opts.Snapshots)
	}
}

func (s *Server) deadLetterRoutes(mux *router, dlq DeadLetters) {
	seq := func(w http.ResponseWriter, r *http.Request) (uint64, bool) {
		n, err := strconv.ParseUint(r.PathValue("seq"), 10, 64)
		if err != nil {
			s.fail(w, r, badRequest("dead letter id must be a number"))
			return 0, false
		}
		return n, true
	}
	mux.HandleFunc("GET /v1/dlq", s.authed(func(w http.ResponseWriter, r *http.Request) {
		dl, err := dlq.List(r.Context())
		s.reply(w, r, map[string]any{"dead_letters": nonNil(dl)}, err)
	}))
	mux.HandleFunc("GET /v1/dlq/{seq}", s.authed(func(w http.ResponseWriter, r *http.Request) {
		if n, ok := seq(w, r); ok {
			dl, err := dlq.Get(r.Context(), n)
			s.reply(w, r, dl, err)
		}
	}))
	mux.HandleFunc("POST /v1/dlq/{seq}/replay", s.authed(func(w http.ResponseWriter, r *http.Request) {
		if n, ok := seq(w, r); ok {
			s.reply(w, r, map[string]any{"replayed": []uint64{n}}, dlq.Replay(r.Context(), n))
		}
	}))
	mux.HandleFunc("POST /v1/dlq/replay", s.authed(func(w http.ResponseWriter, r *http.Request) {
		done, err := dlq.ReplayAll(r.Context())
		s.reply(w, r, map[string]any{"replayed": nonNil(done)}, err)
	}))
	mux.HandleFunc("DELETE /v1/dlq/{seq}", s.authed(func(w http.ResponseWriter, r *http.Request) {
		if n, ok := seq(w, r); ok {
			s.reply(w, r, map[string]any{"dropped": n}, dlq.Drop(r.Context(), n))
		}
	}))
}

func dryRun(r *http.Request) bool { return r.URL.Query().Get("dry_run") == "true" }

// handleBackup streams a consistent copy of the store (one bbolt read
// transaction) while the daemon keeps serving. A failure after the first
// byte aborts the response, so that the client sees a broken transfer rather
// than a short file with status 200.
func (s *Server) handleBackup(w http.ResponseWriter, r *http.Request) {
	// A large store over a slow link outlasts http.write_timeout.
	_ = http.NewResponseController(w).SetWriteDeadline(time.Time{})
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Disposition", `attachment; filename="dsyncd.db"`)
	n, err := s.st.BackupTo(w)
	switch {
	case err == nil:
		s.log.Info("backup streamed", zap.Int64("bytes", n), zap.String("remote", r.RemoteAddr))
	case n == 0:
		s.fail(w, r, err)
	default:
		s.log.Error("backup aborted", zap.Int64("bytes_sent", n), zap.Error(err))
		panic(http.ErrAbortHandler)
	}
}

// publicError is an answer a handler chose, with a code and a message for the client.
type publicError struct {
	status int
	code   string
	msg    string
}

func (e *publicError) Error() string { return e.msg }

func badRequest(msg string) error { return &publicError{http.StatusBadRequest, CodeBadRequest, msg} }

func notFound(msg string) error { return &publicError{http.StatusNotFound, CodeNotFound, msg} }

// The codes of /v1's error answers ({"error":{"code","message"}}): one per
// status errorStatus answers, and the guard's refusals (authed). The
// webhook's refusals carry their reason (Reasons) as code.
const (
	CodeBadRequest  = "bad_request"
	CodeNotFound    = "not_found"
	CodeConflict    = "conflict"
	CodeInternal    = "internal"
	CodeForeignHost = "foreign_host"
	CodeToken       = "unauthorized"
	CodeContentType = ReasonContentType
	// CodeUnavailable: a decision could not be taken now (the stream
	// unreachable, or not yet applied on this node), or a receiver-only
	// node has no store to answer from (503).
	CodeUnavailable = "unavailable"
)

// errorStatus is the one mapping of a /v1 handler's error to its answer:
// what the handler chose (publicError); an error whose Invalid method
// reports true (400: the request's own content) or whose Unavailable
// method does (503); the store's (and the dead letters')
// sentinel errors, whose text names only what the client asked for; and for
// anything else 500 with a generic message, never the error's text (paths,
// addresses, internals), which the caller logs instead.
func errorStatus(err error) (status int, code, msg string) {
	var pe *publicError
	var un interface{ Unavailable() bool }
	var inv interface{ Invalid() bool }
	switch {
	case errors.As(err, &pe):
		return pe.status, pe.code, pe.msg
	case errors.As(err, &inv) && inv.Invalid():
		return http.StatusBadRequest, CodeBadRequest, err.Error()
	case errors.As(err, &un) && un.Unavailable():
		return http.StatusServiceUnavailable, CodeUnavailable, err.Error()
	case errors.Is(err, storage.ErrNotFound):
		return http.StatusNotFound, CodeNotFound, err.Error()
	case errors.Is(err, storage.ErrHoldClosed), errors.Is(err, storage.ErrNotPaused), errors.Is(err, storage.ErrUnmapChoice),
		errors.Is(err, storage.ErrNotRejectable):
		return http.StatusConflict, CodeConflict, err.Error()
	}
	return http.StatusInternalServerError, CodeInternal, "internal error"
}

// fail answers a /v1 request with err's status and public message; an
// internal error is logged here, once.
func (s *Server) fail(w http.ResponseWriter, r *http.Request, err error) {
	status, code, msg := errorStatus(err)
	if status == http.StatusInternalServerError {
		s.log.Error("api request failed", zap.String("method", r.Method), zap.String("path", r.URL.Path), zap.Error(err))
	}
	writeError(w, status, code, msg)
}

// ErrorBody is every error answer of the server, /v1 and the webhook:
// {"error":{"code","message"}}. Code is a stable word a program may test
// (not_found, bad_request, conflict, internal, unauthorized, foreign_host,
// and the webhook's refusal reasons); Message is for humans.
type ErrorBody struct {
	Error ErrorDetail `json:"error"`
}

// ErrorDetail is the inside of ErrorBody.
type ErrorDetail struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// writeError answers status with the one error shape.
func writeError(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, ErrorBody{ErrorDetail{Code: code, Message: msg}})
}

// reply answers an operator route: v on success, else as fail.
func (s *Server) reply(w http.ResponseWriter, r *http.Request, v any, err error) {
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeIndented(w, http.StatusOK, v)
}

// writeIndented is writeJSON indented, as the operator routes have always answered.
func writeIndented(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}
