package mapping

import (
	"os"
	"strings"

	"github.com/dsyncd/dsyncd/events"
)
