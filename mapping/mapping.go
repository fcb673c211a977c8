// Package mapping turns a directory user's groups and WorkOS role slugs into
// the product's badges.
//
// # Basics
//
// An active user's badges are DefaultBadges ∪ the badges of every group rule
// matching a group the user belongs to ∪ the badges of every role rule matching
// one of the user's role slugs. An inactive or suspended user has none. A group
// rule matches by ID, IdpID or Name (case-insensitive) and may be scoped to an
// organization.
//
// Each badge comes with its provenance: the rule, and the group or role, that
// grants it. A badge granted several ways lists every grant.
//
// # Caveats
//
// The package is pure: no I/O, no clock, no logger. Callers (the store) decide
// when to recompute, and enforce the safeguards on the result.
package mapping

import (
	"fmt"
	"slices"
	"strings"
)

// Badge is a role in the product, granted by the mapping: what dsyncd
// computes for each user. Its JSON is its name.
type Badge string

// OnUnmap values say what happens to the badges a group rule granted when the
// rule is removed from the configuration.
const (
	OnUnmapKeep   = "keep"   // badges stay, marked retained
	OnUnmapRemove = "remove" // badges the rule granted are revoked
)

// GroupRule grants Badges to the members of every group it matches.
type GroupRule struct {
	// ID matches a WorkOS directory group id exactly.
	ID string `mapstructure:"id" json:"id,omitempty"`
	// IdpID matches the group's id in the identity provider exactly.
	IdpID string `mapstructure:"idp_id" json:"idp_id,omitempty"`
	// Name matches the group's name, case-insensitively.
	Name string `mapstructure:"name" json:"name,omitempty"`
	// Organization, when set, limits the rule to groups of that WorkOS organization.
	Organization string `mapstructure:"organization" json:"organization,omitempty"`
	// Badges are granted to every active member of a matching group.
	Badges []Badge `mapstructure:"badges" json:"badges"`
	// OnUnmap is "keep" or "remove": what to do with the badges this rule granted
	// once it disappears from the configuration. Empty means "ask".
	OnUnmap string `mapstructure:"on_unmap" json:"on_unmap,omitempty"`
}

// RoleRule grants Badges to every active user carrying the WorkOS role Slug.
type RoleRule struct {
	Slug   string  `mapstructure:"slug" json:"slug"`
	Badges []Badge `mapstructure:"badges" json:"badges"`
}

// Config is the mapping section of dsyncd's configuration.
type Config struct {
	// AdminBadge is the badge the last-admin safeguard protects.
	AdminBadge Badge `mapstructure:"admin_badge" json:"admin_badge"`
	// DefaultBadges go to every active user.
	DefaultBadges []Badge `mapstructure:"default_badges" json:"default_badges"`
	// Groups are the group rules, matched in order (all matching rules apply).
	Groups []GroupRule `mapstructure:"groups" json:"groups"`
	// Roles are the role-slug rules.
	Roles []RoleRule `mapstructure:"roles" json:"roles"`
}

// Rule names used in provenance.
const (
	RuleDefault = "default"
)

// String names the rule the way provenance and the audit trail show it,
// e.g. `group:name=App Admins@org_01XYZ`.
func (r GroupRule) String() string {
	var b strings.Builder
	b.WriteString("group:")
	var parts []string
	if r.ID != "" {
		parts = append(parts, "id="+r.ID)
	}
	if r.IdpID != "" {
		parts = append(parts, "idp_id="+r.IdpID)
	}
	if r.Name != "" {
		parts = append(parts, "name="+r.Name)
	}
	b.WriteString(strings.Join(parts, ","))
	if r.Organization != "" {
		b.WriteString("@" + r.Organization)
	}
	return b.String()
}

// String names the rule, e.g. `role:billing`.
func (r RoleRule) String() string { return "role:" + r.Slug }

// Matches reports whether the rule matches group g.
func (r GroupRule) Matches(g Group) bool {
	if r.Organization != "" && r.Organization != g.OrganizationID {
		return false
	}
	switch {
	case r.ID != "" && r.ID == g.ID:
		return true
	case r.IdpID != "" && r.IdpID == g.IdpID:
		return true
	case r.Name != "" && strings.EqualFold(r.Name, g.Name):
		return true
	}
	return false
}

// Group is what a group rule looks at.
type Group struct {
	ID             string
	IdpID          string
	Name           string
	OrganizationID string
}

// Subject is what the mapping looks at for one user.
type Subject struct {
	Active bool
	Roles  []string // WorkOS role slugs
	Groups []Group  // the groups the user is a member of
}

// GrantSource says how a user came to hold a badge (Grant.Source).
type GrantSource string

