package storage

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"strconv"
	"time"
	"unicode/utf8"
)

// The change feed writes a record per changed user per batch, on the apply
// path: views and records are encoded by hand (appendView, appendUserChange)
// rather than through encoding/json's reflection, and the view the feed last
// told of a user (bucket feed_users) is kept with where each field ends, so
// that comparing it with the new one, and naming the fields that changed,
// needs no decoding.

// viewFields are the JSON names of ExportUser's fields, in appendView's order.
var viewFieldNames = [nViewFields]string{"id", "directory_id", "organization_id", "idp_id", "email", "first_name", "last_name",
	"state", "groups", "badges", "deleted", "held_by", "moved_to_organization_id"}

const (
	nViewFields = 13
	fieldState  = 7
	fieldDelete = 10
	// mirrorV1 starts a feed_users value: then nViewFields uint32 (BE), where
	// each field's bytes end in the JSON that follows.
	mirrorV1     = 1
	mirrorHeader = 1 + 4*nViewFields
)

// appendView appends v as JSON (what encoding/json writes for ExportUser,
// without its HTML escaping) and sets ends[i] to the offset, from the start
// of the JSON, where field i ends (an omitted field ends where the one before it).
func appendView(b []byte, v *ExportUser, ends *[nViewFields]uint32) []byte {
	start := len(b)
	b = append(b, '{')
	mark := func(i int) { ends[i] = uint32(len(b) - start) }
	str := func(i int, s string) {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, '"')
		b = append(b, viewFieldNames[i]...)
		b = append(b, '"', ':')
		b = appendJSONString(b, s)
		mark(i)
	}
	strs := func(i int, ss []string) {
		b = append(b, ',', '"')
		b = append(b, viewFieldNames[i]...)
		b = append(b, '"', ':')
		if ss == nil {
			b = append(b, "null"...)
		} else {
			b = append(b, '[')
			for j, s := range ss {
				if j > 0 {
					b = append(b, ',')
				}
				b = appendJSONString(b, s)
			}
			b = append(b, ']')
		}
		mark(i)
	}
	str(0, v.ID)
	str(1, v.DirectoryID)
	str(2, v.OrganizationID)
	str(3, v.IdpID)
	str(4, v.Email)
	str(5, v.FirstName)
	str(6, v.LastName)
	str(fieldState, v.State)
	strs(8, v.Groups)
	badges := make([]string, len(v.Badges))
	for i, x := range v.Badges {
		badges[i] = string(x)
	}
	if v.Badges == nil {
		badges = nil
	}
	strs(9, badges)
	if v.Deleted {
		b = append(b, `,"deleted":true`...)
	}
	mark(fieldDelete)
	if v.HeldBy != 0 {
		b = append(b, `,"held_by":`...)
		b = strconv.AppendUint(b, v.HeldBy, 10)
	}
	mark(11)
	if v.MovedTo != "" {
		str(12, v.MovedTo)
	}
	mark(12)
	return append(b, '}')
}

// encodeMirror is what feed_users keeps of a view: its field ends, then its JSON.
func encodeMirror(v *ExportUser) []byte {
	var ends [nViewFields]uint32
	b := make([]byte, mirrorHeader, mirrorHeader+256)
	b = appendView(b, v, &ends)
	b[0] = mirrorV1
	for i, e := range ends {
		binary.BigEndian.PutUint32(b[1+4*i:], e)
	}
	return b
}

// mirrorView splits a feed_users value into its JSON and each field's bytes.
func mirrorView(m []byte) (view []byte, fields [nViewFields][]byte, ok bool) {
	if len(m) < mirrorHeader || m[0] != mirrorV1 {
		return nil, fields, false
	}
	view = m[mirrorHeader:]
	prev := uint32(1)
	for i := range nViewFields {
		e := binary.BigEndian.Uint32(m[1+4*i:])
		if e < prev || int(e) > len(view) {
			return nil, fields, false
		}
		fields[i] = view[prev:e]
		prev = e
	}
	return view, fields, true
}

