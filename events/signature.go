package events

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"strconv"
	"sync"
	"time"
)

// HeaderName is the HTTP header that carries a webhook's signature.
const HeaderName = "WorkOS-Signature"

// DefaultTolerance is the largest accepted difference, in either direction,
// between a signature's timestamp and the verifier's clock. It matches the
// 180 s of WorkOS's SDKs.
const DefaultTolerance = 3 * time.Minute

// ErrNotSigned is wrapped by the error Verify and ParseSignatureHeader return
// when the signature header is empty or absent.
var ErrNotSigned = errors.New("webhook not signed")

// ErrMalformedSignature is wrapped by the error Verify and ParseSignatureHeader
// return when the signature header does not have the shape
// "t=<unix ms>, v1=<hex>": a part without '=', an empty part, a missing or
// repeated t=, a t that is not a non-negative decimal integer, a missing v1=,
// or a v1 that is not 64 hexadecimal digits (an HMAC-SHA256).
var ErrMalformedSignature = errors.New("malformed signature header")

// ErrStale is wrapped by the error Verify returns when the signature's
// timestamp is further than the tolerance from the verifier's clock, in the
// past or in the future.
var ErrStale = errors.New("signature timestamp outside tolerance")

// ErrBadSignature is wrapped by the error Verify returns when a well-formed,
// fresh header carries no v1 signature that matches the body under any of the
// verifier's secrets.
var ErrBadSignature = errors.New("signature does not match")

// errEmptyHeader is preallocated: unsigned requests may come in floods.
var errEmptyHeader = fmt.Errorf("%w: empty or absent %s header", ErrNotSigned, HeaderName)

// maxQuoted bounds how much of an attacker-supplied value goes into an error.
const maxQuoted = 32

// Verifier checks WorkOS webhook signatures against one or more secrets.
// A Verifier is safe for concurrent use.
type Verifier struct {
	keys      []*macKey
	tolerance time.Duration
	now       func() time.Time
}

// macKey keeps reusable HMAC states for one secret. The pooled states are
// keyed, so Verify neither re-derives the key pads nor allocates per call.
type macKey struct {
	pool sync.Pool // of *macState
}

type macState struct {
	h      hash.Hash
	prefix [24]byte // t digits (at most 19) and the '.'
	sum    [sha256.Size]byte
}

func newMacKey(secret string) *macKey {
	k := []byte(secret)
	m := &macKey{}
	m.pool.New = func() any { return &macState{h: hmac.New(sha256.New, k)} }
	return m
}

// NewVerifier returns a Verifier that accepts a webhook signed with any of
// secrets: during a rotation pass every live secret. Empty secrets are
// skipped, because a signature made with an empty key proves nothing; a
// Verifier without any secret rejects every webhook with ErrBadSignature.
// A tolerance <= 0 means DefaultTolerance.
func NewVerifier(secrets []string, tolerance time.Duration) *Verifier {
	if tolerance <= 0 {
		tolerance = DefaultTolerance
	}
	v := &Verifier{tolerance: tolerance, now: time.Now}
	for _, s := range secrets {
		if s != "" {
			v.keys = append(v.keys, newMacKey(s))
		}
	}
	return v
}

// WithClock returns a copy of v that reads the current time from now instead
// of time.Now (for tests). A nil now means time.Now. The copy shares v's
// secrets.
func (v *Verifier) WithClock(now func() time.Time) *Verifier {
	if now == nil {
		now = time.Now
	}
	if v == nil {
		return &Verifier{tolerance: DefaultTolerance, now: now}
	}
	c := *v
	c.now = now
	return &c
}

// Verify checks header, the value of the WorkOS-Signature header, against
// body, the raw request body. It returns nil when the header is well formed,
// its timestamp is within the tolerance of the clock (in either direction) and
// one of its v1 signatures is hex(HMAC-SHA256(secret, t + "." + body)) for one
// of the verifier's secrets. Otherwise the error wraps exactly one of
// ErrNotSigned, ErrMalformedSignature, ErrStale or ErrBadSignature, with
// context that never includes a secret. Verify never panics.
func (v *Verifier) Verify(header string, body []byte) error {
	rawT, nv1, err := v.checkHeader(header)
	if err != nil {
		return err
	}
	for _, k := range v.keys {
		st := k.pool.Get().(*macState)
		st.h.Reset()
		l := copy(st.prefix[:], rawT)
		st.prefix[l] = '.'
		st.h.Write(st.prefix[:l+1])
		st.h.Write(body)
		mac := st.h.Sum(st.sum[:0])
		ok := matchAny(header, mac)
		k.pool.Put(st)
		if ok {
			return nil
		}
	}
	if len(v.keys) == 0 {
		return fmt.Errorf("%w: no secret configured", ErrBadSignature)
	}
	return fmt.Errorf("%w: no v1 of %d matches the body", ErrBadSignature, nv1)
}

