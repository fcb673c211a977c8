package storage

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/dsyncd/dsyncd/mapping"
)

// Why says whether a user has a badge and why: what "dsyncd why" prints and
// GET /v1/users/{id}/why/{badge} answers.
type Why struct {
	User  string        `json:"user"`
	Badge mapping.Badge `json:"badge"`
	Has   bool          `json:"has"`
	// Explanation is the answer in one line.
	Explanation string `json:"explanation"`
	// Grants are the user's grants of the badge, each with its reason.
	Grants []WhyGrant `json:"grants"`
	// LastChange is the newest audit entry of (user, badge), if any.
	LastChange *AuditEntry `json:"last_change,omitempty"`
	// Holds are the open holds of (user, badge).
	Holds []Hold `json:"holds,omitempty"`
}

// WhyGrant is one grant of the badge: the mapping rule, its source (group,
// role, default, held, retained, break_glass) and the group or role that
// matched, with the reason in words.
type WhyGrant struct {
	Rule   string              `json:"rule"`
	Source mapping.GrantSource `json:"source"`
	Group  string              `json:"group,omitempty"`
	Role   string              `json:"role,omitempty"`
	Reason string              `json:"reason"`
}

// Why explains whether the user userID has badge, from the user's grants,
// the audit entries of (user, badge) and the open holds. It returns
// ErrNotFound for an unknown user.
func (s *Store) Why(userID string, badge mapping.Badge) (*Why, error) {
	u, err := s.User(userID)
	if err != nil {
		return nil, err
	}
	entries, err := s.Audit(AuditFilter{UserID: userID, Badge: badge})
	if err != nil {
		return nil, err
	}
	open, err := s.Holds(true)
	if err != nil {
		return nil, err
	}
	w := Explain(u, badge, entries, open, s.opts.AuditRetention)
	return &w, nil
}

// Explain answers whether u has badge and why, from its grants, the audit
// entries of (u, badge) oldest first, and the open holds.
// auditRetention is store.audit_retention: with it set, an empty trail no
// longer proves a badge was never granted.
func Explain(u *UserView, badge mapping.Badge, entries []AuditEntry, open []Hold, auditRetention time.Duration) Why {
	ans := Why{User: u.ID, Badge: badge, Has: slices.Contains(u.Badges, badge), Grants: []WhyGrant{}}
	for _, h := range open {
		if h.UserID == u.ID && h.Badge == badge && h.Open() {
			ans.Holds = append(ans.Holds, h)
		}
	}
	var reasons []string
	for _, g := range u.Grants {
		if g.Badge != badge {
			continue
		}
		r := grantExplanation(g, u.GroupNames, ans.Holds)
		ans.Grants = append(ans.Grants, WhyGrant{Rule: g.Rule, Source: g.Source, Group: g.Group, Role: g.Role, Reason: r})
		reasons = append(reasons, r)
	}
	if len(entries) > 0 {
		last := entries[len(entries)-1]
		ans.LastChange = &last
	}
	if ans.Has {
		s := fmt.Sprintf("%s has %s: %s", u.ID, badge, strings.Join(reasons, "; and "))
		for i := len(entries) - 1; i >= 0; i-- {
			if e := entries[i]; e.Action == ActionGrant {
				s += fmt.Sprintf(" (granted %s at %s)", byEvent(e.EventID), whyTime(e.Time))
				break
			}
		}
		ans.Explanation = s
		return ans
	}
	s := fmt.Sprintf("%s does not have %s: ", u.ID, badge)
	switch e := ans.LastChange; {
	case e != nil && e.Action == ActionRevoke:
		s += fmt.Sprintf("revoked at %s because %s (%s)", whyTime(e.Time), e.Reason, byEvent(e.EventID))
	case e != nil && e.Action == ActionGrant:
		s += fmt.Sprintf("granted at %s (%s), but no longer held", whyTime(e.Time), byEvent(e.EventID))
	case e != nil:
		s += fmt.Sprintf("last change at %s: %s: %s (%s)", whyTime(e.Time), e.Action, e.Reason, byEvent(e.EventID))
	case auditRetention > 0:
		s += fmt.Sprintf("no rule of the mapping grants it to this user, and the audit trail (kept for %s) records no change of it", shortDuration(auditRetention))
	default:
		s += "never granted: no rule of the mapping grants it to this user"
	}
	switch {
	case u.Deleted:
		s += "; the user is deleted"
	case u.State != "" && u.State != "active":
		s += "; the user is " + u.State
	}
	ans.Explanation = s
	return ans
}

func byEvent(id string) string {
	switch id {
	case "":
		return "by an operator"
	case EventMappingChange:
		return "by a mapping change"
	}
	return "by event " + id
}

func grantExplanation(g mapping.Grant, names map[string]string, holds []Hold) string {
	switch g.Source {
	case "group":
		s := "member of group " + g.Group
		if n := names[g.Group]; n != "" {
			s += " " + strconv.Quote(n)
		}
		return s + " matched by rule " + g.Rule
	case "role":
		return "has WorkOS role " + g.Role + " matched by rule " + g.Rule
	case "default":
		return "default badge of every active user"
	case mapping.SourceHeld:
		s := "kept by an open last-admin hold"
		if len(holds) > 0 {
			s += fmt.Sprintf(" (hold %d: %s)", holds[0].ID, holds[0].Reason)
		}
		return s
	case mapping.SourceRetained:
		return "retained after its rule " + g.Rule + " was removed from the mapping (on_unmap: keep)"
	case mapping.SourceBreakGlass:
		return "break-glass account: sync never revokes its badges (granted by rule " + g.Rule + ")"
	}
	return "granted by rule " + g.Rule + " (" + string(g.Source) + ")"
}

// whyTime writes t in UTC, RFC 3339; "" for the zero time.
func whyTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339)
}

// shortDuration writes d as a configuration would: 720h, 1h30m, not 720h0m0s.
func shortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}
