package main

import (
	"encoding/json"

	"github.com/dsyncd/dsyncd/client"
)

// decodeChange reads one change record (a stream message's body).
func decodeChange(b []byte, ch *client.Change) error { return json.Unmarshal(b, ch) }
