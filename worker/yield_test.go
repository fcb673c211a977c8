package worker

import (
	"testing"
	"time"
)

// batchRun is one batch of a simulated flood: when it ended and the pause
// the governor asked for.
type batchRun struct {
	at    time.Duration // since the start
	pause time.Duration
}

// flood is what a simulated receiver takes while the worker applies and
// while it pauses: webhooks per second, and the share of the CPU left
// unused. A receiver short of CPU takes more while the worker pauses and
// leaves none unused; one whose sender sets the pace takes the same, and
// the pauses leave CPU unused.
type flood struct {
	applying, pausing         float64
	idleApplying, idlePausing float64
}

// simulate feeds g batches of took each for d.
func simulate(g *governor, d, took time.Duration, f flood) []batchRun {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var at time.Duration
	var count, idle float64
	g.cpu = func() (float64, float64) { return idle, 2 * at.Seconds() }
	var runs []batchRun
	for at < d {
		at += took
		count += f.applying * took.Seconds()
		idle += f.idleApplying * 2 * took.Seconds()
		p := g.pause(t0.Add(at), took, uint64(count), f.applying > 0)
		runs = append(runs, batchRun{at: at, pause: p})
		at += p
		count += f.pausing * p.Seconds()
		idle += f.idlePausing * 2 * p.Seconds()
	}
	return runs
}

// yieldingShare is the share of the batches ending in [from, to) followed by a pause.
func yieldingShare(runs []batchRun, from, to time.Duration) float64 {
	var n, paused int
	for _, r := range runs {
		if r.at >= from && r.at < to {
			n++
			if r.pause > 0 {
				paused++
			}
		}
	}
	if n == 0 {
		return 0
	}
	return float64(paused) / float64(n)
}

func TestGovernor(t *testing.T) {
	const took = 20 * time.Millisecond
	tests := []struct {
		name     string
		flood    flood
		from, to time.Duration // the span judged
		min, max float64       // bounds of the share of batches followed by a pause (alternate phases of 1s: 1 batch in 7)
	}{
		{"a receiver that takes twice as many webhooks while the worker pauses keeps it yielding",
			flood{8000, 16000, 0.05, 0.05}, 2 * time.Second, 29 * time.Second, 1, 1},
		{"a receiver that takes just as many while the worker pauses (the sender sets the pace) gets at most every other phase",
			flood{8000, 8000, 0, 0}, 2 * time.Second, 29 * time.Second, 0.05, 0.2},
		{"a receiver that takes barely more (under the gain) gets at most every other phase",
			flood{8000, 9000, 0, 0}, 2 * time.Second, 29 * time.Second, 0.05, 0.2},
		{"a receiver that takes more while the worker pauses but leaves a fifth of the CPU unused gets at most every other phase",
			flood{8000, 16000, 0.05, 0.2}, 2 * time.Second, 29 * time.Second, 0.05, 0.2},
		{"a receiver that gains while the CPU idles even without pauses never gets one",
			flood{8000, 16000, 0.3, 0.3}, 0, 29 * time.Second, 0, 0},
		{"no webhook arriving never pauses the worker",
			flood{}, 0, 29 * time.Second, 0, 0},
		{"the first phase measures without pauses",
			flood{8000, 16000, 0, 0}, 0, 900 * time.Millisecond, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			runs := simulate(newGovernor(5, time.Second), 30*time.Second, took, tt.flood)
			if got := yieldingShare(runs, tt.from, tt.to); got < tt.min || got > tt.max {
				t.Fatalf("share of batches followed by a pause in [%s, %s) = %.2f, want between %.2f and %.2f", tt.from, tt.to, got, tt.min, tt.max)
			}
			for _, r := range runs {
				if r.pause > 0 && r.pause != 5*took {
					t.Fatalf("pause at %s = %s, want 5 × the batch's %s", r.at, r.pause, took)
				}
			}
		})
	}
}

func TestGovernorMeasuresWithoutPausesAgainAfterThirtySecondsOfYielding(t *testing.T) {
	runs := simulate(newGovernor(5, time.Second), 70*time.Second, 20*time.Millisecond, flood{8000, 16000, 0, 0})
	var calm []time.Duration // batch ends not followed by a pause, after the first phase
	for _, r := range runs {
		if r.pause == 0 && r.at > 2*time.Second {
			calm = append(calm, r.at)
		}
	}
	if len(calm) == 0 {
		t.Fatal("70s of yielding with no phase measured without pauses")
	}
	if first := calm[0]; first < 30*time.Second || first > 33*time.Second {
		t.Fatalf("first phase without pauses at %s, want just after 30s of yielding", first)
	}
	if got := yieldingShare(runs, 34*time.Second, 60*time.Second); got != 1 {
		t.Fatalf("after the re-measure, share of batches followed by a pause = %.2f, want 1 (the flood still gains)", got)
	}
}

func TestGovernorCalmEndsYielding(t *testing.T) {
	g := newGovernor(5, time.Second)
	simulate(g, 5*time.Second, 20*time.Millisecond, flood{8000, 16000, 0, 0})
	if !g.yielding {
		t.Fatal("not yielding after 5s of a flood that gains from it")
	}
	now := time.Date(2026, 1, 1, 0, 0, 6, 0, time.UTC)
	g.calm(now, 1<<20)
	if p := g.pause(now.Add(10*time.Millisecond), 10*time.Millisecond, 1<<20+100, true); p != 0 {
		t.Fatalf("pause right after calm = %s, want none", p)
	}
}

func TestGovernorAfterAQuietSpellMeasuresBeforeYielding(t *testing.T) {
	// A quiet phase (the end of an earlier flood) measures no inflow; a
	// paced sender that follows must not look like a gain against it.
	g := newGovernor(5, time.Second)
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	const took = 20 * time.Millisecond
	var at time.Duration
	for at < 3*time.Second {
		at += took
		g.pause(t0.Add(at), took, 100, false)
	}
	var count float64 = 100
	var batches, paused int
	for end := at + 10*time.Second; at < end; {
		at += took
		count += 8000 * took.Seconds()
		p := g.pause(t0.Add(at), took, uint64(count), true)
		batches++
		if p > 0 {
			paused++
		}
		at += p
		count += 8000 * p.Seconds()
	}
	if share := float64(paused) / float64(batches); share > 0.2 {
		t.Fatalf("a paced sender after a quiet spell: %.2f of the batches followed by a pause, want at most every other phase (≤ 0.2)", share)
	}
}

func TestGovernorPausesAtMostAWindow(t *testing.T) {
	runs := simulate(newGovernor(5, time.Second), 20*time.Second, 700*time.Millisecond, flood{8000, 16000, 0, 0})
	var paused int
	for _, r := range runs {
		if r.pause > time.Second {
			t.Fatalf("pause at %s = %s after a batch of 700ms, want at most the 1s window", r.at, r.pause)
		}
		if r.pause > 0 {
			paused++
		}
	}
	if paused == 0 {
		t.Fatal("a flood that gains from pauses got none")
	}
}
