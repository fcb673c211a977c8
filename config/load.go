package config

import (
	"errors"
	"fmt"
	"math"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/go-viper/mapstructure/v2"
	"github.com/spf13/pflag"
	"github.com/spf13/viper"
)

// EnvPrefix starts the name of every environment variable Load reads.
const EnvPrefix = "DSYNCD_"

// EnvVar returns the environment variable that sets key, e.g.
// DSYNCD_HTTP_LISTEN for "http.listen".
func EnvVar(key string) string {
	return EnvPrefix + strings.ToUpper(strings.ReplaceAll(key, ".", "_"))
}

// UnknownEnv returns a problem, "NAME: …", for every variable of environ
// ("NAME=value" entries, as os.Environ) whose name starts with EnvPrefix but
// sets no key, which Load would ignore silently: a misspelt
// DSYNCD_WEBHOOK_SECRET leaves the secrets unset. extra names variables
// that are not keys but are read elsewhere (such as DSYNCD_DEV).
func UnknownEnv(environ []string, extra ...string) []string {
	known := map[string]string{} // variable -> key; "" for extra
	var names []string
	for _, k := range keys() {
		known[EnvVar(k.key)] = k.key
		if k.kind != kindRules {
			names = append(names, EnvVar(k.key))
		}
	}
	for _, e := range extra {
		known[e] = ""
		names = append(names, e)
	}
	var out []string
	for _, kv := range environ {
		name, _, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(name, EnvPrefix) {
			continue
		}
		key, ok := known[name]
		switch {
		case ok && key != "" && slices.ContainsFunc(keys(), func(k keyInfo) bool { return k.key == key && k.kind == kindRules }):
			out = append(out, name+": "+key+" can only be set in the configuration file; the variable is ignored")
		case ok:
		default:
			p := name + ": no configuration key has this environment variable; it is ignored"
			best, bestD := "", 4
			for _, n := range names {
				if d := levenshtein(name, n); d < bestD {
					best, bestD = n, d
				}
			}
			if best != "" {
				p += fmt.Sprintf(" (did you mean %s?)", best)
			}
			out = append(out, p)
		}
	}
	slices.Sort(out)
	return out
}

// Error lists configuration problems, one per line, each "key: problem".
// Load and Config.Validate return it.
type Error struct {
	Problems []string
}

func (e *Error) Error() string { return strings.Join(e.Problems, "\n") }

// Load reads the YAML file at path (may be "" = no file), the environment and
// the flags (may be nil), over Default. Only flags named by a key path and
// actually set on the command line count; other flags are ignored. It
// returns an error naming the key for an unknown key or a value of the wrong
// type (an *Error listing every such problem, or the file's read error). It
// does not call Validate.
func Load(path string, flags *pflag.FlagSet) (Config, error) {
	c, problems, _, err := load(path, flags)
	if err != nil {
		return Config{}, err
	}
	if len(problems) > 0 {
		return Config{}, &Error{Problems: problems}
	}
	return c, nil
}

// Check loads the configuration as Load does and returns every problem at
// once, each "key: problem": Load's (unknown keys, values of the wrong type)
// and then Validate's, leaving out those about a key that failed to decode
// (its value is unknown). cfg is what decoded: use it only for reporting
// when problems is not empty; undecoded lists the keys whose value could not
// be decoded. err is for a file that cannot be read.
func Check(path string, flags *pflag.FlagSet) (cfg Config, problems, undecoded []string, err error) {
	c, problems, undecoded, err := load(path, flags)
	if err != nil {
		return Config{}, nil, nil, err
	}
	for _, p := range c.Problems() {
		if !Related(ProblemKey(p), undecoded) {
			problems = append(problems, p)
		}
	}
	return c, problems, undecoded, nil
}

// ProblemKey returns the key a "key: problem" line is about.
func ProblemKey(problem string) string {
	k, _, _ := strings.Cut(problem, ": ")
	return k
}

// Related reports whether key is one of keys, or a part or a parent of one
// ("mapping.groups[0]" is related to "mapping.groups[0].badges" and to "mapping").
func Related(key string, keys []string) bool {
	under := func(a, b string) bool { // a is b or inside b
		return a == b || strings.HasPrefix(a, b+".") || strings.HasPrefix(a, b+"[")
	}
	return slices.ContainsFunc(keys, func(k string) bool { return under(key, k) || under(k, key) })
}

