package control

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/mail"
	"sort"
	"strconv"
	"strings"

	"github.com/edgeproxy/edgeproxy/store"
)

// Admin is the operator's API, served only on the admin unix socket (the
// socket's file mode is its access control). It speaks JSON; errors are
// {"error": "..."} naming the field and the rule. The edgeproxy admin
// commands are its only intended client.
type Admin struct {
	store *store.Store
	cfg   Config
	log   *slog.Logger
	mux   *http.ServeMux
}

// NewAdmin returns the admin API over st. cfg.MaxProxyRecords is the
// default limit shown for organizations without their own.
func NewAdmin(st *store.Store, cfg Config) *Admin {
	a := &Admin{store: st, cfg: cfg, log: cfg.Logger, mux: http.NewServeMux()}
	if a.log == nil {
		a.log = slog.Default()
	}
	a.mux.HandleFunc("POST /orgs", a.createOrg)
	a.mux.HandleFunc("GET /orgs", a.listOrgs)
	a.mux.HandleFunc("PATCH /orgs/{id}", a.updateOrg)
	a.mux.HandleFunc("POST /users", a.createUser)
	a.mux.HandleFunc("POST /members", a.addMember)
	a.mux.HandleFunc("DELETE /orgs/{org}/members/{user}", a.removeMember)
	a.mux.HandleFunc("POST /keys", a.createKey)
	a.mux.HandleFunc("GET /keys", a.listKeys)
	a.mux.HandleFunc("POST /keys/{id}/revoke", a.revokeKey)
	a.mux.HandleFunc("GET /records", a.listRecords)
	a.mux.HandleFunc("GET /webhooks", a.listWebhooks)
	a.mux.HandleFunc("GET /backup", a.backup)
	return a
}

func (a *Admin) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, maxAPIBody)
	h, pattern := a.mux.Handler(r)
	if pattern != "" {
		a.mux.ServeHTTP(w, r) // which sets the path values
		return
	}
	// No route: the mux would answer 404 or 405 in plain text. Its answer
	// is only looked at for the Allow header it sets on a 405.
	probe := &headerOnly{header: http.Header{}}
	h.ServeHTTP(probe, r)
	if allow := probe.header.Get("Allow"); allow != "" {
		w.Header().Set("Allow", allow)
		writeJSON(w, http.StatusMethodNotAllowed, map[string]string{
			"error": fmt.Sprintf("method %s is not allowed on %s; allowed: %s", r.Method, r.URL.Path, allow)})
		return
	}
	writeJSON(w, http.StatusNotFound, map[string]string{"error": fmt.Sprintf("no admin route %s %s", r.Method, r.URL.Path)})
}

// headerOnly is a ResponseWriter that keeps the header and drops the rest.
type headerOnly struct{ header http.Header }

func (h *headerOnly) Header() http.Header         { return h.header }
func (h *headerOnly) Write(b []byte) (int, error) { return len(b), nil }
func (h *headerOnly) WriteHeader(int)             {}

// adminError is a refused admin request.
type adminError struct {
	status int
	msg    string
}

func (e *adminError) Error() string { return e.msg }

func badRequest(format string, args ...any) error {
	return &adminError{http.StatusBadRequest, fmt.Sprintf(format, args...)}
}

func notFound(format string, args ...any) error {
	return &adminError{http.StatusNotFound, fmt.Sprintf(format, args...)}
}

func (a *Admin) reply(w http.ResponseWriter, status int, v any, err error) {
	if err != nil {
		var ae *adminError
		switch {
		case errors.As(err, &ae):
		case errors.Is(err, store.ErrUnwritable):
			// The same refusal the API answers with storageUnavailable.
			a.log.Error("admin request failed", "err", err)
			ae = &adminError{http.StatusServiceUnavailable, fmt.Sprintf(
				"the data store cannot write (%s); nothing was changed, retry later", diskCause(err))}
			w.Header().Set("Retry-After", strconv.Itoa(storageRetryAfter))
		case errors.Is(err, store.ErrUnavailable):
			a.log.Error("admin request failed", "err", err)
			ae = &adminError{http.StatusServiceUnavailable,
				"the cluster store (etcd) cannot be reached, so the change could not be confirmed; nothing was half-written, retry later"}
			w.Header().Set("Retry-After", strconv.Itoa(clusterRetryAfter))
		default:
			a.log.Error("admin request failed", "err", err)
			ae = &adminError{http.StatusInternalServerError, "internal error: " + err.Error()}
		}
		writeJSON(w, ae.status, map[string]string{"error": ae.msg})
		return
	}
	writeJSON(w, status, v)
}

