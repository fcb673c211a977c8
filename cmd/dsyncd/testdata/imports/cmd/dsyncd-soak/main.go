package main

import "github.com/nats-io/nats-server/v2/server"