// load reads the configuration over Default. It returns what decoded, the
// problems of unknown keys and undecodable values (sorted), and the keys
// whose value could not be decoded.
func load(path string, flags *pflag.FlagSet) (c Config, problems, failed []string, err error) {
	v := viper.New()
	ks := keys()
	def := reflect.ValueOf(Default())
	for _, k := range ks {
		if d := def.FieldByIndex(k.index); !(d.Kind() == reflect.Slice && d.IsNil()) {
			v.SetDefault(k.key, d.Interface())
		}
		// Binding every key explicitly (rather than relying on AutomaticEnv)
		// makes the environment apply whether or not the file or the
		// defaults mention the key.
		if k.kind != kindRules {
			if err := v.BindEnv(k.key, EnvVar(k.key)); err != nil {
				return Config{}, nil, nil, fmt.Errorf("config: bind %s: %w", k.key, err)
			}
		}
		if flags != nil {
			if f := flags.Lookup(k.key); f != nil {
				// viper only uses the flag's value when it was set.
				if err := v.BindPFlag(k.key, f); err != nil {
					return Config{}, nil, nil, fmt.Errorf("config: bind --%s: %w", k.key, err)
				}
			}
		}
	}
	if path != "" {
		v.SetConfigFile(path)
		v.SetConfigType("yaml")
		if err := v.ReadInConfig(); err != nil {
			return Config{}, nil, nil, fmt.Errorf("config: read %s: %w", path, err)
		}
	}

	unknown := unknownKeys(v.AllKeys(), ks)
	for _, u := range unknown {
		problems = append(problems, u.problem)
	}
	if err := v.UnmarshalExact(&c, viper.DecodeHook(decodeHook)); err != nil {
		for _, p := range decodeProblems(err) {
			if p.msg != "unknown key" {
				failed = append(failed, p.key)
			}
			if !slices.ContainsFunc(unknown, func(u unknownKey) bool { return u.covers(p.key) }) {
				problems = append(problems, p.String())
			}
		}
	}
	slices.Sort(problems)
	return c, slices.Compact(problems), failed, nil
}

// BindFlags registers on fs one flag per scalar key (every key but the lists
// webhook.secrets, safeguards.break_glass and the mapping's lists), named by
// its key path (--http.listen, --data_dir), with the default's value as the
// flag's default. Pass fs to Load after parsing. It panics if fs already has
// a flag of the same name.
func BindFlags(fs *pflag.FlagSet) {
	def := reflect.ValueOf(Default())
	use := usages()
	for _, k := range keys() {
		if k.kind != kindScalar {
			continue
		}
		d, u := def.FieldByIndex(k.index), use[k.key]
		if u == "" {
			u = k.key
		}
		switch {
		case k.typ == durationType:
			fs.Duration(k.key, time.Duration(d.Int()), u)
		case k.typ.Kind() == reflect.String:
			fs.String(k.key, d.String(), u)
		case k.typ.Kind() == reflect.Bool:
			fs.Bool(k.key, d.Bool(), u)
		case k.typ.Kind() == reflect.Int:
			fs.Int(k.key, int(d.Int()), u)
		case k.typ.Kind() == reflect.Int64:
			fs.Int64(k.key, d.Int(), u)
		case k.typ.Kind() == reflect.Float64:
			fs.Float64(k.key, d.Float(), u)
		default:
			panic(fmt.Sprintf("config: no flag type for %s (%s)", k.key, k.typ))
		}
	}
}

