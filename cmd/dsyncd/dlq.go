package main

import (
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"github.com/spf13/cobra"

	"github.com/dsyncd/dsyncd/server"
)

// dlqView is a dead letter as the dlq commands print it.
type dlqView struct {
	Seq          uint64    `json:"id"`
	Subject      string    `json:"subject"`
	StreamSeq    uint64    `json:"stream_seq"`
	EventID      string    `json:"event_id,omitempty"`
	Reason       string    `json:"reason"`
	Attempts     int       `json:"attempts"`
	ParkedAt     time.Time `json:"parked_at"`
	Data         string    `json:"data"`
	DataEncoding string    `json:"data_encoding"` // text or base64
	// StoredEncoding is the stream encoding (s2) of data dsyncd could not
	// decode: Data is then the bytes as stored. Empty for an event's JSON.
	StoredEncoding string `json:"stored_encoding,omitempty"`
	Bytes          int    `json:"bytes"`
}

func newDLQView(dl server.DeadLetter) dlqView {
	v := dlqView{Seq: dl.Seq, Subject: dl.Subject, StreamSeq: dl.StreamSeq, EventID: dl.MsgID, Reason: dl.Reason,
		Attempts: dl.Attempts, ParkedAt: dl.ParkedAt.UTC(), Bytes: len(dl.Data), Data: string(dl.Data), DataEncoding: "text",
		StoredEncoding: dl.Encoding}
	if !utf8.Valid(dl.Data) {
		v.Data, v.DataEncoding = base64.StdEncoding.EncodeToString(dl.Data), "base64"
	}
	return v
}

func parseSeqs(args []string) ([]uint64, error) {
	out := make([]uint64, 0, len(args))
	for _, s := range args {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil || n == 0 {
			return nil, usagef("dead letter id %q: want a positive number, as \"dsyncd dlq list\" shows", s)
		}
		out = append(out, n)
	}
	return out, nil
}

