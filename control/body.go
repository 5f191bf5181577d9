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
	if form.Has("domain") {
		s := form.Get("domain")
		b.domain = &s
	}
	b.key = form.Get("personal_api_key")
	return &b, nil
}

// body is a request's body, read at most once and decoded at most once,
// for whichever of authentication, the size check and the handler asks
// first. It is used by one request's goroutine only.
type body struct {
	r *http.Request

	read    bool
	data    []byte
	readErr *apiError

	decoded   bool
	fields    *requestBody
	decodeErr *apiError
}

func newBody(r *http.Request) *body { return &body{r: r} }

// bytes reads the body (at most maxAPIBody bytes).
func (b *body) bytes() ([]byte, *apiError) {
	if !b.read {
		b.read = true
		b.data, b.readErr = readBody(b.r)
	}
	return b.data, b.readErr
}

// decode reads and parses the body.
func (b *body) decode() (*requestBody, *apiError) {
	if !b.decoded {
		b.decoded = true
		data, aerr := b.bytes()
		if aerr != nil {
			b.decodeErr = aerr
		} else {
			b.fields, b.decodeErr = decodeBody(data)
		}
	}
	return b.fields, b.decodeErr
}

// mayHoldKey reports whether decoding data could find a personal_api_key
// field, so that bodies that cannot hold one are never parsed for it. The
// name is looked for as written; a JSON \u escape or a form %XX escape
// could spell it otherwise, so a body holding either is parsed too.
func mayHoldKey(data []byte) bool {
	return bytes.Contains(data, []byte("personal_api_key")) ||
		bytes.Contains(data, []byte(`\u`)) || bytes.IndexByte(data, '%') >= 0
}