// usages returns the flag usage of every scalar key.
func usages() map[string]string {
	return map[string]string{
		"data_dir":                            "directory for the store and the embedded NATS server's data",
		"log.level":                           "log level: debug, info, warn or error",
		"log.format":                          "log format: json or console",
		"http.listen":                         "HTTP listen address (host:port)",
		"http.read_timeout":                   "HTTP request read timeout",
		"http.write_timeout":                  "HTTP response write timeout",
		"http.shutdown_timeout":               "HTTP graceful shutdown timeout",
		"http.read_header_timeout":            "HTTP request header read timeout (closes slow connections)",
		"http.idle_timeout":                   "HTTP keep-alive idle timeout",
		"http.max_connections":                "most HTTP connections open at once",
		"webhook.enabled":                     "serve the WorkOS webhook receiver",
		"webhook.path":                        "URL path of the webhook receiver",
		"webhook.tolerance":                   "maximum age of a webhook signature's timestamp",
		"webhook.max_body_bytes":              "maximum webhook body size in bytes",
		"webhook.publish_timeout":             "timeout for queueing a webhook event on JetStream",
		"webhook.max_inflight_bytes":          "most bytes of webhook bodies read and queued at once (503 past it)",
		"nats.url":                            "NATS server URL(s); empty runs an embedded server",
		"nats.stream":                         "JetStream stream for directory events",
		"nats.subject_prefix":                 "subject prefix of the events stream",
		"nats.dlq_stream":                     "JetStream stream for events that kept failing",
		"nats.creds":                          "NATS credentials file (external server)",
		"nats.user":                           "NATS user (external server)",
		"nats.password":                       "NATS password (prefer " + EnvVar("nats.password") + ")",
		"nats.tls_ca":                         "PEM file of CAs for the NATS server's certificate",
		"nats.replicas":                       "stream replicas, 1 to 5 (1 with the embedded server)",
		"nats.sync_interval":                  "embedded server fsync interval",
		"nats.sync_always":                    "embedded server fsyncs every write",
		"nats.event_encoding":                 "how events are stored in the stream: s2 (compressed) or json",
		"nats.max_bytes":                      "events stream size cap in bytes (0 = unlimited)",
		"nats.max_age":                        "events stream retention (0 = unlimited)",
		"nats.duplicate_window":               "JetStream duplicate detection window",
		"nats.listen":                         "embedded NATS client address (empty = 127.0.0.1, random port)",
		"nats.snapshot_bucket":                "Object Store bucket of the store's snapshots",
		"api.token":                           "HTTP API bearer token (prefer " + EnvVar("api.token") + ")",
		"mapping.admin_badge":                 "badge the last-admin safeguard protects",
		"safeguards.on_directory_deleted":     "on directory deletion: keep or deprovision",
		"safeguards.allow_no_admin_rule":      "allow a mapping with no rule granting the admin badge",
		"safeguards.max_deprovisions.count":   "most users losing badges per window, whatever the organisation's size (0 = no cap)",
		"safeguards.max_deprovisions.percent": "most users losing badges per window, as a percent of the holders of a mapped badge (0 = count only)",
		"safeguards.max_deprovisions.floor":   "least the percent limit can be, for small organisations",
		"safeguards.max_deprovisions.window":  "breaker window",
		"store.path":                          "store file (empty = <data_dir>/dsyncd.db)",
		"store.processed_retention":           "how long processed event ids are remembered",
		"store.audit_retention":               "how long audit entries are kept (0 = forever)",
		"store.open_timeout":                  "store file lock timeout",
		"store.snapshot_interval":             "how often a snapshot of the store is taken (0 = only when the stream fills)",
		"store.snapshots_kept":                "snapshots kept; the stream is purged up to the oldest (0 = no snapshots, no purging)",
		"workos.api_key":                      "WorkOS API key (prefer " + EnvVar("workos.api_key") + ")",
		"workos.endpoint":                     "WorkOS API base URL",
		"events.poll_interval":                "WorkOS Events API poll interval (0 = off)",
		"events.start":                        "where polling first starts: now or an RFC 3339 time",
		"events.on_stale_cursor":              "when the Events API refuses the cursor: reconcile (full reconcile, then poll from then) or fail",
		"reconcile.interval":                  "full reconciliation interval (0 = off)",
		"worker.enabled":                      "apply events to this node's store (false: a receiver-only node)",
		"worker.batch_size":                   "events fetched per batch, 1 to 10000",
		"node.id":                             "this node's name among the nodes of one NATS cluster (empty: the host name, single-node consumer)",
		"worker.max_attempts":                 "attempts before an event goes to the DLQ",
		"worker.ack_wait":                     "JetStream ack wait before redelivery",
		"worker.retry_backoff":                "delay before retrying a failed event",
		"changes.enabled":                     "write the change feed (/v1/changes, its stream, the webhooks out)",
		"changes.retention":                   "how long change records are kept (older: 410, resync from /v1/export)",
		"changes.jetstream":                   "relay the change feed to its JetStream stream",
		"changes.stream":                      "JetStream stream of the change feed",
		"changes.subject_prefix":              "subject prefix of the change feed's stream",
		"changes.webhook.url":                 "URL the change feed is POSTed to, signed (empty = none)",
		"changes.webhook.secret":              "secret signing the webhooks out (prefer " + EnvVar("changes.webhook.secret") + ")",
		"changes.webhook.max_age":             "how long a change is retried to the webhook URL before it is skipped",
		"worker.max_yield_lag":                "during a webhook flood the worker yields the CPU to the receiver until the events it applies have waited this long (0: never yields)",
	}
}