// decode reads a JSON request body into v, refusing unknown fields.
func decode(r *http.Request, v any) error {
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return badRequest("request body: %v", err)
	}
	return nil
}

// AdminOrg is an organization as the admin commands print it.
type AdminOrg struct {
	ID              string `json:"id"`
	Name            string `json:"name"`
	Slug            string `json:"slug"`
	CreatedAt       string `json:"created_at"`
	MaxProxyRecords int    `json:"max_proxy_records"`
	// OwnLimit is true when MaxProxyRecords is the organization's own and
	// not the server's default.
	OwnLimit bool `json:"own_limit"`
}

func (a *Admin) orgJSON(o store.Org) AdminOrg {
	return AdminOrg{ID: o.ID, Name: o.Name, Slug: o.Slug, CreatedAt: o.CreatedAt.UTC().Format(store.TimeFormat),
		MaxProxyRecords: o.Limit(a.cfg.MaxProxyRecords), OwnLimit: o.MaxProxyRecords != nil}
}

func checkOrgName(name string) error {
	if strings.TrimSpace(name) == "" {
		return badRequest("--name: must not be empty")
	}
	if len(name) > 200 {
		return badRequest("--name: must be at most 200 characters")
	}
	return nil
}

func checkLimit(max *int) error {
	if max != nil && *max < 0 {
		return badRequest("--max-proxy-records: must be 0 or more, not %d", *max)
	}
	return nil
}

type orgRequest struct {
	Name            *string `json:"name"`
	Slug            *string `json:"slug"`
	MaxProxyRecords *int    `json:"max_proxy_records"`
}

// slugError turns the store's refusal of a slug into the admin's, naming
// the flag and the rule; other errors pass unchanged.
func slugError(err error, slug string) error {
	var se *store.SlugError
	switch {
	case errors.As(err, &se):
		return badRequest("--slug: %s", se.Rule)
	case errors.Is(err, store.ErrSlugTaken):
		return badRequest("--slug: %q belongs to another organization; choose another", slug)
	}
	return err
}

// orgID is the id of the organization ref names: ref itself, or the id
// of the organization whose slug it is. A ref that names nothing is
// returned as it is, for the caller's "no organization" error.
func (a *Admin) orgID(ref string) string {
	if store.IsID(ref) || store.CheckSlug(ref) != nil {
		return ref
	}
	if org, err := a.store.OrgBySlug(ref); err == nil {
		return org.ID
	}
	return ref
}

func (a *Admin) createOrg(w http.ResponseWriter, r *http.Request) {
	var req orgRequest
	err := decode(r, &req)
	if err == nil && req.Name == nil {
		err = badRequest("--name: is required")
	}
	if err == nil {
		err = checkOrgName(*req.Name)
	}
	if err == nil {
		err = checkLimit(req.MaxProxyRecords)
	}
	slug := ""
	if err == nil && req.Slug != nil {
		slug = *req.Slug
		if serr := store.CheckSlug(slug); serr != nil {
			err = slugError(serr, slug)
		}
	}
	var org store.Org
	if err == nil {
		org, err = a.store.CreateOrgSlug(strings.TrimSpace(*req.Name), slug, req.MaxProxyRecords)
		err = slugError(err, slug)
	}
	a.reply(w, http.StatusCreated, a.orgJSON(org), err)
}

func (a *Admin) listOrgs(w http.ResponseWriter, r *http.Request) {
	orgs, err := a.store.Orgs()
	out := []AdminOrg{}
	for _, o := range orgs {
		out = append(out, a.orgJSON(o))
	}
	a.reply(w, http.StatusOK, out, err)
}

func (a *Admin) updateOrg(w http.ResponseWriter, r *http.Request) {
	var req orgRequest
	err := decode(r, &req)
	if err == nil && req.Name != nil {
		err = checkOrgName(*req.Name)
	}
	if err == nil {
		err = checkLimit(req.MaxProxyRecords)
	}
	if err == nil && req.Slug != nil {
		if serr := store.CheckSlug(*req.Slug); serr != nil {
			err = slugError(serr, *req.Slug)
		}
	}
	if err == nil && req.Name == nil && req.Slug == nil && req.MaxProxyRecords == nil {
		err = badRequest("nothing to change: give --name, --slug or --max-proxy-records")
	}
	var org store.Org
	if err == nil {
		org, err = a.store.UpdateOrg(a.orgID(r.PathValue("id")), func(o *store.Org) {
			if req.Name != nil {
				o.Name = strings.TrimSpace(*req.Name)
			}
			if req.Slug != nil {
				o.Slug = *req.Slug
			}
			if req.MaxProxyRecords != nil {
				o.MaxProxyRecords = req.MaxProxyRecords
			}
		})
		if errors.Is(err, store.ErrNotFound) {
			err = notFound("--id: no organization %s", r.PathValue("id"))
		}
		if req.Slug != nil {
			err = slugError(err, *req.Slug)
		}
	}
	a.reply(w, http.StatusOK, a.orgJSON(org), err)
}

