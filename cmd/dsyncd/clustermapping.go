package main

// The mapping in force cluster-wide, kept in the positions bucket
// (queue.Positions) under mappingKey beside the stream's seq of the control
// that made it so, and the mapping a node of a cluster starts a new store
// with: the one the stream starts from, never simply its file's, so that
// two nodes given different files cannot apply different mappings to the
// same events.
//
// Every node that applies a mapping control records it, if the bucket
// holds an older one (compare-and-set on the control's seq): the node that
// published it may die between publishing and applying it, and the leader
// may change in between, so neither alone is sure to record it; a lagging
// node applying an old control finds a newer seq and writes nothing.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"go.uber.org/zap"

	"github.com/dsyncd/dsyncd/mapping"
	"github.com/dsyncd/dsyncd/queue"
	"github.com/dsyncd/dsyncd/storage"
)

// mappingKey is the positions bucket's key of the mapping in force.
const mappingKey = "mapping"

// mappingRecord is mappingKey's value: the mapping in force since the
// mapping control at stream seq Seq (or, seeded by a node that predates
// the record, since that node's applied seq).
type mappingRecord struct {
	Seq     uint64         `json:"seq"`
	Mapping mapping.Config `json:"mapping"`
}

// mappingInForce reads the record; nil when no node has written one.
func (d *daemon) mappingInForce(ctx context.Context) (*mappingRecord, uint64, error) {
	ps, err := d.positions.get(ctx)
	if err != nil {
		return nil, 0, err
	}
	return readMappingRecord(ctx, ps)
}

func readMappingRecord(ctx context.Context, ps *queue.Positions) (*mappingRecord, uint64, error) {
	v, rev, found, err := ps.Get(ctx, mappingKey)
	if err != nil || !found {
		return nil, 0, err
	}
	var r mappingRecord
	if err := json.Unmarshal([]byte(v), &r); err != nil {
		return nil, 0, fmt.Errorf("positions bucket, key %s: %w", mappingKey, err)
	}
	return &r, rev, nil
}

// firstMapping is the mapping of the first mapping control the stream
// holds at or after seq from, and its seq; nil when there is none.
func firstMapping(ctx context.Context, q *queue.Queue, from uint64) (*mapping.Config, uint64, error) {
	for {
		seq, data, found, err := q.FirstControl(ctx, string(storage.ControlMapping), from)
		if err != nil || !found {
			return nil, 0, err
		}
		if c, err := storage.DecodeControl(data); err == nil && c.Mapping != nil {
			return c.Mapping, seq, nil
		}
		from = seq + 1 // undecodable: the worker refuses it too
	}
}

// writeMapping stores m as in force since seq unless the bucket holds a
// record of seq or later (a stale writer never moves it back); with
// onlyIfNone, only when it holds none.
func (d *daemon) writeMapping(ctx context.Context, m mapping.Config, seq uint64, onlyIfNone bool) error {
	ps, err := d.positions.get(ctx)
	if err != nil {
		return err
	}
	value, err := json.Marshal(mappingRecord{Seq: seq, Mapping: m})
	if err != nil {
		return err
	}
	for range 10 {
		cur, rev, err := d.mappingInForce(ctx)
		if err != nil {
			return err
		}
		switch {
		case cur == nil:
			_, err = ps.Create(ctx, mappingKey, string(value))
		case onlyIfNone || cur.Seq >= seq:
			return nil
		default:
			_, err = ps.Update(ctx, mappingKey, string(value), rev)
		}
		if !errors.Is(err, queue.ErrPositionMoved) {
			return err
		}
		// Another node wrote it meanwhile: read it again.
	}
	return fmt.Errorf("positions bucket, key %s: still moving after 10 attempts", mappingKey)
}

// recordMapping is the worker's part: a node of a cluster that applied the
// mapping control at seq records it as the mapping in force. A failure is
// logged: the other nodes record it too, and so does the next change.
func (d *daemon) recordMapping(m mapping.Config, seq uint64) {
	if d.cfg.Node.ID == "" {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), positionTimeout)
	defer cancel()
	if err := d.writeMapping(ctx, m, seq, false); err != nil {
		d.log.Warn("could not record the mapping in force in NATS (a node added later reads it there)", zap.Uint64("seq", seq), zap.Error(err))
	}
}

// seedMapping records a node's stored mapping when NATS holds none: a
// cluster upgraded in place, whose mapping has not changed since, so that
// a node added to it does not take its own file's for the cluster's.
func (d *daemon) seedMapping(ctx context.Context, stored mapping.Config) {
	applied, _, err := d.st.AppliedSeq()
	if err == nil {
		ctx, cancel := context.WithTimeout(ctx, positionTimeout)
		err = d.writeMapping(ctx, stored, applied, true)
		cancel()
	}
	if err != nil {
		d.log.Warn("could not read or record the mapping in force in NATS", zap.Error(err))
	}
}

