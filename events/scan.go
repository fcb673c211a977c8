package events

import "unicode/utf8"

// A validating single-pass scanner for the few envelope fields the hot paths
// need (Peek in the receiver, the envelope in Decode). encoding/json reads a
// body twice before it decodes anything (once to validate it, once to decode)
// and Decode then reads the data object twice more; this reads the body once.
//
// The scanner is an accelerator, never a second opinion. It reports ok only
// when the body is valid JSON by encoding/json's rules and the fields it
// extracts are exactly what json.Unmarshal would put in the same structs;
// everything else — invalid JSON, a key that matches a field only by case
// folding, an escaped or non-ASCII key or value in a field it extracts, a
// repeated field, a value of another JSON type, deep nesting — makes it
// report !ok, and the caller decodes with encoding/json as before. The fuzz
// target FuzzScanAgrees holds it to that.

// maxScanDepth bounds the scanner's recursion; deeper bodies take the
// encoding/json path (whose own limit is 10000).
const maxScanDepth = 256

type scanner struct {
	b []byte
	i int
}

func (s *scanner) ws() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

// peekByte returns the byte at the cursor, or 0 at the end.
func (s *scanner) peekByte() byte {
	if s.i < len(s.b) {
		return s.b[s.i]
	}
	return 0
}

// str scans the string at the cursor (its opening quote) and returns the
// range of its contents and whether they are plain: no escape and ASCII
// only, so that the contents are the decoded string.
func (s *scanner) str() (start, end int, plain, ok bool) {
	start, end, escaped, high, ok := s.strFlags()
	return start, end, ok && !escaped && !high, ok
}

// strFlags is str reporting whether the contents hold an escape and a byte
// >= 0x80 (UTF-8 or not).
func (s *scanner) strFlags() (start, end int, escaped, high, ok bool) {
	s.i++
	start = s.i
	for s.i < len(s.b) {
		c := s.b[s.i]
		switch {
		case c == '"':
			end = s.i
			s.i++
			return start, end, escaped, high, true
		case c == '\\':
			escaped = true
			if s.i+1 >= len(s.b) {
				return 0, 0, false, false, false
			}
			switch s.b[s.i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				s.i += 2
			case 'u':
				if s.i+5 >= len(s.b) {
					return 0, 0, false, false, false
				}
				for _, h := range s.b[s.i+2 : s.i+6] {
					if !isHexDigit(h) {
						return 0, 0, false, false, false
					}
				}
				s.i += 6
			default:
				return 0, 0, false, false, false
			}
		case c < 0x20:
			return 0, 0, false, false, false
		default:
			if c >= 0x80 {
				high = true
			}
			s.i++
		}
	}
	return 0, 0, false, false, false
}

func isHexDigit(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

func (s *scanner) digits() bool {
	n := s.i
	for s.i < len(s.b) && isDigit(s.b[s.i]) {
		s.i++
	}
	return s.i > n
}

// number scans -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func (s *scanner) number() bool {
	if s.peekByte() == '-' {
		s.i++
	}
	switch c := s.peekByte(); {
	case c == '0':
		s.i++
	case '1' <= c && c <= '9':
		s.digits()
	default:
		return false
	}
	if s.peekByte() == '.' {
		s.i++
		if !s.digits() {
			return false
		}
	}
	if c := s.peekByte(); c == 'e' || c == 'E' {
		s.i++
		if c := s.peekByte(); c == '+' || c == '-' {
			s.i++
		}
		if !s.digits() {
			return false
		}
	}
	return true
}

func (s *scanner) literal(lit string) bool {
	if len(s.b)-s.i < len(lit) || string(s.b[s.i:s.i+len(lit)]) != lit {
		return false
	}
	s.i += len(lit)
	return true
}

// value scans any JSON value at the cursor; depth is that of the enclosing
// container.
func (s *scanner) value(depth int) bool {
	switch c := s.peekByte(); {
	case c == '{':
		return s.members(depth+1, nil, nil)
	case c == '[':
		return s.array(depth + 1)
	case c == '"':
		_, _, _, ok := s.str()
		return ok
	case c == '-' || isDigit(c):
		return s.number()
	case c == 't':
		return s.literal("true")
	case c == 'f':
		return s.literal("false")
	case c == 'n':
		return s.literal("null")
	}
	return false
}

