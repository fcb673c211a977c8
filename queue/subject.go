package queue

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"unicode"
	"unicode/utf8"
)

// maxToken is the longest subject token Subject makes, in bytes.
const maxToken = 128

// Subject is the subject Publish stores an event under:
// "<SubjectPrefix>.<directoryID>.<eventType>", e.g.
// "dsync.directory_01ABC.dsync.user.created". The directory id is one token
// and each dot-separated part of the event type one more, every token
// sanitised by replacing '.' (in the directory id), '*', '>', white space,
// control characters and invalid UTF-8 with '_' (an empty token becomes "_"),
// so that no id or type can add wildcards, nor a directory id tokens. A token
// longer than 128 bytes is cut and suffixed with a hash of the original.
func (q *Queue) Subject(directoryID, eventType string) string {
	var b strings.Builder
	b.WriteString(q.opts.SubjectPrefix)
	b.WriteByte('.')
	b.WriteString(token(directoryID))
	for part := range strings.SplitSeq(eventType, ".") {
		b.WriteByte('.')
		b.WriteString(token(part))
	}
	return b.String()
}

// token sanitises s into one literal subject token.
func token(s string) string {
	if s == "" {
		return "_"
	}
	var b strings.Builder
	b.Grow(len(s))
	for i, r := range s {
		switch {
		case r == '.' || r == '*' || r == '>' || unicode.IsSpace(r) || unicode.IsControl(r):
			b.WriteByte('_')
		case r == utf8.RuneError:
			if _, size := utf8.DecodeRuneInString(s[i:]); size <= 1 {
				b.WriteByte('_') // invalid byte
			} else {
				b.WriteRune(r) // a literal U+FFFD
			}
		default:
			b.WriteRune(r)
		}
	}
	t := b.String()
	if len(t) <= maxToken {
		return t
	}
	sum := sha256.Sum256([]byte(s))
	suffix := "~" + hex.EncodeToString(sum[:8])
	cut := maxToken - len(suffix)
	for cut > 0 && !utf8.RuneStart(t[cut]) {
		cut--
	}
	return t[:cut] + suffix
}

// HeaderControl marks a control message of the main stream (see
// PublishControl); its value is the control's kind. Webhooks cannot set it.
const HeaderControl = "Dsyncd-Control"

// ControlSubject is the subject PublishControl stores a control of kind
// under: "<SubjectPrefix>.control.<kind>".
func (q *Queue) ControlSubject(kind string) string {
	return q.opts.SubjectPrefix + ".control." + token(kind)
}
