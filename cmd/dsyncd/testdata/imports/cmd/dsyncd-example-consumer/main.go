package main

import "github.com/nats-io/nats.go/jetstream"
