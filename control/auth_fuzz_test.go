package control

import (
	"bytes"
	"io"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"testing"

	"github.com/edgeproxy/edgeproxy/store"
)

// The fuzzed keys: fixed values, so that corpus entries can hold them and
// the fuzzer can mutate them.
const (
	fuzzLiveKey    = "phx_fuzzLive0123456789abcdefghijklmnopqrstuvwxy"
	fuzzRevokedKey = "phx_fuzzRevoked456789abcdefghijklmnopqrstuvwxy"
)

// FuzzAuthenticate feeds the API's authentication an arbitrary
// Authorization header, body and query string, against a real store
// holding one live and one revoked key. It must never panic, and the
// outcome must be the contract's: the first place holding a key (the
// header's Bearer token, then the body's personal_api_key, then the
// query's) is the only one tried; the request is authenticated exactly
// when that key is the live key, byte for byte; otherwise it is 401
// authentication_failed naming the place, or not_authenticated when no
// place holds a key.
func FuzzAuthenticate(f *testing.F) {
	st, err := store.Open(filepath.Join(f.TempDir(), "fuzz.db"), store.Options{})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { st.Close() })
	_, live, err := st.BootstrapIfEmpty(store.Bootstrap{OrgName: "Fuzz", Email: "fuzz@example.com",
		Key: store.APIKey{Hash: HashKey(fuzzLiveKey), Scopes: []string{ScopeAll}}})
	if err != nil {
		f.Fatal(err)
	}
	revoked, err := st.CreateKey(store.APIKey{UserID: live.UserID, Hash: HashKey(fuzzRevokedKey), Scopes: []string{ScopeAll}})
	if err != nil {
		f.Fatal(err)
	}
	if _, err := st.RevokeKey(revoked.ID); err != nil {
		f.Fatal(err)
	}
	a := NewAPI(st, Config{})

	f.Add("Bearer "+fuzzLiveKey, []byte(nil), "")
	f.Add("", []byte(`{"personal_api_key":"`+fuzzLiveKey+`"}`), "")
	f.Add("", []byte("personal_api_key="+fuzzLiveKey), "")
	f.Add("", []byte(nil), "personal_api_key="+fuzzLiveKey)
	f.Add("", []byte(`{"personal\u005fapi_key":"`+fuzzLiveKey+`"}`), "")
	f.Add("", []byte("personal%5Fapi_key="+fuzzLiveKey), "")
	f.Add("Bearer "+fuzzRevokedKey, []byte(`{"personal_api_key":"`+fuzzLiveKey+`"}`), "personal_api_key="+fuzzLiveKey)
	f.Fuzz(func(t *testing.T, header string, body []byte, query string) {
		r := &http.Request{
			Method: http.MethodPost,
			URL:    &url.URL{Path: "/api/organizations/@current/proxy_records/", RawQuery: query},
			Header: http.Header{},
			Body:   io.NopCloser(bytes.NewReader(body)),
		}
		if header != "" {
			r.Header.Set("Authorization", header)
		}
		key, aerr := a.authenticate(r, newBody(r))

		// The contract's order, written out on its own.
		var tried, where string
		if scheme, rest, _ := strings.Cut(header, " "); strings.EqualFold(scheme, "Bearer") && strings.TrimSpace(rest) != "" {
			tried, where = strings.TrimSpace(rest), "Authorization header"
		} else if b, berr := decodeBody(body); berr == nil && b.key != "" {
			tried, where = b.key, "body"
		} else if q, _ := url.ParseQuery(query); q.Get("personal_api_key") != "" {
			tried, where = q.Get("personal_api_key"), "query string"
		}

		switch {
		case tried == fuzzLiveKey:
			if aerr != nil || key.ID != live.ID {
				t.Fatalf("the live key in the %s was refused: %+v", where, aerr)
			}
		case aerr == nil:
			t.Fatalf("authenticated key %s with %q from the %s (header %q, body %q, query %q)", key.ID, tried, where, header, body, query)
		case tried == "":
			if aerr != errNotAuthenticated {
				t.Fatalf("no key anywhere, got %+v (header %q, body %q, query %q)", aerr, header, body, query)
			}
		default:
			if want := keyInvalid(where); aerr.Status != want.Status || aerr.Code != want.Code || aerr.Detail != want.Detail {
				t.Fatalf("key %q from the %s: got %+v, want %+v", tried, where, aerr, want)
			}
		}
	})
}
