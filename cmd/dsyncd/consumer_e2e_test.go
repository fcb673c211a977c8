package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/dsyncd/dsyncd/config"
	"github.com/dsyncd/dsyncd/events/synth"
	"github.com/dsyncd/dsyncd/mapping"
	"github.com/dsyncd/dsyncd/storage"
)

var consumerBuilt struct {
	once      sync.Once
	path, dir string
	out       []byte
	err       error
}

// consumerBinary builds cmd/dsyncd-example-consumer once per test run.
func consumerBinary(t *testing.T) string {
	t.Helper()
	consumerBuilt.once.Do(func() {
		if consumerBuilt.dir, consumerBuilt.err = os.MkdirTemp("", "dsyncd-consumer-"); consumerBuilt.err != nil {
			return
		}
		consumerBuilt.path = filepath.Join(consumerBuilt.dir, "dsyncd-example-consumer")
		goTool, err := exec.LookPath("go")
		if err != nil {
			goTool = filepath.Join(os.Getenv("GOROOT"), "bin", "go")
		}
		consumerBuilt.out, consumerBuilt.err = exec.Command(goTool, "build", "-buildvcs=false", "-o", consumerBuilt.path, "../dsyncd-example-consumer").CombinedOutput()
	})
	if consumerBuilt.err != nil {
		t.Fatalf("go build the example consumer: %v\n%s", consumerBuilt.err, consumerBuilt.out)
	}
	return consumerBuilt.path
}

// consumerProcess is the example consumer running as a child process.
type consumerProcess struct {
	mode   string
	cmd    *exec.Cmd
	out    string // its -out file
	stdout *syncBuffer
	stderr *syncBuffer
	seqs   chan uint64 // the seqs its -v lines say it applied
	loaded chan uint64 // the seq of the export it loaded
	exit   chan error
}

func startConsumer(t *testing.T, mode string, args ...string) *consumerProcess {
	t.Helper()
	p := &consumerProcess{mode: mode, out: filepath.Join(t.TempDir(), mode+".json"), stdout: &syncBuffer{}, stderr: &syncBuffer{},
		seqs: make(chan uint64, 1<<16), loaded: make(chan uint64, 4), exit: make(chan error, 1)}
	p.cmd = exec.Command(consumerBinary(t), append([]string{"-mode", mode, "-out", p.out, "-v"}, args...)...)
	p.cmd.Stdout = p.stdout
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stderr, err := p.cmd.StderrPipe()
	mustf(t, err, "stderr pipe")
	mustf(t, p.cmd.Start(), "start the %s consumer", mode)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintln(p.stderr, line)
			var seq uint64
			if _, err := fmt.Sscanf(line, "seq %d applied", &seq); err == nil {
				p.seqs <- seq
			} else if _, err := fmt.Sscanf(line, "loaded the export at seq %d", &seq); err == nil {
				p.loaded <- seq
			}
		}
		p.exit <- p.cmd.Wait()
	}()
	t.Cleanup(func() {
		if p.cmd.ProcessState == nil {
			_ = p.cmd.Process.Kill()
		}
	})
	return p
}

// waitLoaded waits until the consumer has loaded its export, and returns its seq.
func (p *consumerProcess) waitLoaded(t *testing.T) uint64 {
	t.Helper()
	select {
	case s := <-p.loaded:
		return s
	case err := <-p.exit:
		t.Fatalf("%s consumer exited (%v) before loading the export:\n%s", p.mode, err, p.stderr.String())
	case <-time.After(60 * time.Second):
		t.Fatalf("%s consumer did not load the export within 60s:\n%s", p.mode, p.stderr.String())
	}
	return 0
}

// waitSeq waits until the consumer says it applied seq.
func (p *consumerProcess) waitSeq(t *testing.T, seq uint64) {
	t.Helper()
	deadline := time.After(60 * time.Second)
	for {
		select {
		case s := <-p.seqs:
			if s >= seq {
				return
			}
		case err := <-p.exit:
			t.Fatalf("%s consumer exited (%v) before seq %d:\n%s", p.mode, err, seq, p.stderr.String())
		case <-deadline:
			t.Fatalf("%s consumer did not apply seq %d within 60s:\n%s", p.mode, seq, p.stderr.String())
		}
	}
}

