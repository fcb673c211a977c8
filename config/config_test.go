package config

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/dsyncd/dsyncd/mapping"
)

// clearEnv unsets every DSYNCD_ variable for the test, restoring them after.
func clearEnv(t *testing.T) {
	t.Helper()
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(name, EnvPrefix) {
			t.Setenv(name, "") // registers the restore
			if err := os.Unsetenv(name); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// writeFile writes content to a YAML file in a temporary directory.
func writeFile(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "dsyncd.yaml")
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// parsedFlags returns a flag set with BindFlags's flags, parsed from args.
func parsedFlags(t *testing.T, args ...string) *pflag.FlagSet {
	t.Helper()
	fs := pflag.NewFlagSet("dsyncd", pflag.ContinueOnError)
	BindFlags(fs)
	fs.String("config", "", "config file (not a config key)")
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	return fs
}

func TestDefault(t *testing.T) {
	tests := []struct {
		name    string
		edit    func(*Config)
		wantErr []string
	}{
		{
			name: "valid once a secret is set",
			edit: func(c *Config) { c.Webhook.Secrets = []string{"whsec_x"} },
		},
		{
			name:    "invalid without a secret",
			edit:    func(*Config) {},
			wantErr: []string{"webhook.secrets: at least one secret is required"},
		},
		{
			name: "valid without a secret when the webhook is disabled",
			edit: func(c *Config) { c.Webhook.Enabled = false },
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := Default()
			tt.edit(&c)
			checkErr(t, c.Validate(), tt.wantErr)
		})
	}
}

func TestLoadWithNothingSetIsDefault(t *testing.T) {
	clearEnv(t)
	for _, flags := range []*pflag.FlagSet{nil, parsedFlags(t)} {
		got, err := Load("", flags)
		if err != nil {
			t.Fatal(err)
		}
		if want := Default(); !reflect.DeepEqual(got, want) {
			t.Errorf("Load(\"\", %v) = %+v, want Default() %+v", flags != nil, got, want)
		}
	}
}

func TestExampleLoadsAndValidates(t *testing.T) {
	clearEnv(t)
	c, err := Load("example.yaml", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("example.yaml does not validate:\n%v", err)
	}
	if w := c.Warnings(); len(w) > 0 {
		t.Errorf("example.yaml has warnings: %q", w)
	}
	if c.NATS.URL != "" || c.DataDir != "./data" || c.Log.Format != "console" {
		t.Errorf("example.yaml: nats.url %q, data_dir %q, log.format %q; want embedded, ./data, console",
			c.NATS.URL, c.DataDir, c.Log.Format)
	}
	if !slices.Equal(c.Webhook.Secrets, []string{"whsec_dev_change_me"}) {
		t.Errorf("webhook.secrets = %q", c.Webhook.Secrets)
	}
	wantGroups := []mapping.GroupRule{{Name: "App Admins", Badges: []mapping.Badge{"admin"}, OnUnmap: mapping.OnUnmapKeep}}
	if !reflect.DeepEqual(c.Mapping.Groups, wantGroups) {
		t.Errorf("mapping.groups = %+v, want %+v", c.Mapping.Groups, wantGroups)
	}
	if len(c.Mapping.Roles) != 1 || !slices.Equal(c.Mapping.DefaultBadges, []mapping.Badge{"member"}) {
		t.Errorf("mapping.roles = %+v, default_badges = %q", c.Mapping.Roles, c.Mapping.DefaultBadges)
	}
	// The commented keys show their defaults, so uncommenting them changes nothing.
	if c.Worker != Default().Worker || c.Store != Default().Store || c.NATS.MaxAge != Default().NATS.MaxAge {
		t.Errorf("example.yaml differs from the defaults it documents")
	}
}

// TestExampleMentionsEveryKey checks that every key appears in example.yaml,
// set or commented, under its section.
func TestExampleMentionsEveryKey(t *testing.T) {
	b, err := os.ReadFile("example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	// Uncomment "# key: value" lines, then read the keys by indentation.
	line := regexp.MustCompile(`^(\s*)(?:# ?)?(\s*)([a-z_]+):`)
	seen := map[string]bool{}
	var stack []string // section names by depth
	for _, l := range strings.Split(string(b), "\n") {
		m := line.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		depth := (len(m[1]) + len(m[2])) / 2
		if depth > len(stack) {
			continue // inside a list item or a comment's prose
		}
		stack = append(stack[:depth], m[3])
		seen[strings.Join(stack, ".")] = true
	}
	for _, k := range keys() {
		if !seen[k.key] {
			t.Errorf("example.yaml does not mention %s", k.key)
		}
	}
}

func TestLoad(t *testing.T) {
	tests := []struct {
		name  string
		file  string // YAML; empty = no file
		env   map[string]string
		args  []string
		check func(t *testing.T, c Config)
		// wantErr lists substrings of the error; nil means no error.
		wantErr []string
	}{
		{
			name: "file overrides defaults",
			file: "http:\n  listen: 0.0.0.0:9000\n",
			check: func(t *testing.T, c Config) {
				eq(t, "http.listen", c.HTTP.Listen, "0.0.0.0:9000")
				eq(t, "http.read_timeout", c.HTTP.ReadTimeout, 10*time.Second)
			},
		},
		{
			name: "env overrides file",
			file: "http:\n  listen: 0.0.0.0:9000\nlog:\n  level: debug\n",
			env:  map[string]string{"DSYNCD_HTTP_LISTEN": ":9100"},
			check: func(t *testing.T, c Config) {
				eq(t, "http.listen", c.HTTP.Listen, ":9100")
				eq(t, "log.level", c.Log.Level, "debug")
			},
		},
		{
			name: "flags override env",
			file: "http:\n  listen: 0.0.0.0:9000\n",
			env:  map[string]string{"DSYNCD_HTTP_LISTEN": ":9100", "DSYNCD_LOG_LEVEL": "warn"},
			args: []string{"--http.listen", ":9200", "--data_dir=/var/lib/dsyncd", "--config", "ignored.yaml"},
			check: func(t *testing.T, c Config) {
				eq(t, "http.listen", c.HTTP.Listen, ":9200")
				eq(t, "data_dir", c.DataDir, "/var/lib/dsyncd")
				eq(t, "log.level", c.Log.Level, "warn") // flag not set: env stays
			},
		},
		{
			name: "unset flags do not override the file",
			file: "webhook:\n  tolerance: 1m\n  enabled: false\n",
			args: []string{"--log.level", "error"},
			check: func(t *testing.T, c Config) {
				eq(t, "webhook.tolerance", c.Webhook.Tolerance, time.Minute)
				eq(t, "webhook.enabled", c.Webhook.Enabled, false)
				eq(t, "log.level", c.Log.Level, "error")
			},
		},
		{
			name: "env secrets split on commas",
			file: "webhook:\n  secrets: [from_file]\n",
			env:  map[string]string{"DSYNCD_WEBHOOK_SECRETS": "a,b"},
			check: func(t *testing.T, c Config) {
				eq(t, "webhook.secrets", c.Webhook.Secrets, []string{"a", "b"})
			},
		},
		{
			name: "env sets keys the file omits",
			env: map[string]string{
				"DSYNCD_NATS_SYNC_ALWAYS":                    "true",
				"DSYNCD_WORKOS_API_KEY":                      "sk_test",
				"DSYNCD_NATS_MAX_BYTES":                      "2048",
				"DSYNCD_WORKER_ACK_WAIT":                     "500ms",
				"DSYNCD_SAFEGUARDS_MAX_DEPROVISIONS_PERCENT": "12.5",
			},
			check: func(t *testing.T, c Config) {
				eq(t, "nats.sync_always", c.NATS.SyncAlways, true)
				eq(t, "workos.api_key", c.WorkOS.APIKey, "sk_test")
				eq(t, "nats.max_bytes", c.NATS.MaxBytes, int64(2048))
				eq(t, "worker.ack_wait", c.Worker.AckWait, 500*time.Millisecond)
				eq(t, "safeguards.max_deprovisions.percent", c.Safeguards.MaxDeprovisions.Percent, 12.5)
			},
		},
		{
			name: "file sections left empty keep their defaults",
			file: "store:\napi:\nworker:\n  # batch_size: 1\n",
			check: func(t *testing.T, c Config) {
				eq(t, "store", c.Store, Default().Store)
				eq(t, "worker", c.Worker, Default().Worker)
			},
		},
		{
			name: "file mapping decodes rules",
			file: "mapping:\n  default_badges: []\n  groups:\n    - {id: g1, badges: [a, b], on_unmap: remove}\n  roles:\n    - {slug: r, badges: [c]}\n",
			check: func(t *testing.T, c Config) {
				eq(t, "mapping.groups", c.Mapping.Groups, []mapping.GroupRule{{ID: "g1", Badges: []mapping.Badge{"a", "b"}, OnUnmap: "remove"}})
				eq(t, "mapping.roles", c.Mapping.Roles, []mapping.RoleRule{{Slug: "r", Badges: []mapping.Badge{"c"}}})
				eq(t, "mapping.default_badges", c.Mapping.DefaultBadges, []mapping.Badge{})
				eq(t, "mapping.admin_badge", c.Mapping.AdminBadge, mapping.Badge("admin"))
			},
		},
		{
			name: "zero duration without unit is accepted",
			file: "events:\n  poll_interval: 0\n",
			check: func(t *testing.T, c Config) {
				eq(t, "events.poll_interval", c.Events.PollInterval, time.Duration(0))
			},
		},
		{
			name:    "unknown key is an error naming it",
			file:    "htpp:\n  listen: :9000\n",
			wantErr: []string{"htpp.listen: unknown key (did you mean http.listen?)"},
		},
		{
			name:    "unknown nested key is an error naming it",
			file:    "nats:\n  strem: X\n",
			wantErr: []string{"nats.strem: unknown key (did you mean nats.stream?)"},
		},
		{
			name:    "unknown key in a group rule is an error naming it",
			file:    "mapping:\n  groups:\n    - {nmae: Admins, badges: [admin]}\n",
			wantErr: []string{"mapping.groups[0].nmae: unknown key"},
		},
		{
			name:    "wrong type is an error naming the key",
			file:    "webhook:\n  tolerance: banana\n",
			wantErr: []string{"webhook.tolerance: invalid duration \"banana\""},
		},
		{
			name:    "duration without unit is an error naming the key",
			file:    "http:\n  read_timeout: 10\n",
			wantErr: []string{"http.read_timeout: invalid duration 10: missing unit"},
		},
		{
			name:    "wrong type from env is an error naming the key",
			env:     map[string]string{"DSYNCD_WORKER_BATCH_SIZE": "lots", "DSYNCD_WEBHOOK_ENABLED": "maybe"},
			wantErr: []string{"worker.batch_size: \"lots\" is not an integer", "webhook.enabled: \"maybe\" is not a boolean"},
		},
		{
			name:    "scalar for a section is an error naming the key",
			file:    "http: yes\n",
			wantErr: []string{"http"},
		},
		{
			name:    "fraction for an integer is an error naming the key",
			file:    "nats:\n  replicas: 1.5\n",
			wantErr: []string{"nats.replicas: 1.5 is not an integer"},
		},
		{
			name:    "section for a scalar is an error naming the key",
			file:    "http:\n  listen: {host: x}\n",
			wantErr: []string{"http.listen: want a string, got a section"},
		},
		{
			name:    "every problem is reported at once",
			file:    "htpp:\n  listen: :9000\nwebhook:\n  tolerance: banana\nworker:\n  batch_size: many\n",
			wantErr: []string{"htpp.listen: unknown key", "webhook.tolerance: invalid duration", "worker.batch_size:"},
		},
		{
			name:    "missing file is an error naming it",
			file:    "-", // see below
			wantErr: []string{"does-not-exist.yaml"},
		},
		{
			name:    "malformed YAML is an error",
			file:    "http: [\n",
			wantErr: []string{"config: read"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clearEnv(t)
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			var path string
			switch tt.file {
			case "":
			case "-":
				path = filepath.Join(t.TempDir(), "does-not-exist.yaml")
			default:
				path = writeFile(t, tt.file)
			}
			var flags *pflag.FlagSet
			if tt.args != nil {
				flags = parsedFlags(t, tt.args...)
			}
			c, err := Load(path, flags)
			checkErr(t, err, tt.wantErr)
			if err == nil && tt.check != nil {
				tt.check(t, c)
			}
		})
	}
}

// sample returns a value for a key of type typ that differs from def, as an
// environment or flag string and as the decoded value.
func sample(t *testing.T, k keyInfo, def reflect.Value) (string, any) {
	t.Helper()
	switch {
	case k.typ == durationType:
		return "17s", 17 * time.Second
	case k.typ.Kind() == reflect.String:
		return "v-" + k.key, reflect.ValueOf("v-" + k.key).Convert(k.typ).Interface()
	case k.typ.Kind() == reflect.Bool:
		return map[bool]string{true: "false", false: "true"}[def.Bool()], !def.Bool()
	case k.typ.Kind() == reflect.Int:
		return "7", 7
	case k.typ.Kind() == reflect.Int64:
		return "12345", int64(12345)
	case k.typ.Kind() == reflect.Float64:
		return "42.5", 42.5
	case k.kind == kindList:
		list := reflect.MakeSlice(k.typ, 2, 2)
		list.Index(0).SetString("a")
		list.Index(1).SetString("b")
		return "a, b", list.Interface()
	}
	t.Fatalf("no sample for %s (%s)", k.key, k.typ)
	return "", nil
}

// TestEnvSetsEveryKey checks that every key but the rule lists can be set
// from the environment, with no file and with a file that omits it.
func TestEnvSetsEveryKey(t *testing.T) {
	def := reflect.ValueOf(Default())
	for _, file := range []string{"", "log:\n  level: debug\n"} {
		for _, k := range keys() {
			if k.kind == kindRules {
				continue
			}
			t.Run(k.key, func(t *testing.T) {
				clearEnv(t)
				raw, want := sample(t, k, def.FieldByIndex(k.index))
				t.Setenv(EnvVar(k.key), raw)
				var path string
				if file != "" {
					path = writeFile(t, file)
				}
				c, err := Load(path, nil)
				if err != nil {
					t.Fatal(err)
				}
				eq(t, k.key, reflect.ValueOf(c).FieldByIndex(k.index).Interface(), want)
			})
		}
	}
}

// TestFlagsSetEveryScalarKey checks that BindFlags registers every scalar key
// and that Load applies it over the environment.
func TestFlagsSetEveryScalarKey(t *testing.T) {
	def := reflect.ValueOf(Default())
	use := usages()
	for _, k := range keys() {
		if k.kind != kindScalar {
			continue
		}
		t.Run(k.key, func(t *testing.T) {
			clearEnv(t)
			if use[k.key] == "" {
				t.Errorf("no usage for --%s", k.key)
			}
			raw, want := sample(t, k, def.FieldByIndex(k.index))
			if k.typ.Kind() != reflect.Bool {
				t.Setenv(EnvVar(k.key), raw+"0") // loses to the flag
			}
			c, err := Load("", parsedFlags(t, "--"+k.key+"="+raw))
			if err != nil {
				t.Fatal(err)
			}
			eq(t, k.key, reflect.ValueOf(c).FieldByIndex(k.index).Interface(), want)
		})
	}
	for key := range use {
		if !slices.ContainsFunc(keys(), func(k keyInfo) bool { return k.key == key && k.kind == kindScalar }) {
			t.Errorf("usage for %s, which is not a scalar key", key)
		}
	}
}

func TestBindFlagsDefaults(t *testing.T) {
	fs := pflag.NewFlagSet("dsyncd", pflag.ContinueOnError)
	BindFlags(fs)
	for name, want := range map[string]string{
		"http.listen":                       "127.0.0.1:8080",
		"data_dir":                          "./data",
		"log.level":                         "info",
		"webhook.tolerance":                 "3m0s",
		"nats.max_bytes":                    "4294967296",
		"safeguards.max_deprovisions.count": "25",
		"webhook.enabled":                   "true",
	} {
		f := fs.Lookup(name)
		if f == nil {
			t.Errorf("no flag --%s", name)
			continue
		}
		eq(t, "--"+name+" default", f.DefValue, want)
	}
	for _, name := range []string{"webhook.secrets", "mapping.groups", "safeguards.break_glass"} {
		if fs.Lookup(name) != nil {
			t.Errorf("flag --%s registered for a list key", name)
		}
	}
}

func TestValidate(t *testing.T) {
	valid := func() Config {
		c := Default()
		c.Webhook.Secrets = []string{"whsec_x"}
		return c
	}
	tests := []struct {
		name    string
		edit    func(*Config)
		wantErr []string
	}{
		{
			name: "valid config has no problems",
			edit: func(*Config) {},
		},
		{
			name: "every problem is listed at once, each naming its key",
			edit: func(c *Config) {
				c.Webhook.Secrets = nil
				c.Log.Level = "verbose"
				c.Safeguards.OnDirectoryDeleted = "delete"
				c.Safeguards.MaxDeprovisions.Percent = 150
				c.Mapping.Groups = []mapping.GroupRule{{}}
			},
			wantErr: []string{
				"webhook.secrets: at least one secret is required",
				"log.level: \"verbose\" is not one of debug, info, warn, error",
				"safeguards.on_directory_deleted: \"delete\" is not one of keep, deprovision",
				"safeguards.max_deprovisions.percent: must be between 0 and 100, got 150",
				"mapping.groups[0]: needs one of id, idp_id or name",
				"mapping.groups[0].badges: must list at least one badge",
			},
		},
		{
			name: "bad scalars are problems naming their keys",
			edit: func(c *Config) {
				c.Webhook.Path = "webhooks"
				c.Webhook.Secrets = []string{"ok", " "}
				c.Webhook.Tolerance = 0
				c.Webhook.MaxBodyBytes = 0
				c.HTTP.Listen = "8080"
				c.Log.Format = "text"
				c.Worker.BatchSize = 0
				c.Worker.MaxAttempts = 0
				c.Events.Start = "yesterday"
				c.WorkOS.Endpoint = "api.workos.com"
				c.Store.ProcessedRetention = time.Hour
				c.Store.AuditRetention = -time.Hour
			},
			wantErr: []string{
				"webhook.path: \"webhooks\" must start with /",
				"webhook.secrets[1]: must not be empty",
				"webhook.tolerance: must be > 0",
				"webhook.max_body_bytes: must be > 0",
				"http.listen: \"8080\" is not host:port",
				"log.format: \"text\" is not one of json, console",
				"worker.batch_size: must be between 1 and 10000, got 0",
				"worker.max_attempts: must be >= 1",
				"events.start: \"yesterday\" is not",
				"workos.endpoint:",
				"store.processed_retention: must be at least 72h",
				"store.audit_retention: must be >= 0",
			},
		},
		{
			name: "snapshot settings out of range are problems naming their keys",
			edit: func(c *Config) {
				c.Store.SnapshotInterval = 5 * time.Second
				c.Store.SnapshotsKept = 500
				c.NATS.SnapshotBucket = "no.dots"
			},
			wantErr: []string{
				"store.snapshot_interval: must be 0 or at least 1m",
				"store.snapshots_kept: must be between 0 and 100, got 500",
				"nats.snapshot_bucket: must be letters, digits",
			},
		},
		{
			name: "connection and body limits are problems naming their keys",
			edit: func(c *Config) {
				c.HTTP.MaxConnections = 0
				c.HTTP.ReadHeaderTimeout = 0
				c.HTTP.IdleTimeout = 0
				c.Webhook.MaxInflightBytes = c.Webhook.MaxBodyBytes
			},
			wantErr: []string{
				"http.read_header_timeout: must be > 0",
				"http.idle_timeout: must be > 0",
				"http.max_connections: must be > 0, got 0",
				"webhook.max_inflight_bytes: must be at least 2 × webhook.max_body_bytes (2097152), got 1048576",
			},
		},
		{
			name: "embedded NATS rejects external-server settings",
			edit: func(c *Config) {
				c.NATS.Replicas = 3
				c.NATS.User = "u"
				c.NATS.DLQStream = c.NATS.Stream
				c.NATS.SubjectPrefix = "dsync."
				c.NATS.DuplicateWindow = 1000 * time.Hour
			},
			wantErr: []string{
				"nats.replicas: must be 1 with the embedded server",
				"nats.user: only used with an external server",
				"nats.dlq_stream: must differ from nats.stream",
				"nats.subject_prefix: \"dsync.\" has an empty token",
				"nats.duplicate_window: 1000h0m0s must not exceed nats.max_age",
			},
		},
		{
			name: "external NATS accepts auth and replicas",
			edit: func(c *Config) {
				c.NATS.URL = "nats://a:4222, tls://b:4222"
				c.NATS.Replicas = 3
				c.NATS.User = "u"
				c.NATS.Password = "p"
				c.NATS.TLSCA = "/ca.pem"
			},
		},
		{
			name: "external NATS URL must be a nats URL",
			edit: func(c *Config) {
				c.NATS.URL = "http://a:4222"
				c.NATS.Listen = "127.0.0.1:4222"
			},
			wantErr: []string{
				"nats.url: \"http://a:4222\": scheme must be nats, tls, ws or wss",
				"nats.listen: only used by the embedded server",
			},
		},
		{
			name: "polling needs an API key",
			edit: func(c *Config) {
				c.Events.PollInterval = time.Minute
				c.Events.Start = "2024-01-02T15:04:05Z"
			},
			wantErr: []string{"workos.api_key: required when events.poll_interval or reconcile.interval is set"},
		},
		{
			name: "polling with an API key is valid",
			edit: func(c *Config) {
				c.Events.PollInterval = time.Minute
				c.Reconcile.Interval = time.Hour
				c.WorkOS.APIKey = "sk_test"
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := valid()
			tt.edit(&c)
			err := c.Validate()
			checkErr(t, err, tt.wantErr)
			if err != nil {
				var ce *Error
				if !errors.As(err, &ce) || len(ce.Problems) != len(tt.wantErr) {
					t.Errorf("got %d problems, want %d:\n%v", len(ce.Problems), len(tt.wantErr), err)
				}
				if n := strings.Count(err.Error(), "\n") + 1; n != len(c.Problems()) {
					t.Errorf("message has %d lines, want one per problem (%d)", n, len(c.Problems()))
				}
			}
		})
	}
}

// TestWebhookPath: a path WorkOS could not post to as written, or one the
// router would refuse or redirect, stops start-up naming webhook.path.
func TestWebhookPath(t *testing.T) {
	for _, tc := range []struct {
		path    string
		problem string // "" = valid
	}{
		{"/webhooks/workos", ""},
		{"/hooks/workos-dsync_v2.1~x", ""},
		{"webhooks", "must start with /"},
		{"/", "must not be"},
		{"/webhooks//workos", "not a clean path"},
		{"/webhooks/workos/", "not a clean path"},
		{"/webhooks/./workos", "not a clean path"},
		{"/hooks/{", "may only contain"},
		{"/hooks/{x}/{x}", "may only contain"},
		{"/hooks/a b", "may only contain"},
		{"/hooks/a%20b", "may only contain"},
		{"/hooks?x=1", "may only contain"},
		{"/healthz", "dsyncd's own routes"},
		{"/v1/export", "dsyncd's own routes"},
		{"/metrics", "dsyncd's own routes"},
		{"/v10", ""},
	} {
		t.Run(tc.path, func(t *testing.T) {
			c := Default()
			c.Webhook.Secrets = []string{"whsec_x"}
			c.Webhook.Path = tc.path
			err := c.Validate()
			switch {
			case tc.problem == "" && err != nil:
				t.Errorf("refused: %v", err)
			case tc.problem != "" && (err == nil || !strings.Contains(err.Error(), "webhook.path: ") || !strings.Contains(err.Error(), tc.problem)):
				t.Errorf("error = %v, want webhook.path: …%s…", err, tc.problem)
			}
		})
	}
}

func TestWarnings(t *testing.T) {
	c := Default()
	if w := c.Warnings(); len(w) != 0 {
		t.Errorf("Default().Warnings() = %q, want none", w)
	}
	c.Webhook.Enabled = false
	if w := c.Warnings(); len(w) != 1 || !strings.HasPrefix(w[0], "webhook.enabled: false") {
		t.Errorf("Warnings() with nothing to feed changes = %q, want the webhook.enabled warning", w)
	}
}

func TestCheckAdminRuleRefusesAMappingWithoutAnAdminRuleUnlessAllowed(t *testing.T) {
	c := Default()
	if err := c.CheckAdminRule(); err == nil || !strings.HasPrefix(err.Error(), `mapping: no group or role rule grants admin_badge "admin"`) ||
		!strings.Contains(err.Error(), "safeguards.allow_no_admin_rule: true") {
		t.Errorf("CheckAdminRule() of the defaults = %v, want the admin rule error", err)
	}
	c.Safeguards.AllowNoAdminRule = true
	if err := c.CheckAdminRule(); err != nil {
		t.Errorf("CheckAdminRule() with allow_no_admin_rule = %v, want nil", err)
	}
	c.Safeguards.AllowNoAdminRule = false
	c.Mapping.Roles = []mapping.RoleRule{{Slug: "owner", Badges: []mapping.Badge{"admin"}}}
	if err := c.CheckAdminRule(); err != nil {
		t.Errorf("CheckAdminRule() with a role rule granting admin = %v, want nil", err)
	}
}

func TestRedacted(t *testing.T) {
	c := Default()
	c.Webhook.Secrets = []string{"whsec_a", ""}
	c.NATS.Password = "pw"
	c.NATS.URL = "nats://u:pw@a:4222,nats://token@b:4222,nats://c:4222"
	c.API.Token = "tok"
	r := c.Redacted()
	eq(t, "webhook.secrets", r.Webhook.Secrets, []string{"REDACTED", ""})
	eq(t, "nats.password", r.NATS.Password, "REDACTED")
	eq(t, "nats.url", r.NATS.URL, "nats://u:REDACTED@a:4222,nats://REDACTED@b:4222,nats://c:4222")
	eq(t, "api.token", r.API.Token, "REDACTED")
	eq(t, "workos.api_key", r.WorkOS.APIKey, "")
	eq(t, "original webhook.secrets", c.Webhook.Secrets, []string{"whsec_a", ""})
	eq(t, "original nats.password", c.NATS.Password, "pw")
}

func TestStorePath(t *testing.T) {
	tests := []struct {
		name, dataDir, path, want string
	}{
		{name: "empty path is under data_dir", dataDir: "/var/lib/dsyncd", want: "/var/lib/dsyncd/dsyncd.db"},
		{name: "set path wins", dataDir: "/var/lib/dsyncd", path: "/srv/x.db", want: "/srv/x.db"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := Default()
			c.DataDir, c.Store.Path = tt.dataDir, tt.path
			eq(t, "StorePath()", c.StorePath(), tt.want)
		})
	}
}

func eq(t *testing.T, what string, got, want any) {
	t.Helper()
	if !reflect.DeepEqual(got, want) {
		t.Errorf("%s = %#v, want %#v", what, got, want)
	}
}

// checkErr checks that err contains every one of want, or is nil if want is.
func checkErr(t *testing.T, err error, want []string) {
	t.Helper()
	if len(want) == 0 {
		if err != nil {
			t.Fatalf("unexpected error:\n%v", err)
		}
		return
	}
	if err == nil {
		t.Fatalf("no error, want one containing %q", want)
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error does not contain %q:\n%v", w, err)
		}
	}
}

