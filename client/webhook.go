package client

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// HeaderSignature signs each of dsyncd's webhooks out.
const HeaderSignature = "Dsyncd-Signature"

// DefaultTolerance is how far a webhook's t may be from now when
// VerifyWebhook is given no tolerance.
const DefaultTolerance = 5 * time.Minute

// ErrBadSignature: a webhook's Dsyncd-Signature is missing, malformed, too
// old (or too far ahead) or does not match its body.
var ErrBadSignature = errors.New("dsyncd: bad webhook signature")

// VerifyWebhook checks a webhook out of dsyncd: header is its
// Dsyncd-Signature, "t=<unix ms>, v1=<hex HMAC-SHA256(secret, t + "." +
// body)>", body the raw body as received. It refuses a t further than
// tolerance from now (DefaultTolerance when tolerance <= 0) and compares
// in constant time; any of several v1 values may match. The error matches
// ErrBadSignature and says why, never what the signature should be.
func VerifyWebhook(secret, header string, body []byte, now time.Time, tolerance time.Duration) error {
	if secret == "" {
		return fmt.Errorf("%w: no secret to check it with", ErrBadSignature)
	}
	if tolerance <= 0 {
		tolerance = DefaultTolerance
	}
	var ts string
	var sigs [][]byte
	for _, part := range strings.Split(header, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			continue
		}
		switch k {
		case "t":
			ts = v
		case "v1":
			sig, err := hex.DecodeString(v)
			if err != nil || len(sig) != sha256.Size {
				return fmt.Errorf("%w: a v1 that is not a hex SHA-256", ErrBadSignature)
			}
			sigs = append(sigs, sig)
		}
	}
	if ts == "" || len(sigs) == 0 {
		return fmt.Errorf("%w: %s needs t= and v1=", ErrBadSignature, HeaderSignature)
	}
	ms, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || ms < 0 {
		return fmt.Errorf("%w: t is not a time in Unix milliseconds", ErrBadSignature)
	}
	if off := now.Sub(time.UnixMilli(ms)); off > tolerance || -off > tolerance {
		return fmt.Errorf("%w: t is %s from now, more than %s", ErrBadSignature, off.Round(time.Second), tolerance)
	}
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(ts))
	m.Write([]byte{'.'})
	m.Write(body)
	want := m.Sum(nil)
	ok := false
	for _, s := range sigs {
		if hmac.Equal(s, want) {
			ok = true
		}
	}
	if !ok {
		return fmt.Errorf("%w: no v1 matches the body", ErrBadSignature)
	}
	return nil
}

// DecodeWebhook decodes the body of a webhook out, {"changes":[…]}, after
// VerifyWebhook accepted it. The records are in seq order; a batch may
// come again (at least once): skip the seqs already applied.
func DecodeWebhook(body []byte) ([]Change, error) {
	var b struct {
		Changes *[]Change `json:"changes"`
	}
	if err := json.Unmarshal(body, &b); err != nil {
		return nil, fmt.Errorf("dsyncd: webhook body: %w", err)
	}
	if b.Changes == nil {
		return nil, errors.New(`dsyncd: webhook body: no "changes"`)
	}
	return *b.Changes, nil
}
