package worker

import "time"

// The defaults of Options: New uses each for a zero field, and dsyncd's
// configuration (worker.*) states them from here.
const (
	DefaultBatchSize    = 1024
	DefaultMaxAttempts  = 5
	DefaultRetryBackoff = time.Second
	DefaultAckWait      = 30 * time.Second
	DefaultMaxYieldLag  = 30 * time.Second
)
