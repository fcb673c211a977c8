package reconcile

import (
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
	"sync"
	"time"

	"github.com/workos/workos-go/v4/pkg/directorysync"
	"github.com/workos/workos-go/v4/pkg/workos_errors"
	"go.uber.org/zap"

	"github.com/dsyncd/dsyncd/events"
)

// Defaults of ClientOptions.
const (
	DefaultEndpoint       = "https://api.workos.com"
	DefaultRequestTimeout = 10 * time.Second
	DefaultMinBackoff     = 500 * time.Millisecond
	DefaultMaxBackoff     = 30 * time.Second
	DefaultMaxAttempts    = 8
	DefaultMaxRetryAfter  = 60 * time.Second
	DefaultPageSize       = 100
	// DefaultUsersPerSecond is WorkOS's limit on /directory_users, per directory.
	DefaultUsersPerSecond = 4
)

// maxBody bounds one API response held in memory.
const maxBody = 64 << 20

// ClientOptions configures access to the WorkOS API. Zero values take the
// defaults above.
type ClientOptions struct {
	// APIKey is the WorkOS secret key (sk_...). It is sent as a bearer token
	// and never logged.
	APIKey string
	// Endpoint is the API's base URL. Default https://api.workos.com.
	Endpoint string
	// RequestTimeout bounds one attempt of one request, body included.
	RequestTimeout time.Duration
	// MinBackoff is the first wait after a 5xx, a timeout or a network error;
	// it doubles at each attempt up to MaxBackoff.
	MinBackoff time.Duration
	MaxBackoff time.Duration
	// MaxRetryAfter is the longest wait a 429's Retry-After may ask for:
	// a longer one ends the request with the 429 (retrying sooner than asked
	// would be refused again), and the run that made it fails.
	MaxRetryAfter time.Duration
	// MaxAttempts is how many times one request is tried before its error is
	// returned.
	MaxAttempts int
	// PageSize is the limit asked for on every list request, 1 to 100.
	PageSize int
	// UsersPerSecond caps requests to /directory_users per directory.
	UsersPerSecond float64
	// Transport is the underlying HTTP transport. Nil means http.DefaultTransport.
	Transport http.RoundTripper
}

func (o *ClientOptions) fill() {
	if o.Endpoint == "" {
		o.Endpoint = DefaultEndpoint
	}
	o.Endpoint = strings.TrimRight(o.Endpoint, "/")
	if o.RequestTimeout <= 0 {
		o.RequestTimeout = DefaultRequestTimeout
	}
	if o.MinBackoff <= 0 {
		o.MinBackoff = DefaultMinBackoff
	}
	if o.MaxBackoff <= 0 {
		o.MaxBackoff = DefaultMaxBackoff
	}
	if o.MaxBackoff < o.MinBackoff {
		o.MaxBackoff = o.MinBackoff
	}
	if o.MaxRetryAfter <= 0 {
		o.MaxRetryAfter = DefaultMaxRetryAfter
	}
	if o.MaxAttempts <= 0 {
		o.MaxAttempts = DefaultMaxAttempts
	}
	if o.PageSize <= 0 || o.PageSize > 100 {
		o.PageSize = DefaultPageSize
	}
	if o.UsersPerSecond <= 0 {
		o.UsersPerSecond = DefaultUsersPerSecond
	}
	if o.Transport == nil {
		o.Transport = http.DefaultTransport
	}
}

// APIError is a response of the WorkOS API that is not a success, after
// retries. It carries no request header, so no API key.
type APIError struct {
	Method, Path string
	Status       int
	Message      string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("workos %s %s: %d %s: %s", e.Method, e.Path, e.Status, http.StatusText(e.Status), e.Message)
}

// Client reads the WorkOS Events and Directory Sync APIs with retries,
// backoff and the per-directory rate limit. It is safe for concurrent use.
//
// Directories and groups are read through workos-go's directorysync client
// (whose HTTP client is this Client's retrying one). Events and directory
// users are read over net/http and decoded here, because workos-go's types
// lose what dsyncd needs: events.Event.CreatedAt is a time.Time that fails
// the whole page on WorkOS's zone-less layout ("2023-04-28 20:05:31.093"),
// and re-encoding would change the bytes stored on the stream; and
// directorysync.User has `role` but not `roles[]`, so a corrective event
// built from it would strip every role but one.
type Client struct {
	opts ClientOptions
	log  *zap.Logger
	http *http.Client
	ds   *directorysync.Client
}

