package control

import (
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strconv"

	"github.com/edgeproxy/edgeproxy/store"
)

// Pagination of GET /api/organizations/, PostHog's limit and offset.
const (
	defaultPageLimit = 100
	maxPageLimit     = 1000
)

// listOrgs answers GET /api/organizations/: the organizations the key
// reaches, in the order its user joined them, a page at a time.
func (a *API) listOrgs(c *call) *apiError {
	q := c.r.URL.Query()
	limit, aerr := pageParam(q, "limit", defaultPageLimit, 1, maxPageLimit)
	if aerr != nil {
		return aerr
	}
	offset, aerr := pageParam(q, "offset", 0, 0, -1)
	if aerr != nil {
		return aerr
	}
	orgs, err := a.store.MemberOrgs(c.key.UserID)
	if err != nil {
		return internalError(fmt.Errorf("listing organizations: %w", err))
	}
	if len(c.key.Orgs) > 0 {
		// A scoped key reaches its organizations only while its user is
		// still a member: as for every other route.
		orgs = slices.DeleteFunc(orgs, func(o store.Org) bool { return !slices.Contains(c.key.Orgs, o.ID) })
	}
	count := len(orgs)
	// Written so that no sum can overflow, whatever offset is.
	start := min(offset, count)
	page := orgs[start : start+min(limit, count-start)]
	results := make([]orgJSON, len(page))
	for i, o := range page {
		results[i] = a.orgJSON(o)
	}
	// DRF's LimitOffsetPagination: no next past the end; the previous
	// page of one that starts within a page of the beginning drops offset.
	var next, previous *string
	if offset < count-limit {
		next = pageURL(c.r, q, limit, offset+limit)
	}
	switch {
	case offset <= 0:
	case offset-limit <= 0:
		previous = pageURL(c.r, q, limit, 0)
	default:
		previous = pageURL(c.r, q, limit, offset-limit)
	}
	writeJSON(c.w, http.StatusOK, struct {
		Count    int       `json:"count"`
		Next     *string   `json:"next"`
		Previous *string   `json:"previous"`
		Results  []orgJSON `json:"results"`
	}{count, next, previous, results})
	return nil
}

// pageParam reads the query parameter name as an integer from lo to hi
// (no upper bound when hi < 0), def when absent.
func pageParam(q url.Values, name string, def, lo, hi int) (int, *apiError) {
	if !q.Has(name) {
		return def, nil
	}
	raw := q.Get(name)
	v, err := strconv.Atoi(raw)
	if err != nil || v < lo || hi >= 0 && v > hi {
		rule := fmt.Sprintf("an integer from %d to %d", lo, hi)
		if hi < 0 {
			rule = fmt.Sprintf("an integer %d or more", lo)
		}
		return 0, &apiError{Status: http.StatusBadRequest, Type: "validation_error", Code: "invalid_input",
			Detail: fmt.Sprintf("%s must be %s, not %q.", name, rule, raw), Attr: attr(name)}
	}
	return v, nil
}

// pageURL is the absolute URL of the page at offset (0 leaves offset out),
// built from the request's scheme, Host, path and other query parameters.
// A personal_api_key in the query is never echoed into the body.
func pageURL(r *http.Request, q url.Values, limit, offset int) *string {
	q = maps.Clone(q) // Set and Del replace values, never change them
	q.Del("personal_api_key")
	q.Set("limit", strconv.Itoa(limit))
	if offset > 0 {
		q.Set("offset", strconv.Itoa(offset))
	} else {
		q.Del("offset")
	}
	u := url.URL{Scheme: "http", Host: r.Host, Path: r.URL.Path, RawQuery: q.Encode()}
	if r.TLS != nil {
		u.Scheme = "https"
	}
	s := u.String()
	return &s
}
