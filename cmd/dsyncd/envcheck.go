package main

import (
	"os"
	"slices"

	"github.com/dsyncd/dsyncd/config"
)

// devEnv marks a development run: "make run" sets DSYNCD_DEV=1, under which
// the example configuration's development secret is expected.
const devEnv = "DSYNCD_DEV"

// devSecret is config/example.yaml's webhook secret: public, for
// development only.
const devSecret = "whsec_dev_change_me"

// knownEnv lists the DSYNCD_ variables dsyncd reads that are not
// configuration keys.
var knownEnv = []string{devEnv}

// envProblems reports the DSYNCD_ variables of the environment that set
// no key (check-config: problems; serve: warnings).
func envProblems() []string { return config.UnknownEnv(os.Environ(), knownEnv...) }

// devSecretWarning warns when webhook.secrets holds the example's public
// development secret outside "make run".
func devSecretWarning(cfg config.Config) []string {
	if os.Getenv(devEnv) == "1" || !slices.Contains(cfg.Webhook.Secrets, devSecret) {
		return nil
	}
	return []string{"webhook.secrets: holds config/example.yaml's development secret, which anyone can read: " +
		"set the WorkOS endpoint's secret in " + config.EnvVar("webhook.secrets") + " (make run sets " + devEnv + "=1 and is not warned)"}
}