func (s *scanner) array(depth int) bool {
	if depth > maxScanDepth {
		return false
	}
	s.i++
	s.ws()
	if s.peekByte() == ']' {
		s.i++
		return true
	}
	for {
		if !s.value(depth) {
			return false
		}
		s.ws()
		switch s.peekByte() {
		case ',':
			s.i++
			s.ws()
		case ']':
			s.i++
			return true
		default:
			return false
		}
	}
}

// members scans the object at the cursor. For a member whose key is one of
// names it calls field with the name's index and the cursor at the value,
// and field scans the value; other values are scanned as any value. A key
// that equals a name only when case is folded, a name given twice, or an
// escaped or non-ASCII key in an object with names fails the scan:
// encoding/json would match such keys (case-insensitively, the last one
// winning or merging), and the scanner leaves those bodies to it.
func (s *scanner) members(depth int, names []string, field func(k int) bool) bool {
	if depth > maxScanDepth {
		return false
	}
	s.i++
	s.ws()
	if s.peekByte() == '}' {
		s.i++
		return true
	}
	var seen uint32
	for {
		if s.peekByte() != '"' {
			return false
		}
		ks, ke, plain, ok := s.str()
		if !ok {
			return false
		}
		s.ws()
		if s.peekByte() != ':' {
			return false
		}
		s.i++
		s.ws()
		k := -1
		if len(names) > 0 {
			if !plain {
				return false
			}
			key := s.b[ks:ke]
			for j, n := range names {
				if asciiFoldEqual(key, n) {
					if string(key) != n || seen&(1<<j) != 0 {
						return false
					}
					seen |= 1 << j
					k = j
					break
				}
			}
		}
		if k >= 0 {
			if !field(k) {
				return false
			}
		} else if !s.value(depth) {
			return false
		}
		s.ws()
		switch s.peekByte() {
		case ',':
			s.i++
			s.ws()
		case '}':
			s.i++
			return true
		default:
			return false
		}
	}
}