// TestCheckListsEveryProblem: Check reports the load problems (unknown keys,
// wrong types) together with the validation problems of the keys that
// decoded, and nothing about a key whose value could not be decoded.
func TestCheckListsEveryProblem(t *testing.T) {
	clearEnv(t)
	path := writeFile(t, `http:
  listn: 127.0.0.1:1
webhook:
  tolerance: 3 minutes
  secrets: []
nats:
  replicas: -1
log:
  level: loud
worker:
  batch_size: many
`)
	_, problems, undecoded, err := Check(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"http.listn: unknown key (did you mean http.listen?)",
		`webhook.tolerance: invalid duration "3 minutes"`,
		`worker.batch_size: "many" is not an integer`,
		`log.level: "loud" is not one of`,
		"webhook.secrets: at least one secret is required",
		"nats.replicas: must be between 1 and 5, got -1",
	}
	all := strings.Join(problems, "\n")
	for _, w := range want {
		if !strings.Contains(all, w) {
			t.Errorf("problems lack %q:\n%s", w, all)
		}
	}
	if len(problems) != len(want) {
		t.Errorf("%d problems, want %d (none about the undecoded keys' zero values):\n%s", len(problems), len(want), all)
	}
	if strings.Join(undecoded, ",") != "webhook.tolerance,worker.batch_size" && strings.Join(undecoded, ",") != "worker.batch_size,webhook.tolerance" {
		t.Errorf("undecoded = %q", undecoded)
	}
	if _, err := Load(path, nil); err == nil || !strings.Contains(err.Error(), "webhook.tolerance") {
		t.Errorf("Load = %v, want the load problems", err)
	}
	for _, tc := range []struct {
		key  string
		keys []string
		want bool
	}{
		{"mapping.groups[0]", []string{"mapping.groups[0].badges"}, true},
		{"mapping", []string{"mapping.groups[0].badges"}, true},
		{"mapping.groups[0].badges[1]", []string{"mapping.groups"}, true},
		{"webhook.tolerance", []string{"webhook.tolerance"}, true},
		{"webhook.tolerances", []string{"webhook.tolerance"}, false},
		{"webhook.secrets", []string{"webhook.tolerance", ""}, false},
	} {
		if got := Related(tc.key, tc.keys); got != tc.want {
			t.Errorf("Related(%q, %q) = %v, want %v", tc.key, tc.keys, got, tc.want)
		}
	}
}

