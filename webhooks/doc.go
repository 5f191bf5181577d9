// Package webhooks delivers an organization's status notifications
// (CONTRACT §10) to its receivers, signed the Standard Webhooks way.
//
// # Model
//
// The store writes every event, and one delivery per webhook that takes
// it, in the transaction of the change that causes it (store's outbox).
// The Worker sends what is due and records each attempt's outcome in the
// store, so the schedule lives in the file: a restart or a kill -9 loses
// nothing, and a delivery whose outcome was not recorded is sent again
// with the same webhook-id. Delivery is at least once; receivers
// deduplicate by webhook-id and order by the record's updated_at.
//
// # Attempts
//
// An attempt is a POST of the event's JSON with the headers webhook-id
// (the event's id, the same on every retry), webhook-timestamp (Unix
// seconds of the attempt) and webhook-signature (v1, HMAC-SHA256 of
// "id.timestamp.body" keyed with the secret's decoded bytes, signed with
// the webhook's secret at the time of the attempt). A 2xx within the
// timeout (10 s) delivers it. 410 disables the webhook at once and drops
// its queue. Anything else is retried after Schedule (5 s, 5 min, 30 min,
// 2 h, 5 h, 10 h, 10 h), or after the receiver's Retry-After when that is
// longer (capped at 24 h), and dropped when the last retry fails. A
// webhook whose attempts have failed for 5 days without a success is
// disabled. Redirects are not followed; response bodies are not read
// beyond 4 KiB nor kept: last_delivery says in our words what happened.
//
// # Addresses
//
// Unless AllowPrivate, the client connects only to public unicast
// addresses (internal/netguard), checked in the dialer's Control hook on
// the address actually dialled, so a name that resolved to a public
// address when the webhook was created and to a private one now is
// refused at the dial; and it uses no proxy from the environment.
//
// # Bounds
//
// At most Workers attempts are in flight, at most PerOrg for one
// organization and one per webhook, so a receiver that hangs holds one
// worker for at most the timeout and an organization's receivers never
// hold more than PerOrg workers. Nothing is queued in memory: the worker
// asks the store for the next due delivery of each webhook that is free,
// and the store keeps them indexed so that a webhook's backlog costs the
// others nothing.
//
// Run one Worker per store; in a cluster only the leader would run it.
package webhooks
