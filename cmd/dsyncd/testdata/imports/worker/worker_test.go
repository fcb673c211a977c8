package worker

import (
	"github.com/nats-io/nats.go"
	bolt "go.etcd.io/bbolt"
)
