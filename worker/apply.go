package worker

import (
	"github.com/dsyncd/dsyncd/events"
	"github.com/dsyncd/dsyncd/storage"
)

// Counts tallies what applying a set of events did (storage's vocabulary).
type Counts = storage.Counts

// InvalidEvent is an event that could not be decoded, with where it came from and why.
type InvalidEvent struct {
	Source string
	Err    error
}

func (e InvalidEvent) String() string { return e.Source + ": " + e.Err.Error() }

// Decode decodes raws, returning the valid events in order and the invalid ones.
func Decode(raws []events.Raw) ([]*events.Event, []InvalidEvent) {
	evs := make([]*events.Event, 0, len(raws))
	var bad []InvalidEvent
	for _, r := range raws {
		ev, err := events.Decode(r.Data)
		if err != nil {
			bad = append(bad, InvalidEvent{Source: r.Source, Err: err})
			continue
		}
		evs = append(evs, ev)
	}
	return evs, bad
}

// ReplayBatch is how many events Replay applies per transaction.
const ReplayBatch = 1024

// Replay applies raws in order through the same path as the live worker:
// decode, then storage.Store.Apply in batches. Invalid events are counted and
// returned; the valid ones are applied regardless.
func Replay(st *storage.Store, raws []events.Raw) (Counts, []InvalidEvent, error) {
	evs, bad := Decode(raws)
	c := Counts{Invalid: len(bad)}
	for start := 0; start < len(evs); start += ReplayBatch {
		end := min(start+ReplayBatch, len(evs))
		outs, err := st.Apply(evs[start:end])
		if err != nil {
			return c, bad, err
		}
		for _, o := range outs {
			c.Add(o)
		}
	}
	return c, bad, nil
}
