// Package store is edgeproxy's one source of truth: organizations, users,
// memberships, personal API keys and proxy records, kept in a single bbolt
// file (Open) or, for several nodes, in an etcd cluster (OpenEtcd; its
// model is described in etcd.go). Both backends run the same transaction
// code (tx.go), so every rule below holds on both.
//
// # Model
//
// Every entity is a JSON value in its own bucket, keyed by its id. Secondary
// indexes live in their own buckets and are written in the same transaction
// as the entity, so they can never disagree with it:
//
//   - records_by_domain: a domain maps to at most one record, across all
//     organizations. This is the uniqueness rule of the API.
//   - records_by_org: organization id + creation sequence, so an
//     organization's records are listed newest first by a cursor scan whose
//     cost is proportional to that organization's records, not to the store.
//   - orgs_by_slug: an organization's slug maps to its id, so a slug
//     belongs to at most one organization (CheckSlug states the form).
//     Creates and slug changes check it in their write transaction.
//   - keys_by_hash: the sha256 hash of a personal API key's value. The value
//     itself is never stored.
//   - webhooks_by_org, webhook_delivery_due, webhook_hook_due: an
//     organization's webhooks, and the queued deliveries by webhook and due
//     time (see Webhook outbox).
//
// # Guarantees
//
// A write method that returns nil has been committed and fsynced: bbolt's
// default sync-on-commit is never turned off. Small concurrent writes
// (record creates and updates) go through bbolt's Batch, so many callers
// share one fsync without any of them returning early. Business rules that
// must hold under concurrency (a domain is unique, an organization stays
// within its limit) are checked inside the write transaction that would
// break them.
//
// A write the disk refuses (full, quota, file size limit, read-only or
// failing) returns ErrUnwritable and leaves nothing of itself behind; the
// store keeps serving reads and takes writes again, without reopening,
// once the disk does (see unwritable.go).
//
// Callers never see bbolt or etcd: the rest of the program talks to the
// methods of *Store. A write transaction's function may run more than once
// (bbolt's Batch reruns it, and on etcd a transaction runs again when what
// it read changed under it), so each attempt starts from scratch and
// results leave the function only through variables it sets on every
// path.
//
// # Change feed
//
// Subscribe returns a Subscription that learns about every committed change
// to a proxy record. A change names the record and carries its state as of
// that commit, but deliveries of different commits may be reordered and
// changes to the same record coalesce, so a consumer must treat a change as
// "look at this record again" and read the store for the current state.
// Delivery never blocks a writer.
//
// # Webhook outbox
//
// A record's creation, a change of its status and its deletion also write,
// in the same transaction, an event and one delivery per webhook of the
// organization that takes that event type (webhooks.go). The event exists
// exactly when the change does; a delivery stays queued until the delivery
// worker records its outcome with FinishDelivery, so a crash at any point
// loses none and at worst sends one twice. Deliveries are indexed per
// webhook by due time, so the next due delivery of every webhook is found
// without walking the ones a dead receiver has piled up.
//
// # Certificates and locks
//
// The certs package keeps certmagic's files (certificates, keys, the ACME
// account) as blobs in the same file (PutBlob, GetBlob, ListBlobs, ...),
// and certmagic's named locks as entries with an owner and an expiry
// (TryLock, RefreshLock, Unlock). Open releases every lock it finds: only
// one process can open the file, so a lock present at Open was left by a
// process that died holding it.
//
// # ACME bookkeeping
//
// The lifecycle engine keeps what it must not forget across a restart
// about the ACME CA (acme.go): the orders each organization placed in the
// last window of its order budget (SpendOrder counts and records in one
// transaction), the CA's rate limits still in force (PutCAHold, CAHolds),
// and the domains whose last record was deleted, with the time (written
// by the deleting transaction itself), for the certificate retention.
//
// # ACME DNS-01 challenges
//
// The TXT values of DNS-01 challenges (challenges.go) are kept per name
// (PutChallengeTXT, DeleteChallengeTXT, ChallengeTXT), so that the zone
// edgeproxy serves answers the CA with the same values on every node. A
// name holds at most MaxChallengeTXT values; a put beyond drops the
// oldest, so values a crashed order left behind cannot pile up.
//
// # Schema
//
// The file carries a schema version in the meta bucket. Open applies the
// migrations between the file's version and SchemaVersion in one
// transaction, and refuses a file written by a newer program.
package store
