package main

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/dsyncd/dsyncd/config"
)

// The files of deploy/ are what `make install` puts on a server: these tests
// check that they work together as shipped.

const (
	deployDir  = "../../deploy"
	unitBinary = "/usr/local/bin/dsyncd"
)

// envFile returns the KEY=VALUE lines of an EnvironmentFile, comments skipped.
func envFile(t *testing.T, path string) map[string]string {
	t.Helper()
	f, err := os.Open(path)
	mustf(t, err, "open %s", path)
	defer f.Close()
	env := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("%s: %q is not KEY=VALUE", path, line)
		}
		env[k] = v
	}
	mustf(t, sc.Err(), "read %s", path)
	return env
}

// unitDirectives returns the values of each directive of a unit file.
func unitDirectives(t *testing.T, path string) map[string][]string {
	t.Helper()
	b, err := os.ReadFile(path)
	mustf(t, err, "read unit")
	out := map[string][]string{}
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, "[") {
			continue
		}
		if k, v, ok := strings.Cut(line, "="); ok {
			out[k] = append(out[k], v)
		}
	}
	return out
}

// runnableUnit is a copy of the unit whose commands point at an executable
// of this machine, for systemd-analyze, which checks that they exist.
func runnableUnit(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		t.Skip("systemd-analyze is not installed")
	}
	exe, err := os.Executable()
	mustf(t, err, "test executable")
	b, err := os.ReadFile(filepath.Join(deployDir, "dsyncd.service"))
	mustf(t, err, "read unit")
	return writeFile(t, t.TempDir(), "dsyncd.service", strings.ReplaceAll(string(b), unitBinary, exe))
}

func TestShippedConfigurationPassesCheckConfigWithTheEnvExample(t *testing.T) {
	for k, v := range envFile(t, filepath.Join(deployDir, "dsyncd.env.example")) {
		t.Setenv(k, v)
	}
	out := cli(t, 0, "check-config", "--config", filepath.Join(deployDir, "dsyncd.yaml"))
	if !strings.Contains(out, "OK") {
		t.Fatalf("check-config = %q", out)
	}
}

func TestUnitRunsTheShippedConfigurationInItsStateDirectory(t *testing.T) {
	d := unitDirectives(t, filepath.Join(deployDir, "dsyncd.service"))
	const cfgPath = "/etc/dsyncd/dsyncd.yaml"
	for key, want := range map[string]string{
		"ExecStartPre": unitBinary + " check-config --config " + cfgPath,
		"ExecStart":    unitBinary + " serve --config " + cfgPath,
	} {
		if got := d[key]; len(got) != 1 || got[0] != want {
			t.Errorf("%s = %q, want %q", key, got, want)
		}
	}
	t.Setenv("DSYNCD_WEBHOOK_SECRETS", "x")
	cfg, err := config.Load(filepath.Join(deployDir, "dsyncd.yaml"), nil)
	mustf(t, err, "load the shipped configuration")
	// StateDirectory=dsyncd is /var/lib/dsyncd, the only writable path.
	if state := d["StateDirectory"]; len(state) != 1 || "/var/lib/"+state[0] != cfg.DataDir {
		t.Errorf("StateDirectory = %q but data_dir = %q: the service could not write its store", state, cfg.DataDir)
	}
	if rw := d["ReadWritePaths"]; len(rw) != 1 || rw[0] != cfg.DataDir {
		t.Errorf("ReadWritePaths = %q, want data_dir %q", rw, cfg.DataDir)
	}
	if cfg.StorePath() != filepath.Join(cfg.DataDir, "dsyncd.db") {
		t.Errorf("store at %s, outside the state directory %s", cfg.StorePath(), cfg.DataDir)
	}
}

func TestSystemdAcceptsTheUnit(t *testing.T) {
	unit := runnableUnit(t)
	out, err := exec.Command("systemd-analyze", "verify", unit).CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}

func TestUnitHardeningRatesAtMostTwo(t *testing.T) {
	unit := runnableUnit(t)
	// --threshold is on systemd's 0-100 scale: 20 is an exposure of 2.0.
	out, err := exec.Command("systemd-analyze", "security", "--offline=true", "--threshold=20", "--no-pager", unit).CombinedOutput()
	if err != nil && strings.Contains(strings.ToLower(string(out)), "unrecognized option") {
		t.Skipf("this systemd-analyze cannot rate a unit file offline (systemd < 250): %s", out)
	}
	if err != nil {
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		t.Fatalf("systemd-analyze security: %v: %s", err, lines[len(lines)-1])
	}
}

// TestUnitBoundsWhatAFloodCanTake: the unit caps open files well above the
// connections the shipped configuration admits, and caps memory and tasks.
func TestUnitBoundsWhatAFloodCanTake(t *testing.T) {
	d := unitDirectives(t, filepath.Join(deployDir, "dsyncd.service"))
	t.Setenv("DSYNCD_WEBHOOK_SECRETS", "x")
	cfg, err := config.Load(filepath.Join(deployDir, "dsyncd.yaml"), nil)
	mustf(t, err, "load the shipped configuration")
	one := func(key string) string {
		t.Helper()
		if len(d[key]) != 1 {
			t.Fatalf("%s = %q, want it set once", key, d[key])
		}
		return d[key][0]
	}
	nofile, err := strconv.Atoi(one("LimitNOFILE"))
	mustf(t, err, "LimitNOFILE")
	// Each connection is a file; the store, the stream's files and the
	// embedded server's clients need room besides.
	if nofile < 4*cfg.HTTP.MaxConnections {
		t.Errorf("LimitNOFILE=%d leaves too little above http.max_connections=%d", nofile, cfg.HTTP.MaxConnections)
	}
	mem := one("MemoryMax")
	n, err := strconv.ParseInt(strings.TrimSuffix(mem, "G"), 10, 64)
	if err != nil || !strings.HasSuffix(mem, "G") || n < 1 || n > 4 {
		t.Errorf("MemoryMax=%s, want 1G to 4G: above the daemon's ~300 MB under load, a bound on a leak", mem)
	}
	tasks, err := strconv.Atoi(one("TasksMax"))
	if err != nil || tasks < 128 || tasks > 4096 {
		t.Errorf("TasksMax=%s, want 128 to 4096", one("TasksMax"))
	}
}