func TestUnknownEnvNamesMisspeltVariables(t *testing.T) {
	got := UnknownEnv([]string{
		"DSYNCD_WEBHOOK_SECRET=whsec_x", // misspelt: the secrets stay unset
		"DSYNCD_WEBHOOK_SECRETS=whsec_y",
		"DSYNCD_HTTP_LISTEN=127.0.0.1:9000",
		"DSYNCD_DEV=1",
		"DSYNCD_MAPPING_GROUPS=admins",
		"DSYNCD_NOTHING_LIKE_A_KEY=1",
		"PATH=/usr/bin", "DSYNCDX=1",
	}, "DSYNCD_DEV")
	want := []string{
		"DSYNCD_MAPPING_GROUPS: mapping.groups can only be set in the configuration file; the variable is ignored",
		"DSYNCD_NOTHING_LIKE_A_KEY: no configuration key has this environment variable; it is ignored",
		"DSYNCD_WEBHOOK_SECRET: no configuration key has this environment variable; it is ignored (did you mean DSYNCD_WEBHOOK_SECRETS?)",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("UnknownEnv =\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestAllowedHostsAreHostNames(t *testing.T) {
	c := Default()
	c.Webhook.Secrets = []string{"s"}
	c.HTTP.AllowedHosts = []string{"dsyncd.internal", "ops.example:8443", "https://dsyncd.example.com/", ""}
	got := strings.Join(c.Problems(), "\n")
	want := "http.allowed_hosts[2]: \"https://dsyncd.example.com/\" is not a host name or host:port (no scheme, path or spaces)\n" +
		"http.allowed_hosts[3]: \"\" is not a host name or host:port (no scheme, path or spaces)"
	if got != want {
		t.Errorf("problems:\n%s\nwant\n%s", got, want)
	}
}
