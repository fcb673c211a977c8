package storage

// The tests check every breaker count against a count of every user.
func init() { verifyOrgCounts = true }

// WithoutOrgCountCheck turns that check off until the returned func runs
// (for benchmarks, which measure the counts as the daemon takes them).
func WithoutOrgCountCheck() (restore func()) {
	verifyOrgCounts = false
	return func() { verifyOrgCounts = true }
}
