package control

import (
	"context"
	"net/http"
	"time"

	"github.com/edgeproxy/edgeproxy/store"
)

// Diagnoser is what POST …/proxy_records/{id}/diagnose/ needs of the
// diagnosis (package diagnose implements it).
type Diagnoser interface {
	// Admit starts a diagnosis of record, of organization org, if the
	// limits on diagnoses allow one now. It returns the func to call once
	// the diagnosis is over, or nil and how long until one may start.
	Admit(org, record string) (done func(), wait time.Duration)
	// Diagnose runs every check for rec and returns the report, which
	// the API sends as JSON.
	Diagnose(ctx context.Context, rec store.Record) any
}

// errDiagnoseUnavailable answers a diagnosis on a server built without a
// Diagnoser.
var errDiagnoseUnavailable = &apiError{Status: http.StatusServiceUnavailable, Type: "server_error", Code: "unavailable",
	Detail: "Diagnostics are not available on this server."}

func (a *API) diagnoseRecord(c *call) *apiError {
	rec, aerr := a.orgRecord(c)
	if aerr != nil {
		return aerr
	}
	if a.cfg.Diagnoser == nil {
		return errDiagnoseUnavailable
	}
	done, wait := a.cfg.Diagnoser.Admit(rec.OrgID, rec.ID)
	if done == nil {
		return throttled(wait)
	}
	defer done()
	writeJSON(c.w, http.StatusOK, a.cfg.Diagnoser.Diagnose(c.r.Context(), rec))
	return nil
}
