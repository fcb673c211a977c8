// Package queue is dsyncd's durable event queue: a NATS JetStream stream that
// the webhook receiver publishes WorkOS Directory Sync events to, that the
// worker consumes from, plus a dead-letter stream for events the worker gave
// up on.
//
// # Basics
//
// A Queue is built with [New] (cheap, no I/O), started with [Queue.Open] and
// stopped with [Queue.Close]:
//
//	q := queue.New(queue.Options{StoreDir: filepath.Join(dataDir, "jetstream")}, log)
//	if err := q.Open(ctx); err != nil { ... }
//	defer q.Close()
//
// With an empty [Options.URL], Open runs an embedded nats-server in the
// process (JetStream on, file storage in [Options.StoreDir], signals left to
// the host process, its log routed to zap) and connects to it over TCP like
// any other client; [Queue.ClientURL] tells the address. With a URL, Open
// connects to that server instead; everything after the connection is the
// same code path.
//
// Open creates, or updates to the current options, two streams:
//
//   - the main stream ([Options.Stream], default "DSYNC") on the subjects
//     "<SubjectPrefix>.>" (default "dsync.>"). [Queue.Publish] stores each
//     event under "<SubjectPrefix>.<directoryID>.<eventType>" (e.g.
//     "dsync.directory_01ABC.dsync.user.created"), each token sanitised by
//     [Queue.Subject] (the directory id is one token), with the event id as Nats-Msg-Id so JetStream drops a redelivered webhook within
//     [Options.DuplicateWindow].
//   - the dead-letter stream ([Options.DLQStream], default "DSYNC_DLQ") on
//     "<DLQStream>.>", a namespace disjoint from the main stream's.
//     [Delivery.Park] copies a message there with headers saying where it came
//     from and why; operators list ([Queue.DeadLetters]), show
//     ([Queue.DeadLetter]), drop ([Queue.DropDeadLetter]) or replay
//     ([Queue.ReplayDeadLetter]) them.
//
// Both streams use file storage, limits retention and DiscardNew: when a
// stream reaches MaxBytes, JetStream refuses new messages (Publish returns an
// error and the receiver answers 503, so WorkOS retries later) instead of
// silently deleting the oldest events, which the store may not have applied
// yet and which a rebuild ([Queue.Each]) needs. MaxAge still expires old
// events; leave it 0 to keep every event for rebuilds.
//
// Event data is stored as [Options.Encoding] says: as received, or
// S2-compressed and marked with the [HeaderEncoding] header. Every reader
// decodes with [Data] ([Queue.Each], [Consumer.Fetch] and [Delivery.Park] do it themselves), so
// streams mixing both encodings read the same; data [Data] cannot decode is
// an error wrapping [ErrUndecodable], which retrying cannot cure.
//
// The worker reads with a durable pull consumer from [Queue.Consumer]
// (explicit acks, unlimited deliveries: the worker decides when to park a
// poison message). It hands out [Delivery] values: the event decoded, its
// stream position, and Ack, RetryLater and Park, so that no NATS type leaves
// this package (a test in cmd/dsyncd enforces that only queue imports NATS). [Queue.Pending] reports its lag and [Queue.Ready] whether
// JetStream answers.
//
// # Caveats
//
// Durability. A 2xx from the receiver promises that the event is in
// JetStream: Publish returns only once JetStream acknowledged the write. With
// the embedded server and SyncAlways=false (the default), JetStream
// acknowledges once the message is written to the operating system's page
// cache and fsyncs every SyncInterval (nats-server's default is 2 minutes).
// Such an event survives a crash or SIGKILL of dsyncd, but not a power loss or
// kernel crash within SyncInterval of the write. Set SyncAlways to fsync each
// write before the acknowledgement, at the cost of publish latency and
// throughput, or shorten SyncInterval to narrow the window. With an external
// server the server's own settings (and its replication) decide.
//
// Reconnects. The client reconnects forever, but does not buffer publishes
// while disconnected: once the client noticed the disconnection, Publish fails
// at once, and a publish that failed is never sent later behind the caller's
// back. A publish sent just before the client noticed waits for its context's
// deadline; the server may or may not have stored it, so the caller's retry
// (WorkOS redelivering after a 503) may store the event a second time, which
// the store's deduplication by event id absorbs. Acks the worker sends while
// disconnected are lost too, so those messages are redelivered after AckWait:
// the worker must apply events idempotently, which it must anyway since
// delivery is at least once.
//
// Write errors. nats-server keeps a stream's first write error (disk full,
// descriptors exhausted) and answers no publish to it afterwards, even once
// the cause is gone. With the embedded server a monitor (every
// [Options.HealthInterval], and at once after a failed publish) finds it,
// makes [Queue.Ready] and [Queue.Publish] fail at once with an error
// wrapping [ErrCannotStore], and restarts the server in place, same port and
// store directory, once a probe write to the store directory succeeds; the
// client reconnects by itself ([Queue.Fault], [Queue.Restarts]).
//
// Duplicates. Deduplication by Nats-Msg-Id only covers DuplicateWindow
// (default 2s: JetStream holds the window's ids in memory); a webhook
// retried later is stored again. Replayed dead letters get a new id
// ("<msgID>:replay:<dlqSeq>") so the window does not swallow them.
//
// Subjects are for routing and filtering only: sanitising maps different
// hostile ids to the same token, and long tokens are cut and suffixed with a
// hash. The event itself is the message data.
//
// Each (rebuild) only sees the retained events: with MaxAge or MaxBytes
// limits, events older than the limits are gone.
//
// The embedded server takes [Options.User] and [Options.Password] as its only
// user, and listens on 127.0.0.1 unless [Options.Listen] says otherwise; it
// warns when it listens beyond loopback with no user. Creds and TLSCA apply to
// an external server only.
package queue
