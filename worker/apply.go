package worker

import (
	"fmt"

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
	evs, _, bad := decodeRaws(raws)
	return evs, bad
}

// decodeRaws is Decode that also returns where each valid event came from.
func decodeRaws(raws []events.Raw) ([]*events.Event, []string, []InvalidEvent) {
	evs := make([]*events.Event, 0, len(raws))
	sources := make([]string, 0, len(raws))
	var bad []InvalidEvent
	for _, r := range raws {
		ev, err := events.Decode(r.Data)
		if err != nil {
			bad = append(bad, InvalidEvent{Source: r.Source, Err: err})
			continue
		}
		evs = append(evs, ev)
		sources = append(sources, r.Source)
	}
	return evs, sources, bad
}

// ReplayBatch is how many events Replay applies per transaction.
const ReplayBatch = 1024

// Replay applies raws in order through the same path as the live worker:
// decode, then Apply in batches of ReplayBatch. Invalid events are counted
// and returned; the valid ones are applied regardless. It stops at the
// first event that fails to apply, every earlier one applied, with an error
// naming it; or when the store cannot be written.
func Replay(st *storage.Store, raws []events.Raw) (Counts, []InvalidEvent, error) {
	evs, sources, bad := decodeRaws(raws)
	c := Counts{Invalid: len(bad)}
	for start := 0; start < len(evs); start += ReplayBatch {
		end := min(start+ReplayBatch, len(evs))
		var stop error
		res := Apply(st, evs[start:end], nil, Hooks{
			Hold: func(int) bool { return stop != nil },
			Failed: func(i int, err error) {
				ev := evs[start+i]
				stop = fmt.Errorf("%s: event %s (%s) failed to apply, stopped there: %w", sources[start+i], ev.ID, ev.Type, err)
			},
		})
		for _, o := range res.Outcomes {
			if o != "" {
				c.Add(o)
			}
		}
		if res.Err != nil {
			return c, bad, res.Err
		}
		if stop != nil {
			return c, bad, stop
		}
	}
	return c, bad, nil
}