// NewClient returns a Client. It does no I/O.
func NewClient(opts ClientOptions, log *zap.Logger) *Client {
	opts.fill()
	if log == nil {
		log = zap.NewNop()
	}
	log = log.Named("workos")
	rt := &retryTransport{opts: opts, base: opts.Transport, log: log,
		limit: newSpacer(time.Duration(float64(time.Second) / opts.UsersPerSecond))}
	hc := &http.Client{Transport: rt} // timeouts are per attempt, in rt
	return &Client{opts: opts, log: log, http: hc,
		ds: &directorysync.Client{APIKey: opts.APIKey, Endpoint: opts.Endpoint, HTTPClient: hc}}
}

// rateKey marks a request's context with the key its rate limit is counted under.
type rateKeyCtx struct{}

func withRateKey(ctx context.Context, key string) context.Context {
	return context.WithValue(ctx, rateKeyCtx{}, key)
}

// get sends GET path?q with the API key and decodes a 2xx JSON body into out.
func (c *Client) get(ctx context.Context, path string, q url.Values, out any) error {
	u := c.opts.Endpoint + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.opts.APIKey)
	req.Header.Set("Accept", "application/json")
	res, err := c.http.Do(req)
	if err != nil {
		return scrub(err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		return err
	}
	if res.StatusCode < 200 || res.StatusCode > 299 {
		return &APIError{Method: http.MethodGet, Path: path, Status: res.StatusCode, Message: errorMessage(body)}
	}
	if err := json.Unmarshal(body, out); err != nil {
		return fmt.Errorf("workos GET %s: decode: %w", path, err)
	}
	return nil
}

// errorMessage extracts WorkOS's error message from a body, briefly.
func errorMessage(body []byte) string {
	var e struct {
		Message string `json:"message"`
		Code    string `json:"code"`
		Error   string `json:"error"`
	}
	if json.Unmarshal(body, &e) == nil {
		msg := strings.Join(strings.Fields(strings.Join([]string{e.Code, e.Error, e.Message}, " ")), " ")
		if msg != "" {
			return msg
		}
	}
	s := strings.TrimSpace(string(body))
	if len(s) > 200 {
		s = s[:200] + "…"
	}
	return s
}

// sdkError turns workos-go's error into an APIError (dropping its raw body).
func sdkError(path string, err error) error {
	var he workos_errors.HTTPError
	if errors.As(err, &he) {
		msg := strings.TrimSpace(he.ErrorCode + " " + he.Message)
		return &APIError{Method: http.MethodGet, Path: path, Status: he.Code, Message: msg}
	}
	return scrub(err)
}

// scrub removes the query from a *url.Error's URL: it holds ids and cursors,
// never the key, but keeps messages short.
func scrub(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		if u, perr := url.Parse(ue.URL); perr == nil {
			u.RawQuery = ""
			return &url.Error{Op: ue.Op, URL: u.String(), Err: ue.Err}
		}
	}
	return err
}

// redactURL hides any user info in a URL, for logs.
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "(unparsable URL)"
	}
	return u.Redacted()
}

// listMeta accepts both spellings WorkOS has used.
type listMeta struct {
	After string `json:"after"`
}

type listPage struct {
	Data         []json.RawMessage `json:"data"`
	ListMetadata *listMeta         `json:"list_metadata"`
	LegacyMeta   *listMeta         `json:"listMetadata"`
}

func (p *listPage) after() string {
	if p.ListMetadata != nil && p.ListMetadata.After != "" {
		return p.ListMetadata.After
	}
	if p.LegacyMeta != nil {
		return p.LegacyMeta.After
	}
	return ""
}

// EventsPage is one page of GET /events: each event exactly as the API sent
// it, and the cursor after it.
type EventsPage struct {
	Events []json.RawMessage
	After  string
}

