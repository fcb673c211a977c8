package main

import (
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"time"

	"go.uber.org/zap"

	"github.com/dsyncd/dsyncd/queue"
	"github.com/dsyncd/dsyncd/storage"
)

// operatorRoutes: holds, organisation resume, dead letters.
func (d *daemon) operatorRoutes(mux *http.ServeMux, authed func(http.HandlerFunc) http.HandlerFunc) {
	mux.HandleFunc("GET /v1/holds", authed(func(w http.ResponseWriter, r *http.Request) {
		hs, err := d.st.Holds(r.URL.Query().Get("all") != "true")
		d.reply(w, map[string]any{"holds": nonNil(hs)}, err)
	}))
	decide := func(approve bool) http.HandlerFunc {
		return authed(func(w http.ResponseWriter, r *http.Request) {
			id, err := strconv.ParseUint(r.PathValue("id"), 10, 64)
			if err != nil {
				writeError(w, http.StatusBadRequest, "hold id must be a number")
				return
			}
			plan, err := d.st.DecideHold(id, approve, r.URL.Query().Get("dry_run") == "true")
			d.reply(w, plan, err)
		})
	}
	mux.HandleFunc("POST /v1/holds/{id}/approve", decide(true))
	mux.HandleFunc("POST /v1/holds/{id}/reject", decide(false))
	mux.HandleFunc("POST /v1/organizations/{org}/resume", authed(func(w http.ResponseWriter, r *http.Request) {
		plan, err := d.st.Resume(r.PathValue("org"), r.URL.Query().Get("dry_run") == "true")
		d.reply(w, plan, err)
	}))
	mux.HandleFunc("GET /v1/dlq", authed(func(w http.ResponseWriter, r *http.Request) {
		dl, err := d.q.DeadLetters(r.Context())
		d.reply(w, map[string]any{"dead_letters": nonNil(dl)}, err)
	}))
	seq := func(w http.ResponseWriter, r *http.Request) (uint64, bool) {
		n, err := strconv.ParseUint(r.PathValue("seq"), 10, 64)
		if err != nil {
			writeError(w, http.StatusBadRequest, "dead letter id must be a number")
			return 0, false
		}
		return n, true
	}
	mux.HandleFunc("GET /v1/dlq/{seq}", authed(func(w http.ResponseWriter, r *http.Request) {
		if n, ok := seq(w, r); ok {
			dl, err := d.q.DeadLetter(r.Context(), n)
			d.reply(w, dl, err)
		}
	}))
	mux.HandleFunc("POST /v1/dlq/{seq}/replay", authed(func(w http.ResponseWriter, r *http.Request) {
		if n, ok := seq(w, r); ok {
			d.reply(w, map[string]any{"replayed": []uint64{n}}, d.q.ReplayDeadLetter(r.Context(), n))
		}
	}))
	mux.HandleFunc("POST /v1/dlq/replay", authed(func(w http.ResponseWriter, r *http.Request) {
		dl, err := d.q.DeadLetters(r.Context())
		if err != nil {
			d.reply(w, nil, err)
			return
		}
		done := []uint64{}
		for _, l := range dl {
			if err := d.q.ReplayDeadLetter(r.Context(), l.Seq); err != nil {
				d.reply(w, nil, err)
				return
			}
			done = append(done, l.Seq)
		}
		d.reply(w, map[string]any{"replayed": done}, nil)
	}))
	mux.HandleFunc("DELETE /v1/dlq/{seq}", authed(func(w http.ResponseWriter, r *http.Request) {
		n, ok := seq(w, r)
		if !ok {
			return
		}
		dl, err := d.q.DeadLetter(r.Context(), n)
		if err == nil {
			err = d.q.DropDeadLetter(r.Context(), n)
		}
		if err == nil {
			err = d.st.RecordAudit(dropAudit(dl.MsgID, dl.Subject, dl.Reason))
		}
		d.reply(w, map[string]any{"dropped": n}, err)
	}))
	mux.HandleFunc("GET /v1/backup", authed(d.handleBackup))
	// Whether an event was processed (applied, or found stale) within
	// store.processed_retention: dsyncd send waits on it.
	mux.HandleFunc("GET /v1/events/{id}", authed(func(w http.ResponseWriter, r *http.Request) {
		ok, err := d.st.Processed(r.PathValue("id"))
		d.reply(w, map[string]any{"id": r.PathValue("id"), "processed": ok}, err)
	}))
}

// handleBackup streams a consistent copy of the store (one bbolt read
// transaction) while the daemon keeps serving. A failure after the first
// byte aborts the response, so that the client sees a broken transfer rather
// than a short file with status 200.
func (d *daemon) handleBackup(w http.ResponseWriter, r *http.Request) {
	// A large store over a slow link outlasts http.write_timeout.
	_ = http.NewResponseController(w).SetWriteDeadline(time.Time{})
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Disposition", `attachment; filename="dsyncd.db"`)
	n, err := d.st.BackupTo(w)
	switch {
	case err == nil:
		d.log.Info("backup streamed", zap.Int64("bytes", n), zap.String("remote", r.RemoteAddr))
	case n == 0:
		d.reply(w, nil, err)
	default:
		d.log.Error("backup aborted", zap.Int64("bytes_sent", n), zap.Error(err))
		panic(http.ErrAbortHandler)
	}
}

func dropAudit(msgID, subject, reason string) storage.AuditEntry {
	return storage.AuditEntry{EventID: msgID, Action: storage.ActionDrop,
		Reason: "dead letter dropped by an operator (subject " + subject + "; parked because: " + reason + ")"}
}

func (d *daemon) reply(w http.ResponseWriter, v any, err error) {
	switch {
	case err == nil:
		writeJSON(w, http.StatusOK, v)
	case errors.Is(err, storage.ErrNotFound), errors.Is(err, queue.ErrNotFound):
		writeError(w, http.StatusNotFound, err.Error())
	case errors.Is(err, storage.ErrHoldClosed), errors.Is(err, storage.ErrNotPaused), errors.Is(err, storage.ErrUnmapChoice):
		writeError(w, http.StatusConflict, err.Error())
	default:
		d.log.Error("operator request failed", zap.Error(err))
		writeError(w, http.StatusInternalServerError, err.Error())
	}
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]string{"error": msg})
}