func (a *app) dlqCommand() *cobra.Command {
	var f opsFlags
	cmd := &cobra.Command{
		Use:   "dlq (list | show ID | replay ID...|--all | drop ID...)",
		Short: "Inspect, replay or drop the events parked in the dead-letter stream",
		Long: `dlq deals with dead letters: events the worker parked in the dead-letter stream
(nats.dlq_stream) because they could not be decoded, or failed to apply
worker.max_attempts times. Parked events are not lost and do not block the others;
each waits for an operator to replay it (after fixing the cause) or drop it.

Every dead letter has an ID (its sequence in the dead-letter stream), the subject and
sequence of the original message, the WorkOS event id when known, the reason, the
number of attempts, and the original body.

  list         list the dead letters, oldest first
  show ID      print one with its body
  replay ID... republish to the events stream, through the normal apply path: the
               worker applies it like any event (a running serve at once, a stopped
               one when it starts); --all replays every dead letter
  drop ID...   delete for good, recording the drop in the audit trail` + targetHelp + exitStatusHelp,
		Example: `  dsyncd dlq list --config /etc/dsyncd/dsyncd.yaml
  dsyncd dlq show 12
  dsyncd dlq replay 12 13
  dsyncd dlq replay --all
  dsyncd dlq drop 14
  dsyncd dlq list --offline --format json   # serve stopped`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	a.addTargetFlags(cmd, &f, true)

	withDLQ := func(fn func(cmd *cobra.Command, b backend, args []string) error) func(*cobra.Command, []string) error {
		return func(cmd *cobra.Command, args []string) error {
			cfg, err := a.loadConfig(cmd)
			if err != nil {
				return err
			}
			return a.withBackend(cmd.Context(), cfg, &f, func(b backend) error { return fn(cmd, b, args) })
		}
	}
	list := &cobra.Command{
		Use:   "list",
		Short: "List the dead letters, oldest first",
		Long: `list prints the dead letters, oldest first: ID, PARKED (time, UTC), SUBJECT, EVENT
(WorkOS event id), ATTEMPTS, BYTES, REASON.` + targetHelp + exitStatusHelp,
		Example: `  dsyncd dlq list
  dsyncd dlq list --format json | jq '.dead_letters[].reason'`,
		Args: cobra.NoArgs,
		RunE: withDLQ(func(cmd *cobra.Command, b backend, _ []string) error {
			dls, err := b.List(cmd.Context())
			if err != nil {
				return err
			}
			views := make([]dlqView, 0, len(dls))
			for _, dl := range dls {
				views = append(views, newDLQView(dl))
			}
			if f.format == "json" {
				return writeJSONTo(a.stdout, map[string]any{"dead_letters": views})
			}
			rows := make([][]string, 0, len(views))
			for _, v := range views {
				rows = append(rows, []string{strconv.FormatUint(v.Seq, 10), fmtTime(v.ParkedAt), v.Subject, v.EventID,
					strconv.Itoa(v.Attempts), strconv.Itoa(v.Bytes), v.Reason})
			}
			return table(a.stdout, []string{"ID", "PARKED", "SUBJECT", "EVENT", "ATTEMPTS", "BYTES", "REASON"}, rows)
		}),
	}
	show := &cobra.Command{
		Use:   "show ID",
		Short: "Print one dead letter with its body",
		Long:  `show prints the dead letter ID: where it came from, why it was parked, and its body.` + targetHelp + exitStatusHelp,
		Example: `  dsyncd dlq show 12
  dsyncd dlq show 12 --format json | jq -r .data | jq .`,
		Args: cobra.ExactArgs(1),
		RunE: withDLQ(func(cmd *cobra.Command, b backend, args []string) error {
			seqs, err := parseSeqs(args)
			if err != nil {
				return err
			}
			dl, err := b.Get(cmd.Context(), seqs[0])
			if err != nil {
				return err
			}
			v := newDLQView(dl)
			if f.format == "json" {
				return writeJSONTo(a.stdout, v)
			}
			w := tabwriter.NewWriter(a.stdout, 0, 0, 1, ' ', 0)
			rows := [][2]string{{"id", strconv.FormatUint(v.Seq, 10)}, {"parked at", fmtTime(v.ParkedAt)},
				{"subject", v.Subject}, {"stream seq", strconv.FormatUint(v.StreamSeq, 10)}, {"event id", v.EventID},
				{"attempts", strconv.Itoa(v.Attempts)}, {"reason", v.Reason}, {"bytes", strconv.Itoa(v.Bytes)}}
			if v.StoredEncoding != "" {
				rows = append(rows, [2]string{"stored encoding", v.StoredEncoding})
			}
			for _, kv := range rows {
				fmt.Fprintf(w, "%s:\t%s\n", kv[0], kv[1])
			}
			if err := w.Flush(); err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "data (%s):\n%s\n", v.DataEncoding, v.Data)
			return nil
		}),
	}
	var all bool
	replay := &cobra.Command{
		Use:   "replay (ID... | --all)",
		Short: "Republish dead letters to the events stream for the worker to apply",
		Long: `replay republishes each dead letter to the events stream under its original subject,
then deletes it from the dead-letter stream. The worker applies it through the normal
path, in stream order after what is already queued: a running serve at once, a stopped
one when it starts. If it fails again it is parked again, under a new ID.` + targetHelp + exitStatusHelp,
		Example: `  dsyncd dlq replay 12
  dsyncd dlq replay --all`,
		RunE: withDLQ(func(cmd *cobra.Command, b backend, args []string) error {
			if all == (len(args) > 0) {
				return errors.New("give dead letter IDs or --all, not both or neither")
			}
			var done []uint64
			if all {
				var err error
				if done, err = b.ReplayAll(cmd.Context()); err != nil {
					return err
				}
			} else {
				seqs, err := parseSeqs(args)
				if err != nil {
					return err
				}
				for _, s := range seqs {
					if err := b.Replay(cmd.Context(), s); err != nil {
						if len(done) > 0 {
							fmt.Fprintf(a.stderr, "replayed before the error: %v\n", done)
						}
						return err
					}
					done = append(done, s)
				}
			}
			if f.format == "json" {
				return writeJSONTo(a.stdout, map[string]any{"replayed": nonNil(done)})
			}
			if len(done) == 0 {
				_, err := fmt.Fprintln(a.stdout, "no dead letters to replay")
				return err
			}
			when := "the worker applies them now"
			if !b.online() {
				when = "dsyncd serve applies them when it starts"
			}
			_, err := fmt.Fprintf(a.stdout, "replayed %d dead letter(s) (%s) to the events stream; %s\n", len(done), joinSeqs(done), when)
			return err
		}),
	}
	replay.Flags().BoolVar(&all, "all", false, "replay every dead letter")
	drop := &cobra.Command{
		Use:   "drop ID...",
		Short: "Delete dead letters for good, with an audit entry",
		Long: `drop deletes each dead letter from the dead-letter stream for good and appends an entry
(action drop, with the event id, subject and the reason it was parked) to the audit
trail. The event is never applied. dsyncd rebuild leaves dropped events out too.` + targetHelp + exitStatusHelp,
		Example: `  dsyncd dlq drop 14
  dsyncd dlq drop 14 15 16`,
		Args: cobra.MinimumNArgs(1),
		RunE: withDLQ(func(cmd *cobra.Command, b backend, args []string) error {
			seqs, err := parseSeqs(args)
			if err != nil {
				return err
			}
			var done []uint64
			for _, s := range seqs {
				if err := b.Drop(cmd.Context(), s); err != nil {
					if len(done) > 0 {
						fmt.Fprintf(a.stderr, "dropped before the error: %v\n", done)
					}
					return err
				}
				done = append(done, s)
			}
			if f.format == "json" {
				return writeJSONTo(a.stdout, map[string]any{"dropped": done})
			}
			_, err = fmt.Fprintf(a.stdout, "dropped %d dead letter(s) (%s); recorded in the audit trail\n", len(done), joinSeqs(done))
			return err
		}),
	}
	cmd.AddCommand(list, show, replay, drop)
	return cmd
}

func joinSeqs(s []uint64) string {
	parts := make([]string, len(s))
	for i, n := range s {
		parts[i] = strconv.FormatUint(n, 10)
	}
	return strings.Join(parts, ", ")
}
