package storage

// A deleted directory (dsync.deleted) keeps its users, groups and badges
// unless safeguards.on_directory_deleted is deprovision: then every user,
// group and membership older than the deletion ends (break-glass accounts
// excepted). It opens no hold.

// deprovisionDirectory ends every user and group of d older than its
// deletion, when the policy is deprovision.
func (c *change) deprovisionDirectory(d *dirRec) error {
	if c.s.opts.Safeguards.OnDirectoryDeleted != OnDirectoryDeletedDeprovision {
		return nil
	}
	err := eachPrefix(c.t.dirUsers, d.ID, func(uid string) error {
		u, err := c.t.user(uid)
		if err != nil || u == nil {
			return err
		}
		// A user newer than the deletion stays, but its memberships older
		// than the deletion end: its badges change too.
		c.touch(uid)
		if !u.RolesKey.newer(d.DeletedKey) && (u.Roles != nil || u.RolesKey != (key{})) {
			// Roles carried only by events older than the deletion go with it.
			u.Roles, u.RolesKey = nil, key{}
			if err := c.t.putUser(u); err != nil {
				return err
			}
		}
		if !d.DeletedKey.newer(u.Key) {
			return nil
		}
		if c.s.breakGlass(u) {
			return c.s.auditBreakGlass(c.t, c.ev, u, c.now, "directory deprovisioned")
		}
		u.Deleted, u.Key, u.DeletedKey = true, d.DeletedKey, maxKey(u.DeletedKey, d.DeletedKey)
		c.touch(uid)
		return c.t.putUser(u)
	})
	if err != nil {
		return err
	}
	return eachPrefix(c.t.dirGroups, d.ID, func(gid string) error {
		g, err := c.t.group(gid)
		if err != nil || g == nil || !d.DeletedKey.newer(g.Key) {
			return err
		}
		g.Deleted, g.Key, g.DeletedKey = true, d.DeletedKey, maxKey(g.DeletedKey, d.DeletedKey)
		return c.t.putGroup(g)
	})
}

// Directory deletion policies (safeguards.on_directory_deleted).
const (
	OnDirectoryDeletedKeep        = "keep"
	OnDirectoryDeletedDeprovision = "deprovision"
)
