package worker

import "time"

// governor decides when the worker yields the CPU to the webhook receiver.
//
// On a machine where the receiver and the worker share the CPU, every event
// applied during a flood is CPU the receiver does not get: its answers slow
// down and a sender that waits for them (WorkOS delivers with a bounded
// concurrency) delivers less. Yielding — a pause after each batch — helps
// only then. When the sender sets its own pace, the receiver takes the same
// events per second whatever the worker does, and a pause only delays them.
//
// So the governor measures. It alternates phases of window each: a calm one
// (no pause) that measures the inflow the receiver reaches without help,
// then yielding ones, each kept only while the inflow stays at least gain
// times the calm one. A phase in which a batch saw no webhook arrive is no
// flood: the next phase is calm. After reprobe of yielding it measures a calm phase
// again, as the flood may have changed. It is pure: the worker gives it the
// time and the inflow count.
type governor struct {
	ratio   float64       // pause = ratio × the batch's time
	gain    float64       // least inflow while yielding, relative to calm
	window  time.Duration // length of a measured phase
	reprobe time.Duration // yielding this long measures a calm phase again

	yielding   bool
	quiet      bool      // a batch of this phase saw no webhook arrive
	phaseStart time.Time // start of the phase being measured
	phaseCount uint64    // inflow at phaseStart
	since      time.Time // start of the current run of yielding phases
	calmRate   float64   // inflow per second in the last calm phase
}

func newGovernor(ratio float64, window time.Duration) *governor {
	return &governor{ratio: ratio, gain: 1.3, window: window, reprobe: 30 * time.Second}
}

// pause is called at now, after a batch that took took to apply, with
// inflow the receiver's count of webhooks so far, and whether any arrived
// during the batch. It returns how long to pause before the next batch: at
// most window, however long a batch took (a slow disk).
func (g *governor) pause(now time.Time, took time.Duration, inflow uint64, arrived bool) time.Duration {
	if g.phaseStart.IsZero() {
		g.startPhase(now, inflow, false)
	}
	g.quiet = g.quiet || !arrived
	if elapsed := now.Sub(g.phaseStart); elapsed >= g.window {
		rate := float64(inflow-g.phaseCount) / elapsed.Seconds()
		switch {
		case g.quiet:
			// A batch saw no webhook: no flood to measure (or its end).
			g.startPhase(now, inflow, false)
		case !g.yielding:
			g.calmRate = rate
			g.since = now
			g.startPhase(now, inflow, true)
		case rate < g.gain*g.calmRate || now.Sub(g.since) >= g.reprobe:
			g.startPhase(now, inflow, false)
		default:
			g.startPhase(now, inflow, true)
		}
	}
	if !g.yielding || !arrived || took <= 0 {
		return 0
	}
	return min(time.Duration(g.ratio*float64(took)), g.window)
}

// calm ends any yielding at now: the next phase measures without pauses.
func (g *governor) calm(now time.Time, inflow uint64) {
	if g.yielding || g.phaseStart.IsZero() {
		g.startPhase(now, inflow, false)
	}
}

func (g *governor) startPhase(now time.Time, inflow uint64, yielding bool) {
	g.phaseStart, g.phaseCount, g.yielding, g.quiet = now, inflow, yielding, false
}
