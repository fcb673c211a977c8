package storage

import "time"

// The safeguards, one file each (safeguard_*.go), run inside Apply's
// transaction. Those that hold a change own a HoldKind and say, through a
// holdRule, what closing, approving and rejecting one of their holds does;
// holds.go and DecideHold (operator.go) dispatch on it. A new safeguard that
// holds changes is a file safeguard_<name>.go and a line in holdRules.

// holdRule is a safeguard that holds changes.
type holdRule interface {
	// kind is the kind of the holds it opens.
	kind() HoldKind
	// decidable returns why h may not be approved (or rejected), or nil.
	decidable(h *Hold, approve bool) error
	// closed runs in the transaction that closes h, however it closes
	// (released, approved, rejected).
	closed(s *Store, t *txn, h *Hold) error
	// decide does what an operator's approval (or rejection) of h means,
	// once h is closed, counting in counts the events it applies or drops.
	decide(s *Store, t *txn, h *Hold, approve bool, now time.Time, counts *Counts) error
}

// holdRules are the safeguards that hold changes.
var holdRules = []holdRule{
	lastAdmin{},       // safeguard_lastadmin.go (and safeguard_move.go)
	massDeprovision{}, // safeguard_breaker.go
}

// holdRuleOf returns the safeguard whose holds are of kind k, or nil.
func holdRuleOf(k HoldKind) holdRule {
	for _, r := range holdRules {
		if r.kind() == k {
			return r
		}
	}
	return nil
}

// HoldKinds lists the kind of every safeguard's holds, in a stable order.
func HoldKinds() []HoldKind {
	out := make([]HoldKind, len(holdRules))
	for i, r := range holdRules {
		out[i] = r.kind()
	}
	return out
}