func (a *Admin) createUser(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Email string `json:"email"`
	}
	err := decode(r, &req)
	email := strings.ToLower(strings.TrimSpace(req.Email))
	if err == nil {
		if addr, perr := mail.ParseAddress(email); perr != nil || addr.Address != email {
			err = badRequest("--email: %q is not an email address such as name@example.com", req.Email)
		}
	}
	var user store.User
	if err == nil {
		user, err = a.store.CreateUser(email)
		if errors.Is(err, store.ErrEmailTaken) {
			err = badRequest("--email: a user with %s already exists", email)
		}
	}
	a.reply(w, http.StatusCreated, user, err)
}

func (a *Admin) addMember(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Org   string `json:"org"`
		User  int64  `json:"user"`
		Level string `json:"level"`
	}
	err := decode(r, &req)
	var level store.Level
	if err == nil {
		if level, err = store.ParseLevel(req.Level); err != nil {
			err = badRequest("--level: %v", err)
		}
	}
	var m store.Membership
	if err == nil {
		m, err = a.store.SetMembership(a.orgID(req.Org), req.User, level)
		if errors.Is(err, store.ErrNotFound) {
			err = notFound("--org or --user: %v", err)
		}
	}
	a.reply(w, http.StatusOK, map[string]any{
		"org_id": m.OrgID, "user_id": m.UserID, "level": m.Level.String(), "created_at": m.CreatedAt.UTC().Format(store.TimeFormat),
	}, err)
}

// removeMember ends a membership. The user's keys stop reaching the
// organization with the commit: the API looks membership up on every
// request. An organization's last owner cannot be removed (409), so no
// organization is left that nobody can manage.
func (a *Admin) removeMember(w http.ResponseWriter, r *http.Request) {
	orgID := a.orgID(r.PathValue("org"))
	userID, err := strconv.ParseInt(r.PathValue("user"), 10, 64)
	if err != nil || userID <= 0 {
		err = badRequest("--user: %q is not a user id", r.PathValue("user"))
	}
	var m store.Membership
	if err == nil {
		m, err = a.store.RemoveMembership(orgID, userID)
		switch {
		case errors.Is(err, store.ErrNotFound):
			err = notFound("--org, --user: %v", err)
		case errors.Is(err, store.ErrLastOwner):
			err = &adminError{http.StatusConflict, fmt.Sprintf(
				"--user: %v; make another user an owner first (edgeproxy member add --level owner)", err)}
		}
	}
	if err == nil {
		a.log.Info("membership removed", "org_id", m.OrgID, "user_id", m.UserID, "level", m.Level.String())
	}
	a.reply(w, http.StatusOK, map[string]any{
		"org_id": m.OrgID, "user_id": m.UserID, "level": m.Level.String(), "created_at": m.CreatedAt.UTC().Format(store.TimeFormat),
		"removed": true,
	}, err)
}

// AdminKey is a key as the admin commands print it; Value is set only in
// the answer to its creation.
type AdminKey struct {
	ID        string   `json:"id"`
	UserID    int64    `json:"user_id"`
	Label     string   `json:"label"`
	Mask      string   `json:"mask"`
	Scopes    []string `json:"scopes"`
	Orgs      []string `json:"orgs"`
	CreatedAt string   `json:"created_at"`
	RevokedAt *string  `json:"revoked_at"`
	Value     string   `json:"value,omitempty"`
}

func keyJSON(k store.APIKey) AdminKey {
	out := AdminKey{ID: k.ID, UserID: k.UserID, Label: k.Label, Mask: k.Mask, Scopes: k.Scopes, Orgs: k.Orgs,
		CreatedAt: k.CreatedAt.UTC().Format(store.TimeFormat)}
	if out.Orgs == nil {
		out.Orgs = []string{}
	}
	if k.RevokedAt != nil {
		s := k.RevokedAt.UTC().Format(store.TimeFormat)
		out.RevokedAt = &s
	}
	return out
}

