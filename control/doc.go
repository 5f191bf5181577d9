// Package control is edgeproxy's control plane: the management API through
// which organizations register proxy records, the personal API keys that
// authenticate it, and the rules every record's status follows.
//
// # Requests
//
// Every API request goes through the same checks, in this order: the
// personal API key (Authorization header, then body, then query
// string; the first place holding a key is the only one tried), the method,
// the organization in the path (a UUID, a slug or @current), the
// organizations the key is limited to, the key's scopes (write implies
// read, "*" implies all), the caller's membership, and for writes the
// admin level. Each failure has one fixed answer; another organization's
// record is answered exactly like a missing one, so no caller learns what
// other organizations hold. GET /api/organizations/, the one route without
// an organization in its path, checks the key and its scope only, and
// lists just the organizations the key reaches.
//
// A request that fails to authenticate counts against its client address;
// past the address's allowance such requests get 429 (ratelimit.go). A
// valid key is resolved before the limiter is consulted, so it is never
// refused by it.
//
// # Webhooks
//
// An organization's webhooks (webhooks.go) are checked here: an https://
// URL whose host resolves only to public addresses (webhooks.CheckURL),
// known event types, at most MaxWebhooks. Another organization's webhook
// is answered like a missing one, as records are. The events themselves
// are queued by the store in each change's transaction and sent by the
// webhooks package's worker; the API only adds pings.
//
// # Records
//
// The API creates a record waiting, its first DNS check due at once, with
// a random ownership token of its own (store.Record.Ownership); the
// lifecycle engine (package lifecycle) moves it on from there. Records
// show the ownership TXT record and the DCV delegation CNAME a customer
// may add besides the one that brings the traffic. A DELETE
// removes a waiting, erroring or timed_out record at once and moves an
// issuing, valid or warning one to deleting. Retry moves erroring or
// timed_out back to waiting. Both rules are the record's own
// (store.Record.ApplyDelete, store.Record.Retry), shared with the engine.
// Every transition is one store transaction, so no race between two API
// calls can skip a rule.
//
// A diagnosis (POST …/diagnose/) is run by the Diagnoser the API is given
// (package diagnose), admitted by its limits; the API only authorizes the
// call and sends the report.
package control
