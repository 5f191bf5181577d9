package control

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
)

// maxAPIBody is the largest request body the management API reads.
const maxAPIBody = 1 << 20

// requestBody is what the API reads from a request body: the fields of the
// create call and a personal API key.
type requestBody struct {
	// domain is nil when the body has no domain field.
	domain *string
	// domainNotString is set when a JSON body's domain is not a string.
	domainNotString bool
	key             string
	// fields holds a JSON body's fields and form a form body's, for the
	// handlers that read other fields than domain (webhooks).
	fields map[string]json.RawMessage
	form   url.Values
}

// readBody reads at most maxAPIBody bytes of the request body.
func readBody(r *http.Request) ([]byte, *apiError) {
	if r.Body == nil {
		return nil, nil
	}
	data, err := io.ReadAll(io.LimitReader(r.Body, maxAPIBody+1))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return nil, errTooLarge
		}
		return nil, parseError(fmt.Sprintf("Reading the request body failed: %v.", err))
	}
	if len(data) > maxAPIBody {
		return nil, errTooLarge
	}
	return data, nil
}

// decodeBody parses a JSON object or a form-encoded body. It chooses by
// the body's first character, not by Content-Type, because PostHog's own
// curl example sends a form body (-d domain=...) with a JSON content type.
func decodeBody(data []byte) (*requestBody, *apiError) {
	var b requestBody
	trimmed := bytes.TrimSpace(data)
	if len(trimmed) == 0 {
		return &b, nil
	}
	switch trimmed[0] {
	case '{':
		var fields map[string]json.RawMessage
		if err := json.Unmarshal(trimmed, &fields); err != nil {
			return nil, parseError(fmt.Sprintf("JSON parse error - %v.", err))
		}
		b.fields = fields
		if raw, ok := fields["domain"]; ok && string(raw) != "null" {
			var s string
			if err := json.Unmarshal(raw, &s); err != nil {
				b.domainNotString = true
			} else {
				b.domain = &s
			}
		}
		if raw, ok := fields["personal_api_key"]; ok {
			// A key that is not a string is no key.
			json.Unmarshal(raw, &b.key)
		}
		return &b, nil
	case '[', '"':
		return nil, parseError("JSON parse error - the body must be a JSON object such as {\"domain\": \"e.example.com\"}.")
	}
	form, err := url.ParseQuery(string(trimmed))
	if err != nil {
		return nil, parseError(fmt.Sprintf("Form parse error - %v; send JSON such as {\"domain\": \"e.example.com\"} or a form body domain=e.example.com.", err))
	}
	b.form = form
	if form.Has("domain") {
		s := form.Get("domain")
		b.domain = &s
	}
	b.key = form.Get("personal_api_key")
	return &b, nil
}

// lazyBody reads and decodes the request body at most once, for whichever
// of authentication and the handler asks first, and lets authentication
// look at the raw bytes without decoding them.
type lazyBody struct {
	r *http.Request

	read    bool
	data    []byte
	readErr *apiError

	decoded   bool
	b         *requestBody
	decodeErr *apiError
}

func newLazyBody(r *http.Request) *lazyBody { return &lazyBody{r: r} }

// raw reads the body (at most maxAPIBody bytes) once.
func (l *lazyBody) raw() ([]byte, *apiError) {
	if !l.read {
		l.read = true
		l.data, l.readErr = readBody(l.r)
	}
	return l.data, l.readErr
}

// decode reads and decodes the body once.
func (l *lazyBody) decode() (*requestBody, *apiError) {
	if !l.decoded {
		l.decoded = true
		var data []byte
		if data, l.decodeErr = l.raw(); l.decodeErr == nil {
			l.b, l.decodeErr = decodeBody(data)
		}
	}
	return l.b, l.decodeErr
}

// bodyOnce reads and decodes the request body at most once, for whichever
// of authentication and the handler asks first.
func bodyOnce(r *http.Request) func() (*requestBody, *apiError) {
	return newLazyBody(r).decode
}

// mayHoldKey reports whether the request has a body that can carry a
// personal_api_key: one sent with a method whose body has meaning. A GET,
// HEAD or OPTIONS body is never read for a key, so a request without a key
// costs no body read there.
func mayHoldKey(r *http.Request) bool {
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		return false
	}
	return r.Body != nil && r.Body != http.NoBody
}
