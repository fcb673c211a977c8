// Package harness runs `dsyncd serve` as a subprocess and drives it over
// loopback HTTP: signed webhook posts with WorkOS-like retries, /metrics
// scraping, /readyz polling, SIGKILL/SIGTERM, and /proc memory readings. It is
// shared by cmd/dsyncd-load (make bench-e2e) and cmd/dsyncd-soak (make soak).
//
// Everything is bounded by contexts or deadlines; nothing leaves loopback.
package harness

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago,
// for a server started next. It is picked at random below the kernel's
// ephemeral range (32768-60999 by default), not by listening on port 0: a
// port the kernel hands out for port 0 is one it may give the next moment
// to any outgoing connection as its source port, before the server binds
// it (a nats-server of a test cluster then never became ready).
func FreePort() (int, error) {
	const first, n = 20000, 12000
	for range 200 {
		p := first + rand.IntN(n)
		ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
		if err == nil {
			ln.Close()
			return p, nil
		}
	}
	return 0, fmt.Errorf("no free port on 127.0.0.1 between %d and %d", first, first+n-1)
}

// Config is what WriteConfig puts in a dsyncd configuration file.
type Config struct {
	DataDir  string
	Listen   string // 127.0.0.1:port
	Secret   string
	LogLevel string // default warn
	// AdminRule grants the admin badge through the "App Admins" group (the
	// production shape). Without it no rule grants the protected badge,
	// safeguards.allow_no_admin_rule is set and the mass-deprovisioning
	// breaker is off: the store's final state is then independent of the
	// delivery order (the last-admin safeguard and the breaker are
	// order-dependent by design).
	AdminRule bool
	// ReadTimeout is http.read_timeout; zero keeps the default (10s).
	ReadTimeout time.Duration
	// AckWait is worker.ack_wait; zero keeps the default (30s).
	AckWait time.Duration
	// MaxBytes is nats.max_bytes; zero keeps the default (4 GiB), -1 means unlimited (0 in the file).
	MaxBytes int64
	// NATSListen is nats.listen (the embedded server's client address),
	// for a harness that reads the change stream; empty keeps the default.
	NATSListen string
	// ChangesOff sets changes.enabled: false (the feed off, for comparisons).
	ChangesOff bool
	// ChangesWebhookURL and ChangesWebhookSecret set changes.webhook.*.
	ChangesWebhookURL, ChangesWebhookSecret string
}

// WriteConfig writes c as a dsyncd YAML configuration file at path.
func WriteConfig(path string, c Config) error {
	if c.LogLevel == "" {
		c.LogLevel = "warn"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "data_dir: %q\n", c.DataDir)
	fmt.Fprintf(&b, "log:\n  level: %s\n  format: json\n", c.LogLevel)
	fmt.Fprintf(&b, "http:\n  listen: %q\n", c.Listen)
	if c.ReadTimeout > 0 {
		fmt.Fprintf(&b, "  read_timeout: %s\n", c.ReadTimeout)
	}
	fmt.Fprintf(&b, "webhook:\n  enabled: true\n  secrets:\n    - %q\n", c.Secret)
	if c.MaxBytes != 0 || c.NATSListen != "" {
		b.WriteString("nats:\n")
	}
	switch {
	case c.MaxBytes < 0:
		b.WriteString("  max_bytes: 0\n")
	case c.MaxBytes > 0:
		fmt.Fprintf(&b, "  max_bytes: %d\n", c.MaxBytes)
	}
	if c.NATSListen != "" {
		fmt.Fprintf(&b, "  listen: %q\n", c.NATSListen)
	}
	if c.ChangesOff {
		b.WriteString("changes:\n  enabled: false\n")
	} else if c.ChangesWebhookURL != "" {
		fmt.Fprintf(&b, "changes:\n  webhook:\n    url: %q\n    secret: %q\n", c.ChangesWebhookURL, c.ChangesWebhookSecret)
	}
	if c.AdminRule {
		b.WriteString(`mapping:
  admin_badge: admin
  default_badges: [member]
  groups:
    - name: App Admins
      badges: [admin]
      on_unmap: keep
    - name: Group 3
      badges: [three]
      on_unmap: keep
  roles:
    - slug: billing
      badges: [billing]
`)
	} else {
		b.WriteString(`mapping:
  admin_badge: admin
  default_badges: [member]
  groups:
    - name: App Admins
      badges: [app-admin]
      on_unmap: keep
    - name: Group 3
      badges: [three]
      on_unmap: keep
  roles:
    - slug: billing
      badges: [billing]
safeguards:
  allow_no_admin_rule: true
  max_deprovisions:
    count: 0
    percent: 0
    window: 0s
`)
	}
	if c.AckWait > 0 {
		fmt.Fprintf(&b, "worker:\n  ack_wait: %s\n", c.AckWait)
	}
	return os.WriteFile(path, []byte(b.String()), 0o600)
}