// ListEvents reads one page of GET /events for types, after the event id
// after, or, when after is empty, from rangeStart (RFC 3339).
func (c *Client) ListEvents(ctx context.Context, types []string, after, rangeStart string) (EventsPage, error) {
	q := url.Values{}
	for _, t := range types {
		q.Add("events", t)
	}
	q.Set("limit", strconv.Itoa(c.opts.PageSize))
	switch {
	case after != "":
		q.Set("after", after)
	case rangeStart != "":
		q.Set("range_start", rangeStart)
	}
	var p listPage
	if err := c.get(ctx, "/events", q, &p); err != nil {
		return EventsPage{}, err
	}
	return EventsPage{Events: p.Data, After: p.after()}, nil
}

// Directory is a WorkOS directory as the API lists it: the same fields as
// the directory of a dsync.activated event.
type Directory = events.Directory

// ListDirectories lists every directory, or those of organization org.
func (c *Client) ListDirectories(ctx context.Context, org string) ([]Directory, error) {
	var out []Directory
	after := ""
	for {
		res, err := c.ds.ListDirectories(ctx, directorysync.ListDirectoriesOpts{OrganizationID: org, Limit: c.opts.PageSize, After: after})
		if err != nil {
			return nil, sdkError("/directories", err)
		}
		for _, d := range res.Data {
			out = append(out, Directory{ID: d.ID, OrganizationID: d.OrganizationID, Name: d.Name, Type: string(d.Type), State: string(d.State)})
		}
		if res.ListMetadata.After == "" || res.ListMetadata.After == after || len(res.Data) == 0 {
			return out, nil
		}
		after = res.ListMetadata.After
	}
}

// GetDirectory returns directory id.
func (c *Client) GetDirectory(ctx context.Context, id string) (Directory, error) {
	d, err := c.ds.GetDirectory(ctx, directorysync.GetDirectoryOpts{Directory: url.PathEscape(id)})
	if err != nil {
		return Directory{}, sdkError("/directories/"+id, err)
	}
	return Directory{ID: d.ID, OrganizationID: d.OrganizationID, Name: d.Name, Type: string(d.Type), State: string(d.State)}, nil
}

// Group is a directory group as the API lists it.
type Group struct {
	ID             string `json:"id"`
	DirectoryID    string `json:"directory_id"`
	OrganizationID string `json:"organization_id"`
	IdpID          string `json:"idp_id"`
	Name           string `json:"name"`
}

// ListGroups lists every group of directory dir.
func (c *Client) ListGroups(ctx context.Context, dir string) ([]Group, error) {
	var out []Group
	after := ""
	for {
		res, err := c.ds.ListGroups(ctx, directorysync.ListGroupsOpts{Directory: dir, Limit: c.opts.PageSize, After: after})
		if err != nil {
			return nil, sdkError("/directory_groups", err)
		}
		for _, g := range res.Data {
			out = append(out, Group{ID: g.ID, DirectoryID: g.DirectoryID, OrganizationID: g.OrganizationID, IdpID: g.IdpID, Name: g.Name})
		}
		if res.ListMetadata.After == "" || res.ListMetadata.After == after || len(res.Data) == 0 {
			return out, nil
		}
		after = res.ListMetadata.After
	}
}

// ListUsers lists the users of directory dir (group empty) or of group
// group of directory dir, each as the API sent it. Requests are counted
// against dir's rate limit.
func (c *Client) ListUsers(ctx context.Context, dir, group string) ([]json.RawMessage, error) {
	ctx = withRateKey(ctx, dir)
	var out []json.RawMessage
	after := ""
	for {
		q := url.Values{}
		if group != "" {
			q.Set("group", group)
		} else {
			q.Set("directory", dir)
		}
		q.Set("limit", strconv.Itoa(c.opts.PageSize))
		if after != "" {
			q.Set("after", after)
		}
		var p listPage
		if err := c.get(ctx, "/directory_users", q, &p); err != nil {
			return nil, err
		}
		out = append(out, p.Data...)
		next := p.after()
		if next == "" || next == after || len(p.Data) == 0 {
			return out, nil
		}
		after = next
	}
}

// retryTransport retries GETs on 429 (after Retry-After), 5xx, timeouts and
// network errors, with a timeout per attempt covering the whole body, and
// spaces requests that carry a rate key. It logs method, path, status and
// attempt — never a header.
type retryTransport struct {
	opts  ClientOptions
	base  http.RoundTripper
	log   *zap.Logger
	limit *spacer
}

