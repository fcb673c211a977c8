package main

// apiClient: the one client of a running dsyncd's /v1 API, the online backend.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/dsyncd/dsyncd/config"
	"github.com/dsyncd/dsyncd/mapping"
	"github.com/dsyncd/dsyncd/server"
	"github.com/dsyncd/dsyncd/storage"
)

// apiClient is a backend speaking to a running serve's /v1 API.
type apiClient struct {
	base, token string
	tokenNote   string // why token is empty (cliToken), for a 401's error
	refused     bool   // a request found nothing listening
	answered    bool   // a request got an HTTP answer
}

// newAPIClient is the client of the API at server, with the token the CLI
// sends (cliToken).
func newAPIClient(cfg config.Config, server string) *apiClient {
	token, note := cliToken(cfg)
	return &apiClient{base: strings.TrimRight(server, "/"), token: token, tokenNote: note}
}

// apiError is an HTTP error answer of the API.
type apiError struct {
	method, path string
	status       int
	msg          string
}

func (e *apiError) Error() string {
	return fmt.Sprintf("%s %s: %s (HTTP %d)", e.method, e.path, e.msg, e.status)
}

// Is makes a 404 storage.ErrNotFound, as the offline backend returns it.
func (e *apiError) Is(target error) bool {
	return e.status == http.StatusNotFound && target == storage.ErrNotFound
}

func (c *apiClient) online() bool { return true }

// send performs one request; the caller closes the body of a 2xx answer.
func (c *apiClient) send(ctx context.Context, method, path string) (*http.Response, error) {
	return c.sendBody(ctx, method, path, nil)
}

// sendBody is send with a JSON body (nil: none).
func (c *apiClient) sendBody(ctx context.Context, method, path string, in []byte) (*http.Response, error) {
	var rd io.Reader
	if in != nil {
		rd = bytes.NewReader(in)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return nil, err
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	if method != http.MethodGet && method != http.MethodHead {
		req.Header.Set("Content-Type", "application/json") // what /v1 requires of a change
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		if errors.Is(err, syscall.ECONNREFUSED) {
			c.refused = true
			return nil, fmt.Errorf("%s %s: connection refused", method, c.base+path)
		}
		return nil, err
	}
	c.answered = true
	if resp.StatusCode/100 == 2 {
		return resp, nil
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var e server.ErrorBody // every error answer: {"error":{"code","message"}}
	msg := strings.TrimSpace(string(body))
	if json.Unmarshal(body, &e) == nil && e.Error.Message != "" {
		msg = e.Error.Message
	}
	if resp.StatusCode == http.StatusUnauthorized && c.tokenNote != "" {
		msg += " (" + c.tokenNote + ")"
	}
	return nil, &apiError{method: method, path: path, status: resp.StatusCode, msg: msg}
}

// call performs a request with a 30s limit and decodes the JSON answer into out.
func (c *apiClient) call(ctx context.Context, method, path string, out any) error {
	return c.callBody(ctx, 30*time.Second, method, path, nil, out)
}

// callBody is call with a JSON body (nil: none) and a time limit.
func (c *apiClient) callBody(ctx context.Context, limit time.Duration, method, path string, body []byte, out any) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	resp, err := c.sendBody(ctx, method, path, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		_, err = io.Copy(io.Discard, resp.Body)
		return err
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("%s %s: decode answer: %w", method, path, err)
	}
	return nil
}

// read performs a GET without a time limit (stores and snapshots can be
// large) and returns the answer.
func (c *apiClient) read(ctx context.Context, path string) ([]byte, error) {
	resp, err := c.send(ctx, http.MethodGet, path)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", path, err)
	}
	return b, nil
}

func (c *apiClient) holds(ctx context.Context, all bool) ([]storage.Hold, error) {
	var out struct {
		Holds []storage.Hold `json:"holds"`
	}
	path := "/v1/holds"
	if all {
		path += "?all=true"
	}
	return out.Holds, c.call(ctx, http.MethodGet, path, &out)
}

func (c *apiClient) audit(ctx context.Context, f storage.AuditFilter) ([]storage.AuditEntry, error) {
	q := url.Values{}
	for k, v := range map[string]string{"user": f.UserID, "org": f.OrganizationID, "badge": string(f.Badge)} {
		if v != "" {
			q.Set(k, v)
		}
	}
	if !f.Since.IsZero() {
		q.Set("since", f.Since.UTC().Format(time.RFC3339))
	}
	if f.Limit > 0 {
		q.Set("limit", strconv.Itoa(f.Limit))
	}
	if f.After > 0 {
		q.Set("after", strconv.FormatUint(f.After, 10))
	}
	path := "/v1/audit"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	var out struct {
		Entries []storage.AuditEntry `json:"entries"`
	}
	if err := c.call(ctx, http.MethodGet, path, &out); err != nil {
		return nil, err
	}
	if f.Limit > 0 && len(out.Entries) > f.Limit { // a daemon older than limit= sent them all
		if f.After > 0 {
			out.Entries = out.Entries[:f.Limit]
		} else {
			out.Entries = out.Entries[len(out.Entries)-f.Limit:]
		}
	}
	return out.Entries, nil
}