// Daemon is one `dsyncd serve` subprocess. Start it again after Kill or Stop
// to restart it on the same configuration, data and port. With Args set it
// runs Bin with those arguments instead (e.g. a nats-server); WaitReady and
// the URLs are then meaningless, use WaitListening.
type Daemon struct {
	Bin     string   // path of the dsyncd binary
	Config  string   // --config file
	Args    []string // arguments instead of `serve --config Config`
	Env     []string // extra KEY=VALUE pairs, on top of the current environment
	Listen  string   // http.listen, e.g. 127.0.0.1:41234
	LogPath string   // stdout and stderr are appended here

	mu      sync.Mutex
	cmd     *exec.Cmd
	exited  chan struct{}
	waitErr error
	starts  int
}

// URL is the daemon's base URL.
func (d *Daemon) URL() string { return "http://" + d.Listen }

// WebhookURL is where webhooks are posted.
func (d *Daemon) WebhookURL() string { return d.URL() + WebhookPath }

// WebhookPath is webhook.path in the configurations the harness writes (the default).
const WebhookPath = "/webhooks/workos"

// Start launches `dsyncd serve --config Config`. It does not wait for readiness.
func (d *Daemon) Start() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cmd != nil {
		select {
		case <-d.exited:
		default:
			return errors.New("harness: daemon already running")
		}
	}
	logf, err := os.OpenFile(d.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	args := d.Args
	if args == nil {
		args = []string{"serve", "--config", d.Config}
	}
	cmd := exec.Command(d.Bin, args...)
	cmd.Env = append(os.Environ(), d.Env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("harness: start %s: %w", d.Bin, err)
	}
	exited := make(chan struct{})
	d.cmd, d.exited, d.waitErr = cmd, exited, nil
	d.starts++
	go func() {
		err := cmd.Wait()
		logf.Close()
		d.mu.Lock()
		d.waitErr = err
		d.mu.Unlock()
		close(exited)
	}()
	return nil
}

// Starts is how many times Start succeeded.
func (d *Daemon) Starts() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.starts
}

// PID is the running process's id, 0 when none.
func (d *Daemon) PID() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cmd == nil || d.cmd.Process == nil {
		return 0
	}
	return d.cmd.Process.Pid
}

// Exited is closed when the current process has exited.
func (d *Daemon) Exited() <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.exited == nil {
		c := make(chan struct{})
		close(c)
		return c
	}
	return d.exited
}

// Running reports whether the current process is alive.
func (d *Daemon) Running() bool {
	select {
	case <-d.Exited():
		return false
	default:
		return true
	}
}

// ExitErr is the current process's Wait error once it has exited.
func (d *Daemon) ExitErr() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.waitErr
}

// WaitReady polls GET /readyz until it answers 200, the process exits, or ctx ends.
func (d *Daemon) WaitReady(ctx context.Context, c *http.Client) error {
	exited := d.Exited()
	for {
		if code, _, err := Get(ctx, c, d.URL()+"/readyz"); err == nil && code == http.StatusOK {
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("harness: dsyncd exited before it was ready (%v); log: %s\n%s", d.ExitErr(), d.LogPath, Tail(d.LogPath, 20))
		case <-ctx.Done():
			return fmt.Errorf("harness: dsyncd not ready: %w; log: %s\n%s", ctx.Err(), d.LogPath, Tail(d.LogPath, 20))
		case <-time.After(25 * time.Millisecond):
		}
	}
}

// WaitListening polls until addr accepts TCP connections, the process exits,
// or ctx ends.
func (d *Daemon) WaitListening(ctx context.Context, addr string) error {
	exited := d.Exited()
	var dialer net.Dialer
	for {
		dctx, cancel := context.WithTimeout(ctx, time.Second)
		conn, err := dialer.DialContext(dctx, "tcp", addr)
		cancel()
		if err == nil {
			return conn.Close()
		}
		select {
		case <-exited:
			return fmt.Errorf("harness: %s exited before it listened on %s (%v); log: %s\n%s", d.Bin, addr, d.ExitErr(), d.LogPath, Tail(d.LogPath, 20))
		case <-ctx.Done():
			return fmt.Errorf("harness: %s not listening on %s: %w; log: %s\n%s", d.Bin, addr, ctx.Err(), d.LogPath, Tail(d.LogPath, 20))
		case <-time.After(25 * time.Millisecond):
		}
	}
}

