//go:build !race

// The race detector makes sync.Pool drop items at random, so allocation
// counts are only meaningful without it.

package events

import (
	"testing"
	"time"
)

func TestVerifyDoesNotAllocate(t *testing.T) {
	vec := loadVectors(t)[0]
	body := []byte(vec.Body)
	v := NewVerifier([]string{"whsec_old", vec.Secret}, 0).WithClock(clockAt(time.UnixMilli(vec.ts(t))))
	if err := v.Verify(vec.Header, body); err != nil {
		t.Fatal(err)
	}
	if n := testing.AllocsPerRun(100, func() { _ = v.Verify(vec.Header, body) }); n != 0 {
		t.Errorf("Verify of a valid webhook makes %v allocations, want 0", n)
	}
	if n := testing.AllocsPerRun(100, func() { _ = v.Verify("", body) }); n != 0 {
		t.Errorf("Verify of an unsigned webhook makes %v allocations, want 0", n)
	}
}

func TestCheckHeaderDoesNotAllocate(t *testing.T) {
	vec := loadVectors(t)[0]
	v := NewVerifier([]string{vec.Secret}, 0).WithClock(clockAt(time.UnixMilli(vec.ts(t))))
	if n := testing.AllocsPerRun(100, func() { _ = v.CheckHeader(vec.Header) }); n != 0 {
		t.Errorf("CheckHeader of a well-formed header makes %v allocations, want 0", n)
	}
	if n := testing.AllocsPerRun(100, func() { _ = v.CheckHeader("") }); n != 0 {
		t.Errorf("CheckHeader of an absent header makes %v allocations, want 0", n)
	}
}
