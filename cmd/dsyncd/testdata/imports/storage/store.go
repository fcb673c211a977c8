package storage

import bolt "go.etcd.io/bbolt"
