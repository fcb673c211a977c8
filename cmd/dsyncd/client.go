package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// apiGet fetches path from a running dsyncd's read API.
func apiGet(ctx context.Context, server, path, token string) ([]byte, error) {
	return apiDo(ctx, http.MethodGet, server, path, token, "")
}

// apiDo performs one /v1 request. note, when token is empty, says why
// (cliToken); it is added to a 401's error.
func apiDo(ctx context.Context, method, server, path, token, note string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimRight(server, "/")+path, nil)
	if err != nil {
		return nil, err
	}
	setAPIHeaders(req, token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<30))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode/100 != 2 {
		return nil, fmt.Errorf("%s %s: %s: %s%s", method, path, resp.Status, strings.TrimSpace(string(body)), unauthorizedNote(resp.StatusCode, note))
	}
	return body, nil
}

// setAPIHeaders adds the bearer token and, on a request that changes
// something, the JSON content type /v1 requires of those.
func setAPIHeaders(req *http.Request, token string) {
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if req.Method != http.MethodGet && req.Method != http.MethodHead {
		req.Header.Set("Content-Type", "application/json")
	}
}

// unauthorizedNote is what a 401 error adds: why the CLI had no token.
func unauthorizedNote(status int, note string) string {
	if status != http.StatusUnauthorized || note == "" {
		return ""
	}
	return " (" + note + ")"
}
