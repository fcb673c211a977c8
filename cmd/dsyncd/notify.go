package main

import (
	"net"
	"os"
	"strconv"
	"time"
)

// notifier speaks systemd's notify protocol: datagrams such as "READY=1" to
// the unix socket named by NOTIFY_SOCKET. Without NOTIFY_SOCKET it does nothing.
type notifier struct {
	addr string
}

func newNotifier() *notifier {
	return &notifier{addr: os.Getenv("NOTIFY_SOCKET")}
}

// Notify sends state; it reports whether a message was sent.
func (n *notifier) Notify(state string) (bool, error) {
	if n.addr == "" {
		return false, nil
	}
	addr := n.addr
	if addr[0] == '@' { // abstract namespace
		addr = "\x00" + addr[1:]
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		return false, err
	}
	defer conn.Close()
	if _, err := conn.Write([]byte(state)); err != nil {
		return false, err
	}
	return true, nil
}

// WatchdogInterval returns half of WatchdogSec when systemd asked this
// process for watchdog pings (WATCHDOG_USEC, and WATCHDOG_PID if set is ours).
func (n *notifier) WatchdogInterval() time.Duration {
	usec, err := strconv.ParseInt(os.Getenv("WATCHDOG_USEC"), 10, 64)
	if err != nil || usec <= 0 {
		return 0
	}
	if pid := os.Getenv("WATCHDOG_PID"); pid != "" && pid != strconv.Itoa(os.Getpid()) {
		return 0
	}
	return time.Duration(usec) * time.Microsecond / 2
}