var durationType = reflect.TypeFor[time.Duration]()

// keyKind classifies a key.
type keyKind int

const (
	kindScalar keyKind = iota // a string, bool, number or duration: env and flag
	kindList                  // a []string: env (comma-separated), no flag
	kindRules                 // a slice of structs: file only
)

// keyInfo is one leaf key of Config.
type keyInfo struct {
	key   string // dotted path, e.g. "http.listen"
	index []int  // reflect field index path in Config
	typ   reflect.Type
	kind  keyKind
}

// keys lists Config's leaf keys in field order, derived from the mapstructure
// tags so that the defaults, the environment and the flags cannot drift from
// the struct.
func keys() []keyInfo {
	var out []keyInfo
	var walk func(t reflect.Type, prefix string, index []int)
	walk = func(t reflect.Type, prefix string, index []int) {
		for i := range t.NumField() {
			f := t.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("mapstructure"), ",")
			if name == "" || name == "-" {
				continue
			}
			key := prefix + name
			idx := append(slices.Clone(index), i)
			switch {
			case f.Type.Kind() == reflect.Struct:
				walk(f.Type, key+".", idx)
			case f.Type.Kind() == reflect.Slice && f.Type.Elem().Kind() == reflect.String:
				out = append(out, keyInfo{key: key, index: idx, typ: f.Type, kind: kindList})
			case f.Type.Kind() == reflect.Slice:
				out = append(out, keyInfo{key: key, index: idx, typ: f.Type, kind: kindRules})
			default:
				out = append(out, keyInfo{key: key, index: idx, typ: f.Type, kind: kindScalar})
			}
		}
	}
	walk(reflect.TypeFor[Config](), "", nil)
	return out
}

// unknownKey is a key found in the file that Config does not have.
type unknownKey struct {
	key     string
	problem string
}

// covers reports whether a problem about key is already reported by u.
func (u unknownKey) covers(key string) bool {
	return key == u.key || strings.HasPrefix(u.key, key+".")
}

// unknownKeys returns the problems of the keys viper saw (the file's, with
// the known ones) that are not Config's keys, sorted.
func unknownKeys(seen []string, ks []keyInfo) []unknownKey {
	known := make(map[string]bool, len(ks))
	for _, k := range ks {
		known[k.key] = true
	}
	var out []unknownKey
	for _, s := range seen {
		if known[s] {
			continue
		}
		if slices.ContainsFunc(ks, func(k keyInfo) bool {
			return strings.HasPrefix(k.key, s+".") || strings.HasPrefix(s, k.key+".")
		}) {
			// A section given a scalar, or a key given a section: a type
			// error, which decoding reports.
			continue
		}
		p := s + ": unknown key"
		if hint := closest(s, ks); hint != "" {
			p += fmt.Sprintf(" (did you mean %s?)", hint)
		}
		out = append(out, unknownKey{key: s, problem: p})
	}
	slices.SortFunc(out, func(a, b unknownKey) int { return strings.Compare(a.key, b.key) })
	return out
}

// closest returns the known key nearest to s, if it is close enough to be a
// typo.
func closest(s string, ks []keyInfo) string {
	best, bestD := "", 4
	for _, k := range ks {
		if d := levenshtein(s, k.key); d < bestD {
			best, bestD = k.key, d
		}
	}
	return best
}

