// Package openapitest holds the management API's real answers to
// docs/openapi.yaml: a test wraps the API's handler in Checker.Handler,
// and every answer it gives is validated against the document with
// kin-openapi (github.com/getkin/kin-openapi), a real OpenAPI validator:
// the status must be one the operation lists, and the headers and body
// must match that response's schemas (types, required fields, no
// undocumented field where additionalProperties is false, null only where
// the schema admits it, date-time and uuid formats). Only tests import
// it, which keeps kin-openapi out of the binary.
package openapitest

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"

	"github.com/edgeproxy/edgeproxy/docs"
)

// uuidFormat is the canonical UUID text, any version: the document's
// `format: uuid`, which kin-openapi leaves unchecked by default.
var uuidFormat = openapi3.NewRegexpFormatValidator(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

// Checker validates answers against the document. It is safe for
// concurrent use.
type Checker struct {
	doc *openapi3.T

	// mu guards ok.
	mu sync.Mutex
	// ok holds "METHOD /path/" (the document's path) for every operation
	// that gave a 2xx answer which validated.
	ok map[string]bool
}

// Load parses docs/openapi.yaml and validates the document itself with
// kin-openapi (structure, references, examples against their schemas).
func Load(tb testing.TB) *Checker {
	tb.Helper()
	loader := openapi3.NewLoader()
	doc, err := loader.LoadFromData(docs.OpenAPI)
	if err != nil {
		tb.Fatalf("openapi.yaml does not load: %v", err)
	}
	if err := doc.Validate(context.Background(), openapi3.EnableExamplesValidation(), openapi3.EnableSchemaFormatValidation()); err != nil {
		tb.Fatalf("openapi.yaml is not a valid OpenAPI document: %v", err)
	}
	return &Checker{doc: doc, ok: map[string]bool{}}
}

// Doc is the parsed document.
func (c *Checker) Doc() *openapi3.T { return c.doc }

// Succeeded reports whether method at the document's path (e.g.
// "/api/organizations/{organization_id}/") has given a 2xx answer that
// validated.
func (c *Checker) Succeeded(method, path string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ok[method+" "+path]
}

// Handler returns h with every answer checked: an answer that does not
// validate fails tb. Answers pass through unchanged.
func (c *Checker) Handler(tb testing.TB, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tw := &tee{ResponseWriter: w}
		h.ServeHTTP(tw, r)
		if tw.status == 0 {
			tw.status = http.StatusOK
		}
		if err := c.Check(r, tw.status, w.Header(), tw.body.Bytes()); err != nil {
			tb.Errorf("openapi.yaml: %s %s answered %d: %v\nbody: %s", r.Method, r.URL.Path, tw.status, err, tw.body.Bytes())
		}
	})
}

// tee passes an answer on and keeps a copy of its status and body.
type tee struct {
	http.ResponseWriter
	status int
	body   bytes.Buffer
}

func (t *tee) WriteHeader(code int) {
	if t.status == 0 {
		t.status = code
	}
	t.ResponseWriter.WriteHeader(code)
}

func (t *tee) Write(b []byte) (int, error) {
	if t.status == 0 {
		t.status = http.StatusOK
	}
	t.body.Write(b)
	return t.ResponseWriter.Write(b)
}

// Check validates one answer to r. A path the document does not have, or
// a method it does not list there, may only be refused, with an Error
// body. HEAD answers have no body and are not checked.
func (c *Checker) Check(r *http.Request, status int, header http.Header, body []byte) error {
	if r.Method == http.MethodHead {
		return nil
	}
	path, params := c.match(r.URL.Path)
	var op *openapi3.Operation
	if path != "" {
		op = c.doc.Paths.Value(path).GetOperation(r.Method)
	}
	if op == nil {
		if status/100 == 2 {
			return fmt.Errorf("the document has no operation %s for this path, yet the server answered %d", r.Method, status)
		}
		return c.checkError(header, body)
	}
	opts := &openapi3filter.Options{
		IncludeResponseStatus: true,
		MultiError:            true,
		SchemaValidationOptions: []openapi3.SchemaValidationOption{
			openapi3.EnableFormatValidation(),
			openapi3.WithStringFormatValidator("uuid", uuidFormat),
		},
	}
	input := &openapi3filter.ResponseValidationInput{
		RequestValidationInput: &openapi3filter.RequestValidationInput{
			Request:    r,
			PathParams: params,
			Route:      &routers.Route{Spec: c.doc, Path: path, PathItem: c.doc.Paths.Value(path), Method: r.Method, Operation: op},
			Options:    opts,
		},
		Status:  status,
		Header:  header,
		Options: opts,
	}
	input.SetBodyBytes(body)
	if err := openapi3filter.ValidateResponse(context.Background(), input); err != nil {
		return err
	}
	if resp := op.Responses.Status(status); resp != nil && len(resp.Value.Content) == 0 && len(body) != 0 {
		return fmt.Errorf("the document gives %d no body, the server sent %d bytes", status, len(body))
	}
	if status/100 == 2 {
		c.mu.Lock()
		c.ok[r.Method+" "+path] = true
		c.mu.Unlock()
	}
	return nil
}

// checkError validates an answer outside every documented operation
// against the Error schema.
func (c *Checker) checkError(header http.Header, body []byte) error {
	if ct := header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		return fmt.Errorf("an error answer with Content-Type %q, want application/json", ct)
	}
	schema := c.doc.Components.Schemas["Error"]
	if schema == nil {
		return fmt.Errorf("the document has no Error schema")
	}
	value, err := decodeJSON(body)
	if err != nil {
		return err
	}
	return schema.Value.VisitJSON(value, openapi3.MultiErrors(), openapi3.VisitAsResponse())
}

func decodeJSON(body []byte) (any, error) {
	var v any
	dec := openapi3filter.JSONBodyDecoder
	v, err := dec(io.NopCloser(bytes.NewReader(body)), http.Header{}, nil, nil)
	if err != nil {
		return nil, fmt.Errorf("the body is not JSON: %w", err)
	}
	return v, nil
}

var variable = regexp.MustCompile(`^\{(\w+)\}$`)

// match finds the document's path for a request path (whose trailing
// slash the server treats as optional) and the values of its variables.
// Of several matches, the one with the most literal segments wins.
func (c *Checker) match(reqPath string) (string, map[string]string) {
	segs := strings.Split(strings.Trim(reqPath, "/"), "/")
	best, bestLiterals := "", -1
	var bestParams map[string]string
	for _, p := range slices.Sorted(func(yield func(string) bool) {
		for k := range c.doc.Paths.Map() {
			if !yield(k) {
				return
			}
		}
	}) {
		pat := strings.Split(strings.Trim(p, "/"), "/")
		if len(pat) != len(segs) {
			continue
		}
		params, literals := map[string]string{}, 0
		for i, s := range pat {
			if segs[i] == "" {
				params = nil
				break
			}
			if m := variable.FindStringSubmatch(s); m != nil {
				params[m[1]] = segs[i]
				continue
			}
			if s != segs[i] {
				params = nil
				break
			}
			literals++
		}
		if params != nil && literals > bestLiterals {
			best, bestLiterals, bestParams = p, literals, params
		}
	}
	return best, bestParams
}