// startingMapping is the mapping a node of a cluster (worker enabled)
// starts a new store with, which it applies the stream from:
//
//   - the mapping of the first mapping control the stream holds: every new
//     store starts from it, so that every node applies each later control
//     (and the events between) from the same mapping, and that first
//     control changes nothing;
//   - with none in the stream, the mapping in force recorded in NATS;
//   - with neither (the first node of a new cluster), this node's file's
//     mapping, published first as a control, so that nodes started at the
//     same moment with other files apply them all in the stream's order:
//     wait then waits for it to be applied here.
func (d *daemon) startingMapping(ctx context.Context) (m mapping.Config, wait func(context.Context) (*storage.Plan, error), err error) {
	applied, _, err := d.st.AppliedSeq()
	if err != nil {
		return m, nil, refuseDamaged(d.st.Path(), err)
	}
	first := func() (*mapping.Config, uint64, error) { return firstMapping(ctx, d.q, applied+1) }
	f, seq, err := first()
	if err != nil {
		return m, nil, fmt.Errorf("%s: %w", natsKeys(d.cfg), err)
	}
	if f != nil {
		d.log.Info("new store: starting from the first mapping the stream carries; the mapping in force is reached by applying the stream",
			zap.String("node", d.node), zap.Uint64("seq", seq))
		return *f, nil, nil
	}
	rec, _, err := d.mappingInForce(ctx)
	if err != nil {
		return m, nil, fmt.Errorf("%s: the mapping in force: %w", natsKeys(d.cfg), err)
	}
	if rec != nil {
		d.log.Info("new store: starting from the mapping in force recorded in NATS (the stream holds no mapping change)",
			zap.String("node", d.node), zap.Uint64("since_seq", rec.Seq))
		return rec.Mapping, nil, nil
	}
	file := d.cfg.Mapping
	d.log.Info("no mapping in force in the cluster yet: publishing this node's file's mapping to every node", zap.String("node", d.node))
	wait, mine, err := d.ctl.publish(ctx, storage.Control{Kind: storage.ControlMapping, Mapping: &file})
	if err != nil {
		return m, nil, fmt.Errorf("%s: publishing the mapping: %w", natsKeys(d.cfg), err)
	}
	if f, seq, err = first(); err != nil || f == nil {
		return m, nil, fmt.Errorf("%s: the mapping published at seq %d is not in the stream: %v", natsKeys(d.cfg), mine, err)
	}
	if seq != mine {
		d.log.Info("another node published its mapping first: starting from it; this node's comes after it",
			zap.Uint64("seq", seq), zap.Uint64("this_node_seq", mine))
	}
	return *f, wait, nil
}

// waitStartMapping waits (at most controlWait) for the mapping this node
// published at start to be applied here, then says whether its file's is
// the mapping in force. Refused (a rule another node's file has and this
// one's removes without on_unmap) or late, the node starts all the same:
// it applies the mapping in force, like every node.
func (d *daemon) waitStartMapping(wait func(context.Context) (*storage.Plan, error)) {
	ctx, cancel := context.WithTimeout(context.Background(), controlWait)
	defer cancel()
	_, err := wait(ctx)
	var un unavailable
	switch {
	case errors.As(err, &un):
		d.log.Warn("mapping published; not applied here yet", zap.String("why", un.msg))
	case err != nil:
		d.log.Warn("this node's file's mapping, published at start, was refused on every node: the mapping in force stays the one published before it",
			zap.Error(err))
	}
	d.checkMapping()
}

// noteMappingInForce says, at a new store's start, whether this node's
// file differs from the mapping in force recorded in NATS (the store
// reaches it by applying the stream).
func (d *daemon) noteMappingInForce(ctx context.Context) {
	rec, _, err := d.mappingInForce(ctx)
	if err != nil || rec == nil {
		return
	}
	d.compareMapping(&rec.Mapping)
}

// rebuildMapping is the mapping dsyncd rebuild starts a node of a
// cluster's new store from (not a --from backup's): the snapshot's, in
// force at the snapshot's seq, which the stream is applied after; from
// the stream alone, the first mapping it carries, else the one recorded in
// NATS; only with neither, its file's. what names it for the report.
func rebuildMapping(ctx context.Context, q *queue.Queue, st *storage.Store, fromSnap bool, file mapping.Config) (m mapping.Config, what string, err error) {
	if fromSnap {
		stored, err := st.StoredMapping()
		if err != nil {
			return m, "", err
		}
		if stored != nil {
			return *stored, "the snapshot's mapping", nil
		}
	}
	f, seq, err := firstMapping(ctx, q, 1)
	if err != nil {
		return m, "", err
	}
	if f != nil {
		return *f, fmt.Sprintf("the first mapping the stream carries (seq %d)", seq), nil
	}
	ps, err := q.Positions(ctx)
	if err != nil {
		return m, "", err
	}
	rec, _, err := readMappingRecord(ctx, ps)
	if err != nil {
		return m, "", err
	}
	if rec != nil {
		return rec.Mapping, "the mapping in force recorded in NATS", nil
	}
	return file, "its file's mapping", nil
}
