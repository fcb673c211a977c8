package server

import bolt "go.etcd.io/bbolt"
