package diagnose_test

import "github.com/edgeproxy/edgeproxy/lifecycle/lifecycletest"

// The diagnose tests run on the control plane the lifecycle tests use
// (lifecycletest): its API sends POST …/diagnose/ to its Diagnoser, and
// its plain HTTP listener answers the Diagnoser's probes.
const lifecycleBase = lifecycletest.Base

type (
	lifecycleEnv = lifecycletest.Env
	apiRecord    = lifecycletest.Record
)

var (
	newLifecycleEnv = lifecycletest.New
	// newZoneEnv serves the target zone as --dns-addr does, so DCV
	// delegation is used.
	newZoneEnv = lifecycletest.NewZone
)
