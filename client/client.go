package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"iter"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// HeaderChangeSeq carries the feed's seq on /v1/export and /v1/changes.
const HeaderChangeSeq = "Dsyncd-Change-Seq"

// Client speaks to a dsyncd's /v1 API. It is safe for concurrent use.
type Client struct {
	base       string
	token      string
	hc         *http.Client
	wait       time.Duration
	batch      int
	minBackoff time.Duration
	maxBackoff time.Duration
	onRetry    func(err error, wait time.Duration)
}

// Option configures a Client.
type Option func(*Client)

// WithHTTPClient sends the requests with hc instead of a client of its
// own. Give it no Timeout shorter than the long-poll's wait.
func WithHTTPClient(hc *http.Client) Option { return func(c *Client) { c.hc = hc } }

// WithWait sets how long each of Follow's requests waits for a change
// (default 30s, at most 60s: the server cuts longer).
func WithWait(d time.Duration) Option { return func(c *Client) { c.wait = d } }

// WithBatch sets how many records each of Follow's requests asks for
// (default 1000, the server's most).
func WithBatch(n int) Option { return func(c *Client) { c.batch = n } }

// WithBackoff bounds Follow's waits between retries after a transport
// error or a 5xx: the first is about min, each next doubles, up to max
// (defaults 500ms and 30s), each with jitter.
func WithBackoff(min, max time.Duration) Option {
	return func(c *Client) { c.minBackoff, c.maxBackoff = min, max }
}

// WithRetryHook calls fn before each of Follow's retries, with the error
// and the wait, e.g. to log it.
func WithRetryHook(fn func(err error, wait time.Duration)) Option {
	return func(c *Client) { c.onRetry = fn }
}

// New is a client of the dsyncd at baseURL (e.g. "http://127.0.0.1:8080")
// sending token as its bearer token (api.token, or the file
// <data_dir>/api.token).
func New(baseURL, token string, opts ...Option) *Client {
	c := &Client{
		base:       strings.TrimRight(baseURL, "/"),
		token:      strings.TrimSpace(token),
		wait:       30 * time.Second,
		batch:      1000,
		minBackoff: 500 * time.Millisecond,
		maxBackoff: 30 * time.Second,
	}
	for _, o := range opts {
		o(c)
	}
	if c.hc == nil {
		c.hc = &http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone()}
	}
	if c.batch <= 0 || c.batch > 1000 {
		c.batch = 1000
	}
	if c.minBackoff <= 0 {
		c.minBackoff = 500 * time.Millisecond
	}
	if c.maxBackoff < c.minBackoff {
		c.maxBackoff = c.minBackoff
	}
	return c
}

// Errors that an *Error matches with errors.Is.
var (
	ErrNotFound     = errors.New("dsyncd: not found")    // 404
	ErrGone         = errors.New("dsyncd: gone")         // 410: resync from an export
	ErrUnauthorized = errors.New("dsyncd: unauthorized") // 401: a wrong or missing token
	ErrBadRequest   = errors.New("dsyncd: bad request")  // 400
)

// Error is an error answer of the API: {"error":{"code","message"}}.
type Error struct {
	Method, Path string
	Status       int
	Code         string // a stable word: not_found, gone, bad_request, unauthorized, …
	Message      string // for people
}

func (e *Error) Error() string {
	return fmt.Sprintf("dsyncd: %s %s: %d %s: %s", e.Method, e.Path, e.Status, e.Code, e.Message)
}

// Is matches ErrNotFound, ErrGone, ErrUnauthorized and ErrBadRequest by status.
func (e *Error) Is(target error) bool {
	switch target {
	case ErrNotFound:
		return e.Status == http.StatusNotFound
	case ErrGone:
		return e.Status == http.StatusGone
	case ErrUnauthorized:
		return e.Status == http.StatusUnauthorized
	case ErrBadRequest:
		return e.Status == http.StatusBadRequest
	}
	return false
}

// Temporary reports whether asking again later may succeed: a 5xx or a 429.
func (e *Error) Temporary() bool {
	return e.Status >= 500 || e.Status == http.StatusTooManyRequests
}

// maxErrorBody bounds how much of an error answer is read.
const maxErrorBody = 64 << 10

// get sends GET path?query and returns the response of a 2xx (the caller
// closes its body) or an *Error.
func (c *Client) get(ctx context.Context, path string, query url.Values) (*http.Response, error) {
	u := c.base + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, fmt.Errorf("dsyncd: %w", err)
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "dsyncd-client-go")
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("dsyncd: GET %s: %w", path, err)
	}
	if resp.StatusCode/100 == 2 {
		return resp, nil
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	e := &Error{Method: http.MethodGet, Path: path, Status: resp.StatusCode}
	var body struct {
		Error json.RawMessage `json:"error"`
	}
	if json.Unmarshal(b, &body) == nil && len(body.Error) > 0 {
		var shaped struct{ Code, Message string }
		if json.Unmarshal(body.Error, &shaped) == nil {
			e.Code, e.Message = shaped.Code, shaped.Message
		} else {
			_ = json.Unmarshal(body.Error, &e.Message) // an older {"error": "…"}
		}
	}
	if e.Message == "" {
		e.Message = strings.TrimSpace(string(b))
		if e.Message == "" {
			e.Message = http.StatusText(resp.StatusCode)
		}
	}
	return nil, e
}

