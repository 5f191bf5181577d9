package lifecycle_test

import (
	"github.com/edgeproxy/edgeproxy/certs"
	"github.com/edgeproxy/edgeproxy/dnsverify"
	"github.com/edgeproxy/edgeproxy/lifecycle"
)

// The engine's parts, as cmd/edgeproxy gives them.
var (
	_ lifecycle.Certs = (*certs.Manager)(nil)
	_ lifecycle.DNS   = (*dnsverify.Verifier)(nil)
)
