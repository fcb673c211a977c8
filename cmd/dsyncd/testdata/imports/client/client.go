package client

import (
	"net/http"

	"github.com/dsyncd/dsyncd/events"
	"go.uber.org/zap"
)