// stop sends SIGTERM and returns the mirror it wrote.
func (p *consumerProcess) stop(t *testing.T) (seq uint64, users map[string]storage.ExportUser) {
	t.Helper()
	mustf(t, p.cmd.Process.Signal(syscall.SIGTERM), "SIGTERM the %s consumer", p.mode)
	select {
	case err := <-p.exit:
		if err != nil {
			t.Fatalf("%s consumer: %v after SIGTERM:\n%s", p.mode, err, p.stderr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("%s consumer did not stop on SIGTERM", p.mode)
	}
	b, err := os.ReadFile(p.out)
	mustf(t, err, "the %s consumer's mirror", p.mode)
	var m struct {
		Seq   uint64               `json:"seq"`
		Users []storage.ExportUser `json:"users"`
	}
	mustf(t, json.Unmarshal(b, &m), "decode the %s mirror", p.mode)
	users = map[string]storage.ExportUser{}
	for _, u := range m.Users {
		users[u.ID] = u
	}
	return m.Seq, users
}

// TestExampleConsumerMirrorsTheExportOnEveryWayOut: WorkOS-signed events
// posted to serve reach the example consumer by the long-poll, the
// JetStream stream and the signed webhooks out; each, bootstrapped from an
// export part way, ends with a mirror equal to the export's users at its
// change_seq (it exits 2 on a seq gap), and prints a revoke line for the
// users deprovisioned, deleted, or stripped of a badge.
func TestExampleConsumerMirrorsTheExportOnEveryWayOut(t *testing.T) {
	consumerBinary(t) // before the daemon: the build takes the CPU
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	mustf(t, err, "a port for the webhooks out")
	hookAddr := ln.Addr().String()
	ln.Close()
	const productSecret = "whsec_product_e2e"
	cfg := testConfig(t)
	cfg.Changes.Webhook.URL = "http://" + hookAddr + "/dsyncd"
	cfg.Changes.Webhook.Secret = productSecret
	cfg.Mapping.Roles = append(cfg.Mapping.Roles, mapping.RoleRule{Slug: "billing", Badges: []mapping.Badge{"billing"}})
	cfg.Safeguards.MaxDeprovisions = config.MaxDeprovisionsConfig{} // the deprovisions below apply at once
	d := startDaemon(t, cfg, nil)
	token := filepath.Join(cfg.DataDir, "api.token")
	if _, err := os.Stat(token); err != nil {
		t.Fatalf("serve wrote no api.token: %v", err)
	}

	stream := synth.Stream(synth.Options{Seed: 21, Users: 40, Groups: 5, MembershipsPerUser: 2, Changes: 200, OrganizationID: "org_1", AdminGroupName: "App Admins"})
	half := len(stream) / 2
	for _, e := range stream[:half] {
		postSigned(t, d, e.Body)
	}
	waitApplied(t, d)

	server := "http://" + d.Addr()
	consumers := []*consumerProcess{
		startConsumer(t, "longpoll", "-server", server, "-token-file", token),
		startConsumer(t, "jetstream", "-server", server, "-token-file", token, "-nats", d.q.ClientURL()),
		startConsumer(t, "webhook", "-server", server, "-token-file", token, "-listen", hookAddr, "-secret", productSecret),
	}
	var bootSeq uint64
	for i, p := range consumers {
		// Each bootstraps from the same export, so each prints the same revoke lines.
		if s := p.waitLoaded(t); s == 0 || i > 0 && s != bootSeq {
			t.Fatalf("%s consumer loaded the export at seq %d (the others at %d)", p.mode, s, bootSeq)
		} else {
			bootSeq = s
		}
	}
	for _, e := range stream[half:] {
		postSigned(t, d, e.Body)
	}
	waitApplied(t, d)

	// Three users lose access the three ways, last.
	var before struct {
		Users []storage.ExportUser `json:"users"`
	}
	mustf(t, json.Unmarshal(apiGetT(t, d, "/v1/export"), &before), "export")
	var deprov, deleted, stripped *storage.ExportUser
	for i := range before.Users {
		u := &before.Users[i]
		switch {
		case u.State != "active" || u.Email == "" || u.HeldBy != 0 || hasBadge(u, "admin"):
		case stripped == nil && hasBadge(u, "billing"):
			stripped = u
		case deprov == nil:
			deprov = u
		case deleted == nil:
			deleted = u
		}
	}
	if deprov == nil || deleted == nil || stripped == nil {
		t.Fatalf("the stream left no users to deprovision, delete and strip of billing: %v %v %v", deprov, deleted, stripped)
	}
	now := time.Now().UTC()
	for i, ev := range []struct {
		typ   string
		u     *storage.ExportUser
		state string
		role  string
	}{
		{"dsync.user.updated", deprov, "inactive", ""},
		{"dsync.user.deleted", deleted, "inactive", ""},
		{"dsync.user.updated", stripped, "active", "viewer"},
	} {
		data := map[string]any{"id": ev.u.ID, "directory_id": ev.u.DirectoryID, "organization_id": ev.u.OrganizationID, "idp_id": ev.u.IdpID,
			"email": ev.u.Email, "first_name": ev.u.FirstName, "last_name": ev.u.LastName, "state": ev.state}
		if ev.role != "" {
			data["role"] = map[string]string{"slug": ev.role}
		}
		body, _ := json.Marshal(map[string]any{"id": fmt.Sprintf("event_e2e_revoke_%d", i), "event": ev.typ,
			"created_at": now.Add(time.Duration(i) * time.Millisecond).Format(time.RFC3339Nano), "data": data})
		postSigned(t, d, body)
	}
	waitApplied(t, d)

	var export struct {
		ChangeSeq uint64               `json:"change_seq"`
		Users     []storage.ExportUser `json:"users"`
	}
	mustf(t, json.Unmarshal(apiGetT(t, d, "/v1/export"), &export), "export")
	want := map[string]storage.ExportUser{}
	for _, u := range export.Users {
		want[u.ID] = u
	}
	t.Logf("consumers loaded the export at seq %d; the export is at seq %d with %d users", bootSeq, export.ChangeSeq, len(want))
	var firstOut string
	for i, p := range consumers {
		p.waitSeq(t, export.ChangeSeq)
		seq, got := p.stop(t)
		if seq != export.ChangeSeq || !reflect.DeepEqual(got, want) {
			t.Errorf("%s: mirror at seq %d with %d users; the export at %d has %d", p.mode, seq, len(got), export.ChangeSeq, len(want))
			for id, u := range want {
				if !reflect.DeepEqual(got[id], u) {
					t.Errorf("%s: user %s: mirror %+v, export %+v", p.mode, id, got[id], u)
					break
				}
			}
		}
		out := p.stdout.String()
		for _, line := range []string{
			"revoke sessions: " + deprov.Email + " (deprovisioned)",
			"revoke sessions: " + deleted.Email + " (deleted)",
			"revoke sessions: " + stripped.Email + " (lost badge billing)",
		} {
			if !strings.Contains(out, line+"\n") {
				t.Errorf("%s consumer did not print %q; it printed:\n%s", p.mode, line, out)
			}
		}
		if i == 0 {
			firstOut = out
		} else if out != firstOut {
			t.Errorf("%s consumer's revoke lines differ from the long-poll's:\n%s\nvs\n%s", p.mode, out, firstOut)
		}
		if strings.Contains(p.stderr.String(), "refused a webhook") {
			t.Errorf("%s consumer refused a webhook out:\n%s", p.mode, p.stderr.String())
		}
	}
}

func hasBadge(u *storage.ExportUser, b mapping.Badge) bool {
	for _, x := range u.Badges {
		if x == b {
			return true
		}
	}
	return false
}