// asciiFoldEqual reports whether the ASCII key equals name (lower case ASCII)
// when letters are compared without case, as encoding/json matches them.
func asciiFoldEqual(key []byte, name string) bool {
	if len(key) != len(name) {
		return false
	}
	for i := range len(key) {
		c := key[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != name[i] {
			return false
		}
	}
	return true
}

// stringField scans a value decoded into a Go string: a plain string sets
// *dst, null leaves it; anything else fails the scan.
func (s *scanner) stringField(dst *string) bool {
	switch s.peekByte() {
	case '"':
		// Valid UTF-8 decodes as itself; encoding/json replaces invalid
		// bytes and decodes escapes, which the scanner leaves to it.
		st, en, escaped, high, ok := s.strFlags()
		if !ok || escaped || high && !utf8.Valid(s.b[st:en]) {
			return false
		}
		*dst = string(s.b[st:en])
		return true
	case 'n':
		return s.literal("null")
	}
	return false
}

// object scans a value decoded into a pointer to a struct: an object sets
// *set and is scanned with names and field; null leaves the pointer nil
// (the scan fails on a repeated key, so it was nil); anything else fails.
func (s *scanner) object(depth int, set *bool, names []string, field func(k int) bool) bool {
	switch s.peekByte() {
	case '{':
		*set = true
		return s.members(depth+1, names, field)
	case 'n':
		return s.literal("null")
	}
	return false
}

// end reports whether only whitespace follows the cursor.
func (s *scanner) end() bool {
	s.ws()
	return s.i == len(s.b)
}

var envelopeNames = []string{"id", "event", "created_at", "data"}

// scanEnvelope fills env from b as json.Unmarshal(b, env) would, and
// reports whether it could (see the top of this file).
func scanEnvelope(b []byte, env *envelope) bool {
	s := scanner{b: b}
	s.ws()
	if s.peekByte() != '{' {
		return false
	}
	ok := s.members(1, envelopeNames, func(k int) bool {
		switch k {
		case 0:
			return s.stringField(&env.ID)
		case 1:
			return s.stringField((*string)(&env.Event))
		case 2:
			return s.stringField(&env.CreatedAt)
		default:
			start := s.i
			if !s.value(1) {
				return false
			}
			env.Data = b[start:s.i]
			return true
		}
	})
	return ok && s.end()
}

var (
	peekDataNames = []string{"id", "directory_id", "user", "group"}
	peekRefNames  = []string{"id", "directory_id"}
)

// scanPeek fills env from b as json.Unmarshal(b, env) would, and reports
// whether it could (see the top of this file).
func scanPeek(b []byte, env *peekEnvelope) bool {
	s := scanner{b: b}
	s.ws()
	if s.peekByte() != '{' {
		return false
	}
	ref := func(r *peekRef) func(k int) bool {
		return func(k int) bool {
			if k == 0 {
				return s.stringField(&r.ID)
			}
			return s.stringField(&r.DirectoryID)
		}
	}
	var data peekData
	var user, group peekRef
	var hasData, hasUser, hasGroup bool
	ok := s.members(1, envelopeNames, func(k int) bool {
		switch k {
		case 0:
			return s.stringField(&env.ID)
		case 1:
			return s.stringField((*string)(&env.Event))
		case 2:
			return s.stringField(&env.CreatedAt)
		default:
			return s.object(1, &hasData, peekDataNames, func(k int) bool {
				switch k {
				case 0:
					return s.stringField(&data.ID)
				case 1:
					return s.stringField(&data.DirectoryID)
				case 2:
					return s.object(2, &hasUser, peekRefNames, ref(&user))
				default:
					return s.object(2, &hasGroup, peekRefNames, ref(&group))
				}
			})
		}
	})
	if !ok || !s.end() {
		return false
	}
	if hasData {
		if hasUser {
			data.User = &user
		}
		if hasGroup {
			data.Group = &group
		}
		env.Data = &data
	}
	return true
}

// The data objects, scanned into the same wire structs json.Unmarshal fills.

// scanData scans b, one JSON value, with into, and reports whether the
// scan decided it (see the top of this file).
func scanData(b []byte, into func(s *scanner) bool) bool {
	s := scanner{b: b}
	s.ws()
	return into(&s) && s.end()
}

// stringPtrField scans a value decoded into a *string: a plain string sets
// *dst to a new string, null leaves it nil (the scan fails on a repeated
// key, so it was nil); anything else fails.
func (s *scanner) stringPtrField(dst **string) bool {
	if s.peekByte() == 'n' {
		return s.literal("null")
	}
	var v string
	if !s.stringField(&v) {
		return false
	}
	*dst = &v
	return true
}

// boolField scans a value decoded into a bool: true or false sets *dst,
// null leaves it; anything else fails.
func (s *scanner) boolField(dst *bool) bool {
	switch s.peekByte() {
	case 't':
		*dst = true
		return s.literal("true")
	case 'f':
		*dst = false
		return s.literal("false")
	case 'n':
		return s.literal("null")
	}
	return false
}

// arrayOf scans a value decoded into a slice: null leaves it nil; an array
// calls start (which sets an empty, non-nil slice, as encoding/json does),
// then elem for each element with the cursor at it; anything else fails.
func (s *scanner) arrayOf(depth int, start func(), elem func() bool) bool {
	switch s.peekByte() {
	case 'n':
		return s.literal("null")
	case '[':
	default:
		return false
	}
	depth++
	if depth > maxScanDepth {
		return false
	}
	start()
	s.i++
	s.ws()
	if s.peekByte() == ']' {
		s.i++
		return true
	}
	for {
		if !elem() {
			return false
		}
		s.ws()
		switch s.peekByte() {
		case ',':
			s.i++
			s.ws()
		case ']':
			s.i++
			return true
		default:
			return false
		}
	}
}

var emailNames = []string{"primary", "value"}

// emailListField scans a value decoded into an emailList. Only null and
// arrays of email objects (or nulls) are decided here; emailList turns
// every other value into an empty list, which the scanner leaves to it.
func (s *scanner) emailListField(depth int, dst *emailList) bool {
	var list []wireEmail
	ok := s.arrayOf(depth, func() { list = []wireEmail{} }, func() bool {
		list = append(list, wireEmail{})
		e := &list[len(list)-1]
		switch s.peekByte() {
		case 'n':
			return s.literal("null")
		case '{':
			return s.members(depth+2, emailNames, func(k int) bool {
				if k == 0 {
					return s.boolField(&e.Primary)
				}
				return s.stringField(&e.Value)
			})
		}
		return false
	})
	*dst = list
	return ok
}

var slugNames = []string{"slug"}

func (s *scanner) slugObject(depth int, dst *wireSlug) bool {
	return s.members(depth+1, slugNames, func(int) bool { return s.stringField(&dst.Slug) })
}

var (
	userNames = []string{"id", "directory_id", "organization_id", "idp_id", "email", "emails",
		"first_name", "last_name", "state", "role", "roles", "custom_attributes"}
	customNames = []string{"emails"}
)

// wireUserObject scans the object at the cursor (depth is its container's)
// into w, as json.Unmarshal would.
func (s *scanner) wireUserObject(depth int, w *wireUser) bool {
	if s.peekByte() != '{' {
		return false
	}
	return s.members(depth+1, userNames, func(k int) bool {
		switch k {
		case 0:
			return s.stringField(&w.ID)
		case 1:
			return s.stringField(&w.DirectoryID)
		case 2:
			return s.stringPtrField(&w.OrganizationID)
		case 3:
			return s.stringField(&w.IdpID)
		case 4:
			return s.stringPtrField(&w.Email)
		case 5:
			return s.emailListField(depth+1, &w.Emails)
		case 6:
			return s.stringPtrField(&w.FirstName)
		case 7:
			return s.stringPtrField(&w.LastName)
		case 8:
			return s.stringField(&w.State)
		case 9:
			var set bool
			var slug wireSlug
			if !s.object(depth+1, &set, slugNames, func(int) bool { return s.stringField(&slug.Slug) }) {
				return false
			}
			if set {
				w.Role = &slug
			}
			return true
		case 10:
			return s.arrayOf(depth+1, func() { w.Roles = []wireSlug{} }, func() bool {
				w.Roles = append(w.Roles, wireSlug{})
				switch s.peekByte() {
				case 'n':
					return s.literal("null")
				case '{':
					return s.slugObject(depth+2, &w.Roles[len(w.Roles)-1])
				}
				return false
			})
		default:
			switch s.peekByte() {
			case 'n':
				return s.literal("null")
			case '{':
				return s.members(depth+2, customNames, func(int) bool {
					return s.emailListField(depth+2, &w.CustomAttributes.Emails)
				})
			}
			return false
		}
	})
}

var groupNames = []string{"id", "directory_id", "organization_id", "idp_id", "name"}

func (s *scanner) wireGroupObject(depth int, w *wireGroup) bool {
	if s.peekByte() != '{' {
		return false
	}
	return s.members(depth+1, groupNames, func(k int) bool {
		switch k {
		case 0:
			return s.stringField(&w.ID)
		case 1:
			return s.stringField(&w.DirectoryID)
		case 2:
			return s.stringPtrField(&w.OrganizationID)
		case 3:
			return s.stringField(&w.IdpID)
		default:
			return s.stringPtrField(&w.Name)
		}
	})
}

var directoryNames = []string{"id", "organization_id", "name", "type", "state"}

func (s *scanner) wireDirectoryObject(depth int, w *wireDirectory) bool {
	if s.peekByte() != '{' {
		return false
	}
	return s.members(depth+1, directoryNames, func(k int) bool {
		switch k {
		case 0:
			return s.stringField(&w.ID)
		case 1:
			return s.stringPtrField(&w.OrganizationID)
		case 2:
			return s.stringPtrField(&w.Name)
		case 3:
			return s.stringField(&w.Type)
		default:
			return s.stringField(&w.State)
		}
	})
}

var membershipNames = []string{"directory_id", "user", "group"}

func (s *scanner) wireMembershipObject(depth int, w *wireMembership) bool {
	if s.peekByte() != '{' {
		return false
	}
	return s.members(depth+1, membershipNames, func(k int) bool {
		switch k {
		case 0:
			return s.stringField(&w.DirectoryID)
		case 1:
			if s.peekByte() == 'n' {
				return s.literal("null")
			}
			w.User = &wireUser{}
			return s.wireUserObject(depth+1, w.User)
		default:
			if s.peekByte() == 'n' {
				return s.literal("null")
			}
			w.Group = &wireGroup{}
			return s.wireGroupObject(depth+1, w.Group)
		}
	})
}
