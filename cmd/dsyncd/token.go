package main

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/dsyncd/dsyncd/config"
)

// tokenFileName is the file under data_dir that holds the API token serve
// created because api.token is unset.
const tokenFileName = "api.token"

// tokenFile is where serve keeps the API token it created.
func tokenFile(cfg config.Config) string { return filepath.Join(cfg.DataDir, tokenFileName) }

// serveToken returns the token /v1 requires: api.token when set, else the
// one in <data_dir>/api.token, created (32 random bytes, hex, mode 0600) at
// the first start. created says whether this call wrote the file.
func serveToken(cfg config.Config) (token string, created bool, err error) {
	if cfg.API.Token != "" {
		return cfg.API.Token, false, nil
	}
	path := tokenFile(cfg)
	if tok, err := readTokenFile(path); err == nil {
		return tok, false, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return "", false, fmt.Errorf("api.token is unset and the token file cannot be used: %w", err)
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return "", false, err
	}
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", false, err
	}
	tok := hex.EncodeToString(b)
	// Written whole under a temporary name, then linked: the token file
	// either does not exist or holds a whole token, and a concurrent
	// creator's token is kept (Link fails on an existing file).
	tmp, err := os.CreateTemp(cfg.DataDir, ".api.token-*")
	if err != nil {
		return "", false, err
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.WriteString(tok + "\n")
	if err == nil {
		err = tmp.Chmod(0o600)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", false, fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Link(tmp.Name(), path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			tok, err := readTokenFile(path)
			return tok, false, err
		}
		return "", false, fmt.Errorf("create %s: %w", path, err)
	}
	_ = syncDir(cfg.DataDir)
	return tok, true, nil
}

// readTokenFile reads a token file, refusing an empty one.
func readTokenFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", fmt.Errorf("%s is empty", path)
	}
	return tok, nil
}

// cliToken returns the bearer token the CLI sends to a running serve:
// api.token, else the token file serve created under data_dir. note, when
// no token was found, says why, for the error of a 401.
func cliToken(cfg config.Config) (token, note string) {
	if cfg.API.Token != "" {
		return cfg.API.Token, ""
	}
	path := tokenFile(cfg)
	tok, err := readTokenFile(path)
	switch {
	case err == nil:
		return tok, ""
	case errors.Is(err, fs.ErrNotExist):
		return "", "api.token is unset and " + path + " does not exist (serve creates it when it starts); pass the --config serve uses, or set " + config.EnvVar("api.token")
	default:
		return "", "api.token is unset and the token file cannot be read: " + err.Error() + "; run as the service user, or set " + config.EnvVar("api.token")
	}
}