func (t *retryTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Method != http.MethodGet && req.Method != http.MethodHead {
		return t.base.RoundTrip(req)
	}
	ctx := req.Context()
	backoff := t.opts.MinBackoff
	for attempt := 1; ; attempt++ {
		if key, _ := ctx.Value(rateKeyCtx{}).(string); key != "" {
			if err := t.limit.wait(ctx, key); err != nil {
				return nil, err
			}
		}
		res, err := t.attempt(req)
		if err != nil && ctx.Err() != nil {
			return nil, ctx.Err()
		}
		var wait time.Duration
		var reason string
		grow := true // the backoff doubles unless the server said how long to wait
		switch {
		case err != nil:
			reason, wait = err.Error(), backoff
		case res.StatusCode == http.StatusTooManyRequests:
			reason, wait = "429 rate limited", backoff
			if ra := retryAfter(res.Header.Get("Retry-After"), time.Now()); ra > t.opts.MaxRetryAfter {
				// Retrying sooner than asked would only be refused again.
				t.log.Warn("WorkOS API rate limit asks for a longer wait than dsyncd waits; giving up this request",
					zap.String("path", req.URL.Path), zap.Duration("retry_after", ra), zap.Duration("max", t.opts.MaxRetryAfter))
				return res, nil
			} else if ra > 0 {
				wait, grow = ra, false
			}
		case res.StatusCode >= 500:
			reason, wait = res.Status, backoff
		default:
			return res, nil
		}
		if attempt >= t.opts.MaxAttempts {
			if err != nil {
				return nil, fmt.Errorf("after %d attempts: %w", attempt, err)
			}
			return res, nil
		}
		t.log.Warn("WorkOS API request failed, retrying", zap.String("path", req.URL.Path),
			zap.String("reason", reason), zap.Int("attempt", attempt), zap.Duration("in", wait))
		if err := sleep(ctx, wait); err != nil {
			return nil, err
		}
		if grow {
			backoff = min(backoff*2, t.opts.MaxBackoff)
		}
	}
}

// attempt sends req once under the per-attempt timeout and reads the whole
// body, so that a response that stalls half way is retried too.
func (t *retryTransport) attempt(req *http.Request) (*http.Response, error) {
	actx, cancel := context.WithTimeout(req.Context(), t.opts.RequestTimeout)
	defer cancel()
	res, err := t.base.RoundTrip(req.Clone(actx))
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) && req.Context().Err() == nil {
			return nil, fmt.Errorf("no response within %s", t.opts.RequestTimeout)
		}
		return nil, err
	}
	body, err := io.ReadAll(io.LimitReader(res.Body, maxBody))
	res.Body.Close()
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) && req.Context().Err() == nil {
			return nil, fmt.Errorf("response body not read within %s", t.opts.RequestTimeout)
		}
		return nil, err
	}
	res.Body = io.NopCloser(bytes.NewReader(body))
	res.ContentLength = int64(len(body))
	return res, nil
}

// retryAfter parses a Retry-After header: delay-seconds or an HTTP date.
func retryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if s, err := strconv.ParseFloat(v, 64); err == nil {
		if s < 0 {
			return 0
		}
		return time.Duration(s * float64(time.Second))
	}
	if at, err := http.ParseTime(v); err == nil {
		return at.Sub(now)
	}
	return 0
}

func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// spacer lets requests of one key start at least every apart, in order of arrival.
type spacer struct {
	every time.Duration
	mu    sync.Mutex
	next  map[string]time.Time
}

func newSpacer(every time.Duration) *spacer {
	return &spacer{every: every, next: map[string]time.Time{}}
}

func (s *spacer) wait(ctx context.Context, key string) error {
	s.mu.Lock()
	now := time.Now()
	at := s.next[key]
	if at.Before(now) {
		at = now
	}
	s.next[key] = at.Add(s.every)
	for k, t := range s.next { // forget idle keys
		if t.Before(now) {
			delete(s.next, k)
		}
	}
	s.mu.Unlock()
	return sleep(ctx, time.Until(at))
}
