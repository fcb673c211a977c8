package main

import (
	"time"

	"github.com/dsyncd/dsyncd/events"
)

// sign signs body now as dsyncd's webhooks out do.
func sign(secret, body string) string { return events.Sign(secret, time.Now(), []byte(body)) }