func levenshtein(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// decodeHook converts the strings of the file, the environment and the
// flags: durations ("3m") and comma-separated lists ("a,b").
func decodeHook(from, to reflect.Type, data any) (any, error) {
	switch {
	case to == durationType && from == durationType:
		return data, nil
	case to == durationType && from.Kind() == reflect.String:
		s := strings.TrimSpace(data.(string))
		d, err := time.ParseDuration(s)
		if err != nil {
			return nil, fmt.Errorf("invalid duration %q (want a number with a unit, like 500ms, 30s, 3m or 720h)", s)
		}
		return d, nil
	case to == durationType && isNumber(from.Kind()):
		// A bare number would be nanoseconds: almost certainly a mistake,
		// except 0.
		if reflect.ValueOf(data).IsZero() {
			return time.Duration(0), nil
		}
		return nil, fmt.Errorf("invalid duration %v: missing unit (like 500ms, 30s, 3m or 720h)", data)
	case isInt(to.Kind()) && (from.Kind() == reflect.Float32 || from.Kind() == reflect.Float64):
		// mapstructure would truncate 1.5 to 1.
		if f := reflect.ValueOf(data).Float(); f != math.Trunc(f) {
			return nil, fmt.Errorf("%v is not an integer", data)
		}
		return data, nil
	case from.Kind() == reflect.String && to.Kind() == reflect.Slice && to.Elem().Kind() == reflect.String:
		s := data.(string)
		if strings.TrimSpace(s) == "" {
			return []string{}, nil
		}
		parts := strings.Split(s, ",")
		for i := range parts {
			parts[i] = strings.TrimSpace(parts[i])
		}
		return parts, nil
	}
	return data, nil
}

func isInt(k reflect.Kind) bool {
	switch k {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return true
	}
	return false
}

func isNumber(k reflect.Kind) bool {
	switch k {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64,
		reflect.Float32, reflect.Float64:
		return true
	}
	return false
}

// decodeProblem is one problem mapstructure reported.
type decodeProblem struct {
	key string
	msg string
}

func (p decodeProblem) String() string {
	if p.key == "" {
		return p.msg
	}
	return p.key + ": " + p.msg
}

// decodeProblems splits a mapstructure error into one problem per key.
func decodeProblems(err error) []decodeProblem {
	var out []decodeProblem
	var walk func(err error)
	walk = func(err error) {
		if j, ok := err.(interface{ Unwrap() []error }); ok {
			for _, e := range j.Unwrap() {
				walk(e)
			}
			return
		}
		if n, ok := err.(*mapstructure.DecodeError); ok && n.Unwrap() != nil {
			inner := n.Unwrap()
			if _, ok := inner.(interface{ Unwrap() []error }); ok {
				walk(inner)
				return
			}
			msg := inner.Error()
			if rest, ok := strings.CutPrefix(msg, "has invalid keys: "); ok {
				for _, k := range strings.Split(rest, ", ") {
					key := joinKey(n.Name(), k)
					out = append(out, decodeProblem{key: key, msg: "unknown key"})
				}
				return
			}
			out = append(out, decodeProblem{key: n.Name(), msg: cleanMessage(inner)})
			return
		}
		if u := errors.Unwrap(err); u != nil {
			walk(u)
			return
		}
		out = append(out, decodeProblem{msg: err.Error()})
	}
	walk(err)
	return out
}

func joinKey(prefix, key string) string {
	if prefix == "" {
		return key
	}
	return prefix + "." + key
}

// cleanMessage turns mapstructure's messages into plainer ones.
func cleanMessage(err error) string {
	var pe *mapstructure.ParseError
	if errors.As(err, &pe) && pe.Expected.IsValid() {
		val := fmt.Sprintf("%v", pe.Value)
		if s, ok := pe.Value.(string); ok {
			val = strconv.Quote(s)
		}
		return fmt.Sprintf("%s is not %s", val, friendlyType(pe.Expected.Type().String()))
	}
	var ue *mapstructure.UnconvertibleTypeError
	if errors.As(err, &ue) && ue.Expected.IsValid() {
		return fmt.Sprintf("want %s, got %s", friendlyType(ue.Expected.Type().String()), friendlyType(fmt.Sprintf("%T", ue.Value)))
	}
	return err.Error()
}

// friendlyType names a Go type for a configuration's user, with an article.
func friendlyType(t string) string {
	switch {
	case t == "bool":
		return "a boolean (true or false)"
	case strings.HasPrefix(t, "int") || strings.HasPrefix(t, "uint"):
		return "an integer"
	case strings.HasPrefix(t, "float"):
		return "a number"
	case t == "time.Duration":
		return "a duration"
	case t == "string":
		return "a string"
	case strings.HasPrefix(t, "map["):
		return "a section"
	case strings.HasPrefix(t, "[]"):
		return "a list"
	}
	return t
}