func (a *Admin) createKey(w http.ResponseWriter, r *http.Request) {
	var req struct {
		User   int64    `json:"user"`
		Scopes []string `json:"scopes"`
		Orgs   []string `json:"orgs"`
		Label  string   `json:"label"`
	}
	err := decode(r, &req)
	if err == nil {
		if len(req.Scopes) == 0 {
			req.Scopes = []string{ScopeAll}
		}
		if serr := CheckScopes(req.Scopes); serr != nil {
			err = badRequest("--scopes: %v", serr)
		}
	}
	if err == nil && len(req.Label) > 100 {
		err = badRequest("--label: must be at most 100 characters")
	}
	// Slugs become ids: the key stays tied to its organizations when
	// their slugs change.
	for i, ref := range req.Orgs {
		if err != nil {
			break
		}
		req.Orgs[i] = a.orgID(ref)
		if _, oerr := a.store.Org(req.Orgs[i]); oerr != nil {
			err = notFound("--orgs: no organization %q", ref)
		}
	}
	var out AdminKey
	if err == nil {
		stored, value := NewKey(req.User, req.Label, req.Scopes, req.Orgs)
		stored, err = a.store.CreateKey(stored)
		if errors.Is(err, store.ErrNotFound) {
			err = notFound("--user: no user %d", req.User)
		}
		out = keyJSON(stored)
		out.Value = value
	}
	a.reply(w, http.StatusCreated, out, err)
}

func (a *Admin) listKeys(w http.ResponseWriter, r *http.Request) {
	var userID int64
	var err error
	if s := r.URL.Query().Get("user"); s != "" {
		if userID, err = strconv.ParseInt(s, 10, 64); err != nil || userID <= 0 {
			err = badRequest("--user: %q is not a user id", s)
		}
	}
	out := []AdminKey{}
	if err == nil {
		var keys []store.APIKey
		keys, err = a.store.Keys(userID)
		for _, k := range keys {
			out = append(out, keyJSON(k))
		}
	}
	a.reply(w, http.StatusOK, out, err)
}

func (a *Admin) revokeKey(w http.ResponseWriter, r *http.Request) {
	k, err := a.store.RevokeKey(r.PathValue("id"))
	if errors.Is(err, store.ErrNotFound) {
		err = notFound("--id: no key %s", r.PathValue("id"))
	}
	a.reply(w, http.StatusOK, keyJSON(k), err)
}

// adminRecord is a record as the operator sees it: the API's fields and
// the organization it belongs to.
type adminRecord struct {
	OrgID string `json:"org_id"`
	recordJSON
}

func (a *Admin) listRecords(w http.ResponseWriter, r *http.Request) {
	org, status := a.orgID(r.URL.Query().Get("org")), store.Status(r.URL.Query().Get("status"))
	var err error
	if status != "" && !status.Valid() {
		err = badRequest("--status: %q is not one of %v", status, store.Statuses)
	}
	out := []adminRecord{}
	if err == nil {
		var records []store.Record
		records, err = a.store.Records(func(rec *store.Record) bool {
			return (org == "" || rec.OrgID == org) && (status == "" || rec.Status == status)
		})
		sort.Slice(records, func(i, j int) bool { return records[i].CreatedAt.After(records[j].CreatedAt) })
		for _, rec := range records {
			out = append(out, adminRecord{rec.OrgID, toJSON(rec)})
		}
	}
	a.reply(w, http.StatusOK, out, err)
}

func (a *Admin) backup(w http.ResponseWriter, r *http.Request) {
	out := &countingWriter{w: w}
	if _, err := a.store.Backup(out); err != nil {
		if out.n == 0 {
			// Nothing sent yet (on etcd the copy is taken whole before
			// it is sent, and etcd may be out of reach): an error the
			// client can tell from an empty database.
			if errors.Is(err, store.ErrUnavailable) {
				a.log.Error("backup failed", "err", err)
				w.Header().Set("Retry-After", strconv.Itoa(clusterRetryAfter))
				err = &adminError{http.StatusServiceUnavailable, "the cluster store (etcd) cannot be reached, so no consistent copy can be taken now; retry later"}
			}
			a.reply(w, 0, nil, fmt.Errorf("taking the backup: %w", err))
			return
		}
		// The status line is gone; the client sees a short body and the
		// size it was promised does not match.
		a.log.Error("backup failed", "err", err)
	}
}

// countingWriter sends a backup, setting its content type before the
// first byte, and counts the bytes sent.
type countingWriter struct {
	w http.ResponseWriter
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	if c.n == 0 {
		c.w.Header().Set("Content-Type", "application/octet-stream")
	}
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
