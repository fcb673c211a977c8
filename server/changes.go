package server

import (
	"bufio"
	"errors"
	"net/http"
	"strconv"
	"time"

	"go.uber.org/zap"

	"github.com/dsyncd/dsyncd/storage"
)

// HeaderChangeSeq carries, on /v1/export and /v1/changes, the seq of the
// last change record the answer reflects (for /v1/changes, the feed's last
// when it answered).
const HeaderChangeSeq = "Dsyncd-Change-Seq"

// CodeGone is the error code of a 410: the change feed no longer has (or
// never had) the records after the position asked.
const CodeGone = "gone"

// The limits of GET /v1/changes.
const (
	DefaultChangesLimit = 100
	MaxChangesLimit     = 1000
	MaxChangesWait      = 60 * time.Second
)

// handleChanges is the change feed's long-poll: GET
// /v1/changes?after=SEQ&limit=N&wait=DURATION answers {"changes":[…],
// "next":SEQ} at once when there are changes after SEQ, else when the first
// is committed or wait (at most 60s) has passed, with none. It is woken by
// the store after a commit, never by polling.
func (s *Server) handleChanges(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	var after uint64
	if v := q.Get("after"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			s.fail(w, r, badRequest("after: want a change's seq (0: from the start)"))
			return
		}
		after = n
	}
	limit := DefaultChangesLimit
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > MaxChangesLimit {
			s.fail(w, r, badRequest("limit: want a number from 1 to 1000"))
			return
		}
		limit = n
	}
	var wait time.Duration
	if v := q.Get("wait"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			if n, nerr := strconv.Atoi(v); nerr == nil {
				d, err = time.Duration(n)*time.Second, nil
			}
		}
		if err != nil || d < 0 {
			s.fail(w, r, badRequest("wait: want a duration such as 30s (at most 60s)"))
			return
		}
		wait = min(d, MaxChangesWait)
	}
	if wait > 0 {
		// The write timeout is for ordinary answers; a long-poll's
		// answer may come wait later.
		_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(wait + s.opts.WriteTimeout))
	}
	var timeout <-chan time.Time
	if wait > 0 {
		timer := time.NewTimer(wait)
		defer timer.Stop()
		timeout = timer.C
	}
	for {
		woken := s.st.ChangesNotify()
		page, err := s.st.Changes(after, limit)
		if err != nil {
			s.failChanges(w, r, err)
			return
		}
		if len(page.Changes) > 0 || wait == 0 {
			s.writeChanges(w, page)
			return
		}
		select {
		case <-woken:
		case <-timeout:
			wait = 0
		case <-s.quit:
			wait = 0
		case <-r.Context().Done():
			return
		}
	}
}

func (s *Server) failChanges(w http.ResponseWriter, r *http.Request, err error) {
	switch {
	case errors.Is(err, storage.ErrChangesGone):
		err = &publicError{http.StatusGone, CodeGone, err.Error()}
	case errors.Is(err, storage.ErrChangesOff):
		err = &publicError{http.StatusNotFound, CodeNotFound, err.Error()}
	}
	s.fail(w, r, err)
}

// writeChanges writes the page's records as stored, without decoding them.
func (s *Server) writeChanges(w http.ResponseWriter, page *storage.ChangesPage) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set(HeaderChangeSeq, strconv.FormatUint(page.Last, 10))
	w.WriteHeader(http.StatusOK)
	bw := bufio.NewWriterSize(w, 16<<10)
	_, _ = bw.WriteString(`{"changes":[`)
	for i, c := range page.Changes {
		if i > 0 {
			_ = bw.WriteByte(',')
		}
		_, _ = bw.Write(c.JSON)
	}
	_, _ = bw.WriteString(`],"next":`)
	_, _ = bw.WriteString(strconv.FormatUint(page.Next, 10))
	_, _ = bw.WriteString("}\n")
	if err := bw.Flush(); err != nil {
		s.log.Debug("changes: the client left before the answer", zap.Error(err))
	}
}