func (c *apiClient) why(ctx context.Context, user, badge string) (*storage.Why, error) {
	var w storage.Why
	if err := c.call(ctx, http.MethodGet, "/v1/users/"+url.PathEscape(user)+"/why/"+url.PathEscape(badge), &w); err != nil {
		return nil, err
	}
	return &w, nil
}

func (c *apiClient) resume(ctx context.Context, org string, dryRun bool) (*storage.Plan, error) {
	path := "/v1/organizations/" + url.PathEscape(org) + "/resume"
	if dryRun {
		path += "?dry_run=true"
	}
	var p storage.Plan
	if err := c.call(ctx, http.MethodPost, path, &p); err != nil {
		return nil, err
	}
	return &p, nil
}

// applyMapping makes m the mapping in force on the running daemon and,
// through the stream, on every node of its cluster (POST /v1/mapping). The
// daemon answers once it applied it, within controlWait: the limit here is
// longer, so that its own answer (503 when it took longer) arrives.
// With dryRun it previews the change on the daemon's store.
func (c *apiClient) applyMapping(ctx context.Context, m mapping.Config, onUnmap string, dryRun bool) (*storage.Plan, error) {
	body, err := json.Marshal(server.MappingChange{Mapping: &m, OnUnmap: onUnmap})
	if err != nil {
		return nil, err
	}
	path := "/v1/mapping"
	if dryRun {
		path += "?dry_run=true"
	}
	var p storage.Plan
	if err := c.callBody(ctx, controlWait+15*time.Second, http.MethodPost, path, body, &p); err != nil {
		return nil, err
	}
	return &p, nil
}

// processed reports whether the event id was processed (GET /v1/events/{id}).
func (c *apiClient) processed(ctx context.Context, id string) (bool, error) {
	var out struct {
		Processed bool `json:"processed"`
	}
	return out.Processed, c.call(ctx, http.MethodGet, "/v1/events/"+url.PathEscape(id), &out)
}

func (c *apiClient) List(ctx context.Context) ([]server.DeadLetter, error) {
	var out struct {
		DeadLetters []server.DeadLetter `json:"dead_letters"`
	}
	return out.DeadLetters, c.call(ctx, http.MethodGet, "/v1/dlq", &out)
}

func (c *apiClient) Get(ctx context.Context, seq uint64) (server.DeadLetter, error) {
	var dl server.DeadLetter
	return dl, c.call(ctx, http.MethodGet, "/v1/dlq/"+strconv.FormatUint(seq, 10), &dl)
}

func (c *apiClient) Replay(ctx context.Context, seq uint64) error {
	return c.call(ctx, http.MethodPost, "/v1/dlq/"+strconv.FormatUint(seq, 10)+"/replay", nil)
}

func (c *apiClient) ReplayAll(ctx context.Context) ([]uint64, error) {
	var out struct {
		Replayed []uint64 `json:"replayed"`
	}
	return out.Replayed, c.call(ctx, http.MethodPost, "/v1/dlq/replay", &out)
}

func (c *apiClient) Drop(ctx context.Context, seq uint64) error {
	return c.call(ctx, http.MethodDelete, "/v1/dlq/"+strconv.FormatUint(seq, 10), nil)
}

// backup streams GET /v1/backup to w (no overall time limit: stores can be large).
func (c *apiClient) backup(ctx context.Context, w io.Writer) (int64, error) {
	resp, err := c.send(ctx, http.MethodGet, "/v1/backup")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	n, err := io.Copy(w, resp.Body)
	if err != nil {
		return n, fmt.Errorf("GET /v1/backup: %w", err)
	}
	return n, nil
}

// export streams GET /v1/export to w as the canonical snapshot (without the
// change_seq the API puts first); a body cut short (the daemon failed half
// way) is an error.
func (c *apiClient) export(ctx context.Context, w io.Writer) error {
	resp, err := c.send(ctx, http.MethodGet, "/v1/export")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	head, _ := br.Peek(64)
	if canon := storage.CanonicalExport(head); len(canon) < len(head) {
		// Skip the opening brace and change_seq, then write the brace again.
		if _, err := br.Discard(len(head) - len(canon) + 1); err != nil {
			return fmt.Errorf("GET /v1/export: %w", err)
		}
		if _, err := io.WriteString(w, "{"); err != nil {
			return err
		}
	}
	if _, err := io.Copy(w, br); err != nil {
		return fmt.Errorf("GET /v1/export: %w", err)
	}
	return nil
}
