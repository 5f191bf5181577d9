package diagnose_test

import (
	"github.com/edgeproxy/edgeproxy/control"
	"github.com/edgeproxy/edgeproxy/diagnose"
)

// The API's diagnosis, as cmd/edgeproxy gives it.
var _ control.Diagnoser = (*diagnose.Diagnoser)(nil)
