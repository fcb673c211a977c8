package main

// More than one node on one NATS cluster: each node's identity and its
// lease, the leader lease (one poller and one reconciler cluster-wide), and
// the control messages through which every decision that changes the store
// reaches every node at the same position of the stream.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/dsyncd/dsyncd/config"
	"github.com/dsyncd/dsyncd/mapping"
	"github.com/dsyncd/dsyncd/queue"
	"github.com/dsyncd/dsyncd/server"
	"github.com/dsyncd/dsyncd/storage"
	"github.com/dsyncd/dsyncd/worker"
)

// legacyDurable is the worker's consumer when node.id is unset: the one
// every single-node dsyncd has used, kept so that it upgrades in place.
const legacyDurable = "dsyncd-worker"

// leaderKey is the lease of the node that polls and reconciles.
const leaderKey = "leader"

// controlWait bounds how long an operator request waits for this node to
// apply the decision it published.
const controlWait = 30 * time.Second

// nodeID is node.id, or the host name (made a valid id) when it is unset.
func nodeID(cfg config.Config) string {
	if cfg.Node.ID != "" {
		return cfg.Node.ID
	}
	h, err := os.Hostname()
	if err != nil || h == "" {
		return "dsyncd"
	}
	var b strings.Builder
	for _, r := range h {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	return b.String()
}

// durableFor is the worker's consumer: dsyncd-worker-<node.id>, or
// dsyncd-worker when node.id is unset.
func durableFor(cfg config.Config) string {
	if cfg.Node.ID == "" {
		return legacyDurable
	}
	return legacyDurable + "-" + cfg.Node.ID
}

// nodeInfo is what a node writes into its leases: who holds them.
type nodeInfo struct {
	Node     string    `json:"node"`
	Consumer string    `json:"consumer"`
	Host     string    `json:"host"`
	PID      int       `json:"pid"`
	Store    string    `json:"store"`
	HTTP     string    `json:"http"`
	Started  time.Time `json:"started"`
}

func (n nodeInfo) String() string {
	return fmt.Sprintf("node %s (host %s, pid %d, http %s, store %s, since %s)", n.Node, n.Host, n.PID, n.HTTP, n.Store,
		n.Started.UTC().Format(time.RFC3339))
}

func (d *daemon) info() nodeInfo {
	host, _ := os.Hostname()
	return nodeInfo{Node: d.node, Consumer: d.durable, Host: host, PID: os.Getpid(), Store: d.cfg.StorePath(),
		HTTP: d.cfg.HTTP.Listen, Started: d.started}
}

// claimNode takes the lease on this node's consumer, which names the node:
// while a live node holds it, this one refuses to start, naming that node.
// A holder on this host with this store file is this node's own dead
// predecessor (the store's file lock, which this process holds, would have
// kept it out otherwise): its lease is taken over at once.
func (d *daemon) claimNode(ctx context.Context) error {
	me := d.info()
	value, _ := json.Marshal(me)
	l, err := d.q.ClaimLease(ctx, "node."+d.durable, value, d.leaseTTL, func(holder []byte) bool {
		var h nodeInfo
		return json.Unmarshal(holder, &h) == nil && h.Host == me.Host && h.Store == me.Store
	})
	var held *queue.LeaseHeldError
	if errors.As(err, &held) {
		var h nodeInfo
		who := string(held.Holder)
		if json.Unmarshal(held.Holder, &h) == nil {
			who = h.String()
		}
		hint := "give each node its own node.id"
		if d.cfg.Node.ID == "" {
			hint = "node.id is unset, so this node uses the single-node consumer " + legacyDurable + ": set node.id on every node of a cluster"
		}
		return fmt.Errorf("node.id %s: consumer %s is in use by the live %s, renewed %s ago; %s (the lease of a node that died expires within %s)",
			d.node, d.durable, who, held.Age.Round(time.Second), hint, d.leaseTTLOrDefault())
	}
	if err != nil {
		return fmt.Errorf("%s: node lease: %w", natsKeys(d.cfg), err)
	}
	d.nodeLease = l
	return nil
}

func (d *daemon) leaseTTLOrDefault() time.Duration {
	if d.leaseTTL > 0 {
		return d.leaseTTL
	}
	return queue.DefaultLeaseTTL
}

// campaign runs for the leader lease: its holder alone polls the Events API,
// runs the scheduled reconciliation and delivers the webhooks out. A receiver-only node does not
// campaign (its store is not current).
func (d *daemon) campaign(ctx context.Context) error {
	me := d.info()
	value, _ := json.Marshal(me)
	l, err := d.q.Campaign(ctx, leaderKey, value, d.leaseTTL, func(holder []byte) bool {
		// This node's own dead predecessor (as in claimNode): a single node
		// restarted after a crash leads again at once.
		var h nodeInfo
		return json.Unmarshal(holder, &h) == nil && h.Host == me.Host && h.Store == me.Store
	}, func(held bool) {
		if held {
			d.log.Info("this node now polls, reconciles and delivers the webhooks out (leader)", zap.String("node", d.node))
		} else {
			d.log.Info("this node no longer polls, reconciles nor delivers the webhooks out (another node leads)", zap.String("node", d.node))
		}
		d.leadershipMu.Lock()
		close(d.leadership)
		d.leadership = make(chan struct{})
		d.leadershipMu.Unlock()
	})
	if err != nil {
		return fmt.Errorf("%s: leader lease: %w", natsKeys(d.cfg), err)
	}
	d.leaderLease = l
	return nil
}

// leadershipChange returns a channel closed at the next change of
// leadership; take it before asking Leader, so that no change in between
// goes unnoticed.
func (d *daemon) leadershipChange() <-chan struct{} {
	d.leadershipMu.Lock()
	defer d.leadershipMu.Unlock()
	return d.leadership
}

// Leader reports whether this node holds the leader lease.
func (d *daemon) Leader() bool { return d.leaderLease.Held() }

// unavailable is a decision that could not be taken now (503).
type unavailable struct{ msg string }

func (e unavailable) Error() string     { return e.msg }
func (e unavailable) Unavailable() bool { return true }

// controlResult is what applying a control gave, for the request waiting
// for it.
type controlResult struct {
	plan *storage.Plan
	err  error
}

// controls publishes decisions to the stream and applies those the worker
// delivers, handing each result to the request of this node that waits for
// it.
type controls struct {
	d       *daemon
	mu      sync.Mutex
	waiting map[string]chan controlResult
}

var _ server.Decisions = (*controls)(nil)

func newControls(d *daemon) *controls {
	return &controls{d: d, waiting: map[string]chan controlResult{}}
}

// do publishes c and waits until this node applied it, at most controlWait.
func (cs *controls) do(ctx context.Context, c storage.Control) (*storage.Plan, error) {
	ctx, cancel := context.WithTimeout(ctx, controlWait)
	defer cancel()
	wait, _, err := cs.publish(ctx, c)
	if err != nil {
		return nil, err
	}
	return wait(ctx)
}

// publish stores c in the stream and returns its sequence and wait, which
// waits (until ctx ends) for this node to apply it and returns the result.
func (cs *controls) publish(ctx context.Context, c storage.Control) (wait func(context.Context) (*storage.Plan, error), seq uint64, err error) {
	if !cs.d.cfg.Worker.Enabled {
		return nil, 0, unavailable{"this node only receives webhooks (worker.enabled: false): send decisions to a node that applies events"}
	}
	var b [16]byte
	_, _ = rand.Read(b[:])
	c.ID = "control:" + hex.EncodeToString(b[:])
	c.Node = cs.d.node
	data, err := json.Marshal(c)
	if err != nil {
		return nil, 0, err
	}
	ch := make(chan controlResult, 1)
	cs.mu.Lock()
	cs.waiting[c.ID] = ch
	cs.mu.Unlock()
	done := func() {
		cs.mu.Lock()
		delete(cs.waiting, c.ID)
		cs.mu.Unlock()
	}
	pctx, pcancel := context.WithTimeout(ctx, cs.d.cfg.Webhook.PublishTimeout)
	seq, err = cs.d.q.PublishControl(pctx, string(c.Kind), c.ID, data)
	pcancel()
	if err != nil {
		done()
		cs.d.log.Error("decision not published", zap.String("kind", string(c.Kind)), zap.Error(err))
		return nil, 0, unavailable{"the decision could not be stored in the stream (JetStream unavailable): nothing changed; try again"}
	}
	return func(ctx context.Context) (*storage.Plan, error) {
		defer done()
		select {
		case r := <-ch:
			return r.plan, r.err
		case <-ctx.Done():
			return nil, unavailable{fmt.Sprintf("the decision is in the stream (seq %d) but this node has not applied it yet: every node will; check with dsyncd holds", seq)}
		}
	}, seq, nil
}

func (cs *controls) DecideHold(ctx context.Context, id uint64, approve bool) (*storage.Plan, error) {
	return cs.do(ctx, storage.Control{Kind: storage.ControlHold, Hold: id, Approve: approve})
}

func (cs *controls) Resume(ctx context.Context, org string) (*storage.Plan, error) {
	return cs.do(ctx, storage.Control{Kind: storage.ControlResume, Organization: org})
}

// Mapping publishes m as the mapping in force (SIGHUP, POST /v1/mapping
// from dsyncd apply, a single node's start with a file that differs from
// the store's; the first node of a new cluster publishes its file's with
// publish directly: startingMapping). A mapping that grants no admin (unless
// safeguards.allow_no_admin_rule) is refused before it reaches the stream.
func (cs *controls) Mapping(ctx context.Context, m mapping.Config, onUnmap string) (*storage.Plan, error) {
	if err := (config.Config{Mapping: m, Safeguards: cs.d.cfg.Safeguards}).CheckAdminRule(); err != nil {
		return nil, invalid{err.Error()}
	}
	return cs.do(ctx, storage.Control{Kind: storage.ControlMapping, Mapping: &m, OnUnmap: onUnmap})
}

// invalid is a request refused for its own content (400).
type invalid struct{ msg string }

func (e invalid) Error() string { return e.msg }
func (e invalid) Invalid() bool { return true }

// apply is the worker's Control hook: it applies the control d carries,
// records its position, and hands the result to the request waiting for
// it on this node. It reports retry when the store cannot be written.
func (cs *controls) apply(d *queue.Delivery) (retry bool) {
	c, err := storage.DecodeControl(d.Data)
	var plan *storage.Plan
	if err == nil {
		c.At = d.Stored
		plan, err = cs.d.st.ApplyControl(c)
	}
	if err != nil && worker.Classify(err) == worker.RetryLater {
		cs.d.log.Error("control not applied: the store cannot be written; retrying", zap.String("kind", d.Control), zap.Error(err))
		return true
	}
	var seq uint64
	if d.HasSeq {
		seq = d.Seq
	}
	if merr := cs.d.st.MarkControlApplied(c.ID, seq, c.At); merr != nil {
		cs.d.log.Warn("could not record the control as applied in the store", zap.String("id", c.ID), zap.Uint64("seq", d.Seq), zap.Error(merr))
	}
	f := []zap.Field{zap.String("kind", string(c.Kind)), zap.String("id", c.ID), zap.String("from_node", c.Node), zap.Uint64("seq", d.Seq)}
	if errors.Is(err, storage.ErrControlApplied) {
		// Delivered again (an acknowledgement lost): its answer went out
		// the first time.
		cs.d.log.Info("control delivered again: applied before, nothing done", f...)
		return false
	}
	if err != nil {
		cs.d.log.Warn("control applied: refused", append(f, zap.Error(err))...)
	} else {
		cs.d.log.Info("control applied", f...)
	}
	if c.Kind == storage.ControlMapping && err == nil {
		if d.HasSeq {
			cs.d.recordMapping(*c.Mapping, d.Seq)
		}
		cs.d.rereadFileMapping()
		cs.d.checkMapping()
	}
	cs.mu.Lock()
	ch := cs.waiting[c.ID]
	cs.mu.Unlock()
	if ch != nil {
		ch <- controlResult{plan, err}
	}
	return false
}

// rereadFileMapping reads this node's configuration file again, when
// serve gave the way (readConfig), so that checkMapping compares the
// mapping in force with the file as it is now: a file rolled out before a
// dsyncd apply agrees without a reload. A file that cannot be read keeps
// the one read last.
func (d *daemon) rereadFileMapping() {
	if d.readConfig == nil {
		return
	}
	cfg, err := d.readConfig()
	if err != nil {
		d.log.Warn("could not read the configuration file again to compare its mapping with the one in force", zap.Error(err))
		return
	}
	d.mapMu.Lock()
	d.fileMapping = cfg.Mapping
	d.mapMu.Unlock()
}

// checkMapping compares the mapping in force (the last one the stream
// carried) with this node's file, and says so when they differ: in the log
// at once, in /readyz's degraded list until they agree.
func (d *daemon) checkMapping() { d.compareMapping(nil) }

// compareMapping is checkMapping with inForce as the mapping in force (nil:
// the store's). Calls are serialised, each reading the store in turn: the
// worker applying a mapping and a start-up check never leave a stale word.
func (d *daemon) compareMapping(inForce *mapping.Config) {
	d.mapMu.Lock()
	defer d.mapMu.Unlock()
	if inForce == nil {
		stored, err := d.st.StoredMapping()
		if err != nil || stored == nil {
			return
		}
		inForce = stored
	}
	differs := normalMapping(*inForce) != normalMapping(d.fileMapping)
	if differs && !d.mappingDiffers.Load() {
		d.log.Warn("the mapping in force (the last one the stream carried) differs from this node's configuration file: this node applies the one in force. "+
			"To make the file's the mapping of every node, run dsyncd apply --config FILE against a running node, or systemctl reload dsyncd on a node whose file has it; "+
			"to keep the one in force, give this node the file the others have",
			zap.String("node", d.node))
	}
	d.mappingDiffers.Store(differs)
}

// normalMapping makes two mappings that mean the same compare equal
// (nil and empty lists).
func normalMapping(m mapping.Config) string {
	b, _ := json.Marshal(m)
	var v any
	_ = json.Unmarshal(b, &v)
	strip(v)
	out, _ := json.Marshal(v)
	return string(out)
}

func strip(v any) {
	if m, ok := v.(map[string]any); ok {
		for k, x := range m {
			if x == nil {
				delete(m, k)
				continue
			}
			if l, ok := x.([]any); ok && len(l) == 0 {
				delete(m, k)
				continue
			}
			strip(x)
		}
	}
	if l, ok := v.([]any); ok {
		for _, x := range l {
			strip(x)
		}
	}
}