// CheckHeader is the part of Verify that needs no body: header is well
// formed and its timestamp within the tolerance. It returns Verify's error
// for such a header (ErrNotSigned, ErrMalformedSignature, ErrStale) and nil
// for one whose signatures Verify would then check against the body. A
// well-formed header is cheap to forge: it proves nothing, but a request
// without one can be refused before its body is read.
func (v *Verifier) CheckHeader(header string) error {
	_, _, err := v.checkHeader(header)
	return err
}

func (v *Verifier) checkHeader(header string) (rawT string, nv1 int, err error) {
	rawT, ts, nv1, err := scanHeader(header)
	if err != nil {
		return "", 0, err
	}
	if v == nil {
		return "", 0, fmt.Errorf("%w: no verifier", ErrBadSignature)
	}
	now := time.Now
	if v.now != nil {
		now = v.now
	}
	tol := v.tolerance
	if tol <= 0 {
		tol = DefaultTolerance
	}
	// Sub saturates, so huge timestamps cannot overflow the comparisons.
	at, n := time.UnixMilli(ts), now()
	if d := n.Sub(at); d > tol {
		return "", 0, fmt.Errorf("%w: t=%d is %v old (tolerance %v)", ErrStale, ts, d, tol)
	}
	if d := at.Sub(n); d > tol {
		return "", 0, fmt.Errorf("%w: t=%d is %v in the future (tolerance %v)", ErrStale, ts, d, tol)
	}
	return rawT, nv1, nil
}

// matchAny reports whether one of the v1 signatures of header, which
// scanHeader has accepted, equals mac. Each comparison is constant time.
func matchAny(header string, mac []byte) bool {
	var sig [sha256.Size]byte
	found := false
	for rest := header; ; {
		part, more := cut(rest)
		key, val := splitPart(part)
		if key == "v1" {
			if decodeSHA256Hex(&sig, val) && hmac.Equal(sig[:], mac) {
				found = true
			}
		}
		if !more {
			return found
		}
		rest = rest[len(part)+1:]
	}
}

// ParseSignatureHeader parses a WorkOS-Signature header value such as
// "t=1624648053155, v1=9de2…". It returns the timestamp in Unix milliseconds
// and every v1 signature, decoded (a header may carry several). Parts are
// separated by commas, optionally surrounded by spaces or tabs; keys other
// than t and v1 are ignored. An empty header yields an error wrapping
// ErrNotSigned; any other defect (a part without '=', an empty part, a missing
// or repeated t, a t that is not a non-negative decimal integer, a missing v1,
// a v1 that is not 64 hex digits) one wrapping ErrMalformedSignature.
func ParseSignatureHeader(h string) (tsMillis int64, sigs [][]byte, err error) {
	_, ts, n, err := scanHeader(h)
	if err != nil {
		return 0, nil, err
	}
	sigs = make([][]byte, 0, n)
	for rest := h; ; {
		part, more := cut(rest)
		if key, val := splitPart(part); key == "v1" {
			sig, err := hex.DecodeString(val)
			if err != nil { // unreachable: scanHeader checked it
				return 0, nil, fmt.Errorf("%w: v1: %v", ErrMalformedSignature, err)
			}
			sigs = append(sigs, sig)
		}
		if !more {
			return ts, sigs, nil
		}
		rest = rest[len(part)+1:]
	}
}

// Sign returns a WorkOS-Signature header value for body signed with secret at
// time t, in the layout WorkOS sends: "t=<unix ms>, v1=<hex>". It is meant for
// tests and load generators. A t before 1970 gives a header Verify rejects.
func Sign(secret string, t time.Time, body []byte) string {
	ts := strconv.FormatInt(t.UnixMilli(), 10)
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(ts))
	m.Write([]byte{'.'})
	m.Write(body)
	return "t=" + ts + ", v1=" + hex.EncodeToString(m.Sum(nil))
}

