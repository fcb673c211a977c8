package worker

import "github.com/nats-io/nats.go/jetstream"
