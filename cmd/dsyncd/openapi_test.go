package main

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/dsyncd/dsyncd/server"
)

// openAPIDoc is what TestOpenAPIDocumentsEveryRoute reads of the document.
type openAPIDoc struct {
	OpenAPI    string                                 `json:"openapi"`
	Paths      map[string]map[string]openAPIOperation `json:"paths"`
	Components map[string]map[string]json.RawMessage  `json:"components"`
}

type openAPIOperation struct {
	OperationID string                     `json:"operationId"`
	Parameters  []openAPIParam             `json:"parameters"`
	Responses   map[string]json.RawMessage `json:"responses"`
	Security    *[]map[string][]string     `json:"security"`
}

type openAPIParam struct {
	Name string `json:"name"`
	In   string `json:"in"`
}

// notV1 are the routes outside /v1, which the document does not describe:
// the webhook (its path is configured), health and metrics.
func notV1(webhookPath string) []string {
	return []string{webhookPath, "GET /healthz", "GET /readyz", "GET /metrics"}
}

// TestOpenAPIDocumentsEveryRoute: the daemon serves the document, without
// the token, byte for byte as kept in server/openapi.json; every route the
// daemon registers under /v1 is documented with its method, and every
// documented route is registered; each path parameter is declared, each
// $ref resolves, and every route but the document's own answers 401 without
// the token.
func TestOpenAPIDocumentsEveryRoute(t *testing.T) {
	d := startDaemon(t, testConfig(t), nil)
	resp, err := http.Get("http://" + d.Addr() + "/v1/openapi.json")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" || !bytes.Equal(body, server.OpenAPI) {
		t.Fatalf("GET /v1/openapi.json without a token: %d %s, %d bytes; want 200 and server/openapi.json", resp.StatusCode,
			resp.Header.Get("Content-Type"), len(body))
	}
	var doc openAPIDoc
	if err := json.Unmarshal(body, &doc); err != nil {
		t.Fatalf("the document is not JSON: %v", err)
	}
	if doc.OpenAPI != "3.1.0" {
		t.Fatalf("openapi %q, want 3.1.0", doc.OpenAPI)
	}

	registered := map[string]bool{}
	for _, r := range d.srv.Routes() {
		method, path, ok := strings.Cut(r, " ")
		if !ok || !strings.HasPrefix(path, "/v1/") {
			if !slices.Contains(notV1(d.cfg.Webhook.Path), r) {
				t.Errorf("route %q is outside /v1 and not one of %v: document it, or add it to notV1", r, notV1(d.cfg.Webhook.Path))
			}
			continue
		}
		registered[strings.ToLower(method)+" "+path] = true
	}
	documented := map[string]bool{}
	param := regexp.MustCompile(`\{([^}]+)\}`)
	ids := map[string]string{}
	for path, ops := range doc.Paths {
		for method, op := range ops {
			route := method + " " + path
			documented[route] = true
			if !registered[route] {
				t.Errorf("%s %s is documented, but the daemon registers no such route", strings.ToUpper(method), path)
			}
			if prev, dup := ids[op.OperationID]; op.OperationID == "" || dup {
				t.Errorf("%s: operationId %q missing or already %s's", route, op.OperationID, prev)
			}
			ids[op.OperationID] = route
			for _, m := range param.FindAllStringSubmatch(path, -1) {
				if !slices.ContainsFunc(op.Parameters, func(p openAPIParam) bool { return p.Name == m[1] && p.In == "path" }) {
					t.Errorf("%s: path parameter %s is not declared", route, m[1])
				}
			}
			if _, ok := op.Responses["200"]; !ok {
				t.Errorf("%s: no 200 response", route)
			}
			public := op.Security != nil && len(*op.Security) == 0
			if _, ok := op.Responses["401"]; !ok && !public {
				t.Errorf("%s: the token is required but no 401 is documented", route)
			}
			checkAuth(t, d.Addr(), strings.ToUpper(method), param.ReplaceAllString(path, "x"), public)
		}
	}
	for route := range registered {
		if !documented[route] {
			method, path, _ := strings.Cut(route, " ")
			t.Errorf("%s %s is registered but not documented in server/openapi.json", strings.ToUpper(method), path)
		}
	}
	for _, ref := range regexp.MustCompile(`"\$ref":\s*"#/components/([^/"]+)/([^"]+)"`).FindAllStringSubmatch(string(body), -1) {
		if _, ok := doc.Components[ref[1]][ref[2]]; !ok {
			t.Errorf("$ref #/components/%s/%s resolves to nothing", ref[1], ref[2])
		}
	}
}

// checkAuth asks method path without the token: 401 in the one error shape,
// unless the route is public.
func checkAuth(t *testing.T, addr, method, path string, public bool) {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+addr+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if public {
		if resp.StatusCode != 200 {
			t.Errorf("%s %s without the token: %d, want 200", method, path, resp.StatusCode)
		}
		return
	}
	var e server.ErrorBody
	if err := json.NewDecoder(resp.Body).Decode(&e); err != nil || resp.StatusCode != 401 || e.Error.Code != "unauthorized" {
		t.Errorf("%s %s without the token: %d %+v (%v), want 401 with code unauthorized", method, path, resp.StatusCode, e, err)
	}
}