// Kill sends SIGKILL and waits for the process to exit.
func (d *Daemon) Kill() error {
	pid := d.PID()
	if pid == 0 || !d.Running() {
		return errors.New("harness: daemon not running")
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		return err
	}
	select {
	case <-d.Exited():
		return nil
	case <-time.After(30 * time.Second):
		return fmt.Errorf("harness: %s did not die within 30s of SIGKILL", d.Bin)
	}
}

// Stop sends SIGTERM and waits up to timeout for a clean exit (status 0);
// past it the process is killed and Stop reports the timeout.
func (d *Daemon) Stop(timeout time.Duration) error {
	pid := d.PID()
	if pid == 0 || !d.Running() {
		return fmt.Errorf("harness: daemon not running (exit: %v)", d.ExitErr())
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		return err
	}
	select {
	case <-d.Exited():
		if err := d.ExitErr(); err != nil {
			return fmt.Errorf("harness: %s exited with %v after SIGTERM; log: %s", d.Bin, err, d.LogPath)
		}
		return nil
	case <-time.After(timeout):
		_ = syscall.Kill(pid, syscall.SIGKILL)
		<-d.Exited()
		return fmt.Errorf("harness: %s did not stop within %s of SIGTERM (killed)", d.Bin, timeout)
	}
}

// ProcStatus is a few lines of /proc/<pid>/status, in bytes.
type ProcStatus struct {
	VmHWM, VmRSS, RssAnon, RssFile int64
}

// Status reads /proc/<pid>/status of the running process.
func (d *Daemon) Status() (ProcStatus, error) {
	pid := d.PID()
	if pid == 0 {
		return ProcStatus{}, errors.New("harness: no process")
	}
	return ReadProcStatus(pid)
}

// ReadProcStatus reads VmHWM, VmRSS, RssAnon and RssFile of pid.
func ReadProcStatus(pid int) (ProcStatus, error) {
	f, err := os.Open(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	if err != nil {
		return ProcStatus{}, err
	}
	defer f.Close()
	var s ProcStatus
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		fields := strings.Fields(v)
		if len(fields) != 2 || fields[1] != "kB" {
			continue
		}
		n, err := strconv.ParseInt(fields[0], 10, 64)
		if err != nil {
			continue
		}
		switch k {
		case "VmHWM":
			s.VmHWM = n << 10
		case "VmRSS":
			s.VmRSS = n << 10
		case "RssAnon":
			s.RssAnon = n << 10
		case "RssFile":
			s.RssFile = n << 10
		}
	}
	return s, sc.Err()
}

// Tail returns the last n lines of the file at path (for error messages).
func Tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Run runs bin with args (for `dsyncd replay` and `dsyncd export`), with a
// deadline, and returns its stdout. A non-zero exit is an error carrying stderr.
func Run(ctx context.Context, bin string, env []string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(), env...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%s %s: %w: %s", filepath.Base(bin), strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// MiB formats a byte count in MiB.
func MiB(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

// userHZ is the unit of the CPU times in /proc/<pid>/stat (USER_HZ, 100 on
// every Linux architecture Go supports).
const userHZ = 100

// ReadProcCPU returns the user + system CPU time pid has used so far, from
// /proc/<pid>/stat.
func ReadProcCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return 0, err
	}
	// Fields after the command name, which is in parentheses and may hold spaces.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("harness: /proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 { // state is f[0]; utime and stime are fields 14 and 15 of stat(5)
		return 0, fmt.Errorf("harness: /proc/%d/stat: %d fields", pid, len(f))
	}
	var ticks int64
	for _, s := range f[11:13] {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("harness: /proc/%d/stat: %w", pid, err)
		}
		ticks += n
	}
	return time.Duration(ticks) * time.Second / userHZ, nil
}

// CPU returns the CPU time the running process has used so far.
func (d *Daemon) CPU() (time.Duration, error) {
	pid := d.PID()
	if pid == 0 {
		return 0, errors.New("harness: no process")
	}
	return ReadProcCPU(pid)
}