// scanHeader validates h without allocating (except for an error). It returns
// the raw digits of t (which are what was signed), their value and the number
// of v1 signatures.
func scanHeader(h string) (rawT string, ts int64, nv1 int, err error) {
	if trimOWS(h) == "" {
		return "", 0, 0, errEmptyHeader
	}
	haveT := false
	for i, rest := 0, h; ; i++ {
		part, more := cut(rest)
		if trimOWS(part) == "" {
			return "", 0, 0, fmt.Errorf("%w: part %d is empty", ErrMalformedSignature, i+1)
		}
		key, val, ok := splitPartOK(part)
		switch {
		case !ok:
			return "", 0, 0, fmt.Errorf("%w: part %d %s has no '='", ErrMalformedSignature, i+1, quote(part))
		case key == "":
			return "", 0, 0, fmt.Errorf("%w: part %d %s has no key", ErrMalformedSignature, i+1, quote(part))
		case key == "t":
			if haveT {
				return "", 0, 0, fmt.Errorf("%w: repeated t=", ErrMalformedSignature)
			}
			haveT = true
			if ts, ok = parseMillis(val); !ok {
				return "", 0, 0, fmt.Errorf("%w: t=%s is not a non-negative integer of milliseconds", ErrMalformedSignature, quote(val))
			}
			rawT = val
		case key == "v1":
			if !isSHA256Hex(val) {
				return "", 0, 0, fmt.Errorf("%w: v1=%s is not %d hex digits", ErrMalformedSignature, quote(val), 2*sha256.Size)
			}
			nv1++
		}
		if !more {
			break
		}
		rest = rest[len(part)+1:]
	}
	if !haveT {
		return "", 0, 0, fmt.Errorf("%w: no t=", ErrMalformedSignature)
	}
	if nv1 == 0 {
		return "", 0, 0, fmt.Errorf("%w: no v1=", ErrMalformedSignature)
	}
	return rawT, ts, nv1, nil
}

// cut returns s up to its first comma and whether a comma followed.
func cut(s string) (part string, more bool) {
	for i := 0; i < len(s); i++ {
		if s[i] == ',' {
			return s[:i], true
		}
	}
	return s, false
}

func splitPart(part string) (key, val string) {
	key, val, _ = splitPartOK(part)
	return key, val
}

// splitPartOK splits "key=value" at the first '=' and trims spaces and tabs
// around both.
func splitPartOK(part string) (key, val string, ok bool) {
	for i := 0; i < len(part); i++ {
		if part[i] == '=' {
			return trimOWS(part[:i]), trimOWS(part[i+1:]), true
		}
	}
	return "", "", false
}

// trimOWS trims HTTP optional whitespace (spaces and horizontal tabs).
func trimOWS(s string) string {
	for len(s) > 0 && (s[0] == ' ' || s[0] == '\t') {
		s = s[1:]
	}
	for len(s) > 0 && (s[len(s)-1] == ' ' || s[len(s)-1] == '\t') {
		s = s[:len(s)-1]
	}
	return s
}

// parseMillis accepts only ASCII decimal digits (no sign, no exponent) that
// fit in an int64.
func parseMillis(s string) (int64, bool) {
	if s == "" || len(s) > 19 {
		return 0, false
	}
	var n int64
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		d := int64(c - '0')
		if n > (1<<63-1-d)/10 {
			return 0, false
		}
		n = n*10 + d
	}
	return n, true
}

func isSHA256Hex(s string) bool {
	var sig [sha256.Size]byte
	return decodeSHA256Hex(&sig, s)
}

// decodeSHA256Hex decodes s, which isSHA256Hex accepts, into dst without
// allocating. It reports false for any other s.
func decodeSHA256Hex(dst *[sha256.Size]byte, s string) bool {
	if len(s) != 2*sha256.Size {
		return false
	}
	for i := range dst {
		hi, ok1 := unhex(s[2*i])
		lo, ok2 := unhex(s[2*i+1])
		if !ok1 || !ok2 {
			return false
		}
		dst[i] = hi<<4 | lo
	}
	return true
}

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// quote quotes an attacker-supplied value for an error message, cut short.
func quote(s string) string {
	if len(s) > maxQuoted {
		return strconv.Quote(s[:maxQuoted]) + "…"
	}
	return strconv.Quote(s)
}