// Grant sources. Grants gives the first three; the store's safeguards add
// the others.
const (
	SourceDefault GrantSource = "default" // a default badge of every active user
	SourceGroup   GrantSource = "group"   // a group rule matched one of the user's groups
	SourceRole    GrantSource = "role"    // a role rule matched one of the user's role slugs
	// SourceHeld: the mapping no longer grants the badge, but revoking it
	// would leave the organisation without an admin; an open hold keeps it.
	SourceHeld GrantSource = "held"
	// SourceRetained: the rule that granted it was removed with on_unmap
	// keep (or a last-admin hold was rejected); it stays while the user is active.
	SourceRetained GrantSource = "retained"
	// SourceBreakGlass: a break-glass account keeps what sync would revoke.
	SourceBreakGlass GrantSource = "break_glass"
)

// Grant is one reason a user holds a badge.
type Grant struct {
	Badge  Badge       `json:"badge"`
	Rule   string      `json:"rule"`            // "default", GroupRule.String() or RoleRule.String()
	Group  string      `json:"group,omitempty"` // the group id, for a group rule
	Role   string      `json:"role,omitempty"`  // the role slug, for a role rule
	Source GrantSource `json:"source"`
}

// Grants returns every grant the configuration gives subject s, sorted by badge,
// then rule, then group, then role. An inactive subject gets none.
func (c *Config) Grants(s Subject) []Grant {
	if !s.Active {
		return nil
	}
	var out []Grant
	for _, b := range c.DefaultBadges {
		out = append(out, Grant{Badge: b, Rule: RuleDefault, Source: SourceDefault})
	}
	for _, r := range c.Groups {
		for _, g := range s.Groups {
			if r.Matches(g) {
				for _, b := range r.Badges {
					out = append(out, Grant{Badge: b, Rule: r.String(), Group: g.ID, Source: SourceGroup})
				}
			}
		}
	}
	for _, r := range c.Roles {
		if slices.Contains(s.Roles, r.Slug) {
			for _, b := range r.Badges {
				out = append(out, Grant{Badge: b, Rule: r.String(), Role: r.Slug, Source: SourceRole})
			}
		}
	}
	slices.SortFunc(out, compareGrant)
	return slices.CompactFunc(out, func(a, b Grant) bool { return compareGrant(a, b) == 0 })
}

func compareGrant(a, b Grant) int {
	return cmpChain(
		strings.Compare(string(a.Badge), string(b.Badge)),
		strings.Compare(a.Rule, b.Rule),
		strings.Compare(a.Group, b.Group),
		strings.Compare(a.Role, b.Role),
	)
}

func cmpChain(cs ...int) int {
	for _, c := range cs {
		if c != 0 {
			return c
		}
	}
	return 0
}

// Badges returns the sorted, unique badge names of grants.
func Badges(grants []Grant) []Badge {
	out := make([]Badge, 0, len(grants))
	for _, g := range grants {
		out = append(out, g.Badge)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// Rules returns the names of every rule in the configuration, in order.
func (c *Config) Rules() []string {
	var out []string
	for _, r := range c.Groups {
		out = append(out, r.String())
	}
	for _, r := range c.Roles {
		out = append(out, r.String())
	}
	return out
}

// GrantsAdmin reports whether at least one group or role rule grants AdminBadge.
func (c *Config) GrantsAdmin() bool {
	for _, r := range c.Groups {
		if slices.Contains(r.Badges, c.AdminBadge) {
			return true
		}
	}
	for _, r := range c.Roles {
		if slices.Contains(r.Badges, c.AdminBadge) {
			return true
		}
	}
	return false
}

// Validate returns one error per problem, each naming its key under "mapping.".
func (c *Config) Validate() []error {
	var errs []error
	if strings.TrimSpace(string(c.AdminBadge)) == "" {
		errs = append(errs, fmt.Errorf("mapping.admin_badge: must not be empty"))
	}
	for i, b := range c.DefaultBadges {
		if strings.TrimSpace(string(b)) == "" {
			errs = append(errs, fmt.Errorf("mapping.default_badges[%d]: must not be empty", i))
		}
	}
	for i, r := range c.Groups {
		key := fmt.Sprintf("mapping.groups[%d]", i)
		if r.ID == "" && r.IdpID == "" && r.Name == "" {
			errs = append(errs, fmt.Errorf("%s: needs one of id, idp_id or name", key))
		}
		if len(r.Badges) == 0 {
			errs = append(errs, fmt.Errorf("%s.badges: must list at least one badge", key))
		}
		for j, b := range r.Badges {
			if strings.TrimSpace(string(b)) == "" {
				errs = append(errs, fmt.Errorf("%s.badges[%d]: must not be empty", key, j))
			}
		}
		switch r.OnUnmap {
		case "", OnUnmapKeep, OnUnmapRemove:
		default:
			errs = append(errs, fmt.Errorf("%s.on_unmap: %q is not keep or remove", key, r.OnUnmap))
		}
	}
	for i, r := range c.Roles {
		key := fmt.Sprintf("mapping.roles[%d]", i)
		if r.Slug == "" {
			errs = append(errs, fmt.Errorf("%s.slug: must not be empty", key))
		}
		if len(r.Badges) == 0 {
			errs = append(errs, fmt.Errorf("%s.badges: must list at least one badge", key))
		}
	}
	return errs
}