// activeView reports whether a view's fields say active: not deleted, and
// a state isActiveState accepts.
func activeView(fields *[nViewFields][]byte) bool {
	if len(fields[fieldDelete]) > 0 {
		return false
	}
	f := fields[fieldState]
	i := bytes.IndexByte(f, ':')
	var state string
	if i < 0 || json.Unmarshal(f[i+1:], &state) != nil {
		return true
	}
	return isActiveState(state)
}

// appendUserChange appends a user record, its view given as JSON.
func appendUserChange(b []byte, seq uint64, now time.Time, kind ChangeKind, org, dir string, changed []string, view []byte) []byte {
	b = append(b, `{"seq":`...)
	b = strconv.AppendUint(b, seq, 10)
	b = append(b, `,"time":"`...)
	b = now.AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","kind":`...)
	b = appendJSONString(b, string(kind))
	b = append(b, `,"organization_id":`...)
	b = appendJSONString(b, org)
	if dir != "" {
		b = append(b, `,"directory_id":`...)
		b = appendJSONString(b, dir)
	}
	if len(changed) > 0 {
		b = append(b, `,"changed":[`...)
		for i, c := range changed {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendJSONString(b, c)
		}
		b = append(b, ']')
	}
	b = append(b, `,"user":`...)
	b = append(b, view...)
	return append(b, '}')
}

const hexDigits = "0123456789abcdef"

// appendJSONString appends s as a JSON string: quotes, backslashes and
// control characters escaped, invalid UTF-8 replaced by U+FFFD, and U+2028
// and U+2029 escaped (as encoding/json does).
func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// userChangeIDs reads the organisation and user ids of a record that
// appendUserChange wrote, without decoding the rest: the relay reads every
// record back, and encoding/json took it longer to skip the view than to
// publish it. Anything else — another layout, a string with an escape —
// answers !ok, and the caller decodes the record as JSON.
func userChangeIDs(b []byte) (org, user string, ok bool) {
	p := changeScan{b: b, ok: true}
	p.lit(`{"seq":`)
	p.digits()
	p.lit(`,"time":`)
	p.str()
	p.lit(`,"kind":`)
	p.str()
	p.lit(`,"organization_id":`)
	org = p.str()
	if p.opt(`,"directory_id":`) {
		p.str()
	}
	if p.opt(`,"changed":[`) {
		for first := true; p.ok && !p.opt(`]`); first = false {
			if !first {
				p.lit(`,`)
			}
			p.str()
		}
	}
	p.lit(`,"user":{"id":`)
	user = p.str()
	return org, user, p.ok
}

// changeScan reads a byte slice's expected JSON tokens; ok turns false at
// the first one that is not there and stays false.
type changeScan struct {
	b  []byte
	ok bool
	i  int
}

func (p *changeScan) opt(s string) bool {
	if p.ok && len(p.b)-p.i >= len(s) && string(p.b[p.i:p.i+len(s)]) == s {
		p.i += len(s)
		return true
	}
	return false
}

func (p *changeScan) lit(s string) {
	if !p.opt(s) {
		p.ok = false
	}
}

func (p *changeScan) digits() {
	j := p.i
	for j < len(p.b) && p.b[j] >= '0' && p.b[j] <= '9' {
		j++
	}
	if j == p.i {
		p.ok = false
	}
	p.i = j
}

// str reads a JSON string without escapes and returns its content.
func (p *changeScan) str() string {
	if !p.ok || p.i >= len(p.b) || p.b[p.i] != '"' {
		p.ok = false
		return ""
	}
	for j := p.i + 1; j < len(p.b); j++ {
		switch c := p.b[j]; {
		case c == '"':
			s := string(p.b[p.i+1 : j])
			p.i = j + 1
			return s
		case c == '\\' || c < 0x20:
			p.ok = false
			return ""
		}
	}
	p.ok = false
	return ""
}
