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
// flood: the next phase is calm. So is the phase after one in which the
// process left more than maxIdle of its CPU unused (cpu): the CPU is not
// what limits the receiver, whatever a noisy measure of the inflow says.
// After reprobe of yielding it measures a calm phase again, as the flood
// may have changed. It is pure: the worker gives it the time, the inflow
// count and the CPU counters.
type governor struct {
	ratio   float64       // pause = ratio × the batch's time
	gain    float64       // least inflow while yielding, relative to calm
	window  time.Duration // length of a measured phase
	reprobe time.Duration // yielding this long measures a calm phase again
	maxIdle float64       // most unused CPU share of a phase that may lead to yielding
	// cpu, if set, returns the process's unused and total CPU-seconds so
	// far (Options.CPU).
	cpu func() (idle, total float64)

	yielding   bool
	quiet      bool      // a batch of this phase saw no webhook arrive
	phaseStart time.Time // start of the phase being measured
	phaseCount uint64    // inflow at phaseStart
	since      time.Time // start of the current run of yielding phases
	calmRate   float64   // inflow per second in the last calm phase
	phaseIdle  float64   // cpu's idle at phaseStart
	phaseTotal float64   // cpu's total at phaseStart
}

func newGovernor(ratio float64, window time.Duration) *governor {
	return &governor{ratio: ratio, gain: 1.3, window: window, reprobe: 30 * time.Second, maxIdle: 0.15}
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
		case g.idleShare() > g.maxIdle:
			// CPU to spare: pauses would not help the receiver.
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
	if g.cpu != nil {
		g.phaseIdle, g.phaseTotal = g.cpu()
	}
}

// idleShare is the share of the process's CPU left unused since the phase
// started (0 without cpu).
func (g *governor) idleShare() float64 {
	if g.cpu == nil {
		return 0
	}
	idle, total := g.cpu()
	if total <= g.phaseTotal {
		return 0
	}
	return (idle - g.phaseIdle) / (total - g.phaseTotal)
}