// getJSON decodes the answer of GET path?query into out.
func (c *Client) getJSON(ctx context.Context, path string, query url.Values, out any) (http.Header, error) {
	resp, err := c.get(ctx, path, query)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return nil, fmt.Errorf("dsyncd: GET %s: decoding the answer: %w", path, err)
	}
	return resp.Header, nil
}

// User returns the user with id (a deleted one too, Deleted set), or an
// error matching ErrNotFound.
func (c *Client) User(ctx context.Context, id string) (*User, error) {
	var u User
	if _, err := c.getJSON(ctx, "/v1/users/"+url.PathEscape(id), nil, &u); err != nil {
		return nil, err
	}
	return &u, nil
}

// UsersByEmail returns the listed users with email, compared
// case-insensitively (one address may be a user of several directories);
// an error matching ErrNotFound when there is none.
func (c *Client) UsersByEmail(ctx context.Context, email string) ([]User, error) {
	return c.users(ctx, url.Values{"email": {email}})
}

// UsersByIdpID returns the listed users with the IdP id idpID, within
// directoryID if it is not empty (an IdP id is unique only within its
// directory); an error matching ErrNotFound when there is none.
func (c *Client) UsersByIdpID(ctx context.Context, idpID, directoryID string) ([]User, error) {
	q := url.Values{"idp_id": {idpID}}
	if directoryID != "" {
		q.Set("directory_id", directoryID)
	}
	return c.users(ctx, q)
}

func (c *Client) users(ctx context.Context, q url.Values) ([]User, error) {
	var out struct {
		Users []User `json:"users"`
	}
	if _, err := c.getJSON(ctx, "/v1/users", q, &out); err != nil {
		return nil, err
	}
	return out.Users, nil
}

// Organization returns the organisation org at a glance, or an error
// matching ErrNotFound.
func (c *Client) Organization(ctx context.Context, org string) (*Organization, error) {
	var o Organization
	if _, err := c.getJSON(ctx, "/v1/organizations/"+url.PathEscape(org), nil, &o); err != nil {
		return nil, err
	}
	return &o, nil
}

// OrganizationUsersPage returns one page of org's listed users, sorted by
// id, from cursor ("" for the first page).
func (c *Client) OrganizationUsersPage(ctx context.Context, org string, f UserFilter, cursor string) (*UserPage, error) {
	q := url.Values{}
	if f.Badge != "" {
		q.Set("badge", f.Badge)
	}
	if f.State != "" {
		q.Set("state", f.State)
	}
	if f.Limit > 0 {
		q.Set("limit", strconv.Itoa(f.Limit))
	}
	if cursor != "" {
		q.Set("cursor", cursor)
	}
	var p UserPage
	if _, err := c.getJSON(ctx, "/v1/organizations/"+url.PathEscape(org)+"/users", q, &p); err != nil {
		return nil, err
	}
	return &p, nil
}

// OrganizationUsers iterates over org's listed users, a page at a time.
// A user listed from the first page to the last is seen exactly once,
// whatever changes meanwhile. An error ends the iteration, yielded once.
func (c *Client) OrganizationUsers(ctx context.Context, org string, f UserFilter) iter.Seq2[User, error] {
	return func(yield func(User, error) bool) {
		cursor := ""
		for {
			p, err := c.OrganizationUsersPage(ctx, org, f, cursor)
			if err != nil {
				yield(User{}, err)
				return
			}
			for _, u := range p.Users {
				if !yield(u, nil) {
					return
				}
			}
			if p.NextCursor == "" {
				return
			}
			cursor = p.NextCursor
		}
	}
}

// Export returns the canonical snapshot, with the ChangeSeq it reflects.
// It holds the whole snapshot in memory.
func (c *Client) Export(ctx context.Context) (*Export, error) {
	var e Export
	if _, err := c.getJSON(ctx, "/v1/export", nil, &e); err != nil {
		return nil, err
	}
	return &e, nil
}

// Changes asks once for the change records after seq after: at most limit
// (0: the server's default, 100), waiting up to wait (at most 60s) when
// there are none yet. A position the feed no longer keeps is an error
// matching ErrGone: resync from Export.
func (c *Client) Changes(ctx context.Context, after uint64, limit int, wait time.Duration) (*ChangesPage, error) {
	q := url.Values{"after": {strconv.FormatUint(after, 10)}}
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	if wait > 0 {
		q.Set("wait", wait.String())
	}
	var p ChangesPage
	h, err := c.getJSON(ctx, "/v1/changes", q, &p)
	if err != nil {
		return nil, err
	}
	p.Last, _ = strconv.ParseUint(h.Get(HeaderChangeSeq), 10, 64)
	return &p, nil
}
