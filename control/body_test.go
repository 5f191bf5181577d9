package control

import (
	"io"
	"net/http"
	"strings"
	"testing"
)

func TestDecodeBody(t *testing.T) {
	str := func(s string) *string { return &s }
	tests := []struct {
		name      string
		body      string
		domain    *string
		notString bool
		key       string
		// parseErr: the body is refused with parse_error.
		parseErr bool
	}{
		{name: "empty", body: ""},
		{name: "blank", body: " \r\n\t "},
		{name: "JSON", body: `{"domain":"e.example.com"}`, domain: str("e.example.com")},
		{name: "JSON with spaces", body: "\n  { \"domain\" : \"e.example.com\" }\n", domain: str("e.example.com")},
		{name: "JSON with key", body: `{"domain":"e.example.com","personal_api_key":"phx_k"}`, domain: str("e.example.com"), key: "phx_k"},
		{name: "JSON key only", body: `{"personal_api_key":"phx_k"}`, key: "phx_k"},
		{name: "JSON key not a string", body: `{"personal_api_key":5}`},
		{name: "JSON empty object", body: `{}`},
		{name: "JSON null domain", body: `{"domain":null}`},
		{name: "JSON empty domain", body: `{"domain":""}`, domain: str("")},
		{name: "JSON number domain", body: `{"domain":5}`, notString: true},
		{name: "JSON object domain", body: `{"domain":{"a":1}}`, notString: true},
		{name: "JSON escaped domain", body: `{"domain":"b\u00fccher.example.de"}`, domain: str("bücher.example.de")},
		{name: "JSON unknown fields", body: `{"domain":"e.example.com","x":[1,2]}`, domain: str("e.example.com")},
		{name: "JSON duplicate domain: last wins", body: `{"domain":"a.example.com","domain":"b.example.com"}`, domain: str("b.example.com")},
		{name: "form", body: "domain=e.example.com", domain: str("e.example.com")},
		{name: "form with key", body: "domain=e.example.com&personal_api_key=phx_k", domain: str("e.example.com"), key: "phx_k"},
		{name: "form escaped", body: "domain=b%C3%BCcher.example.de", domain: str("bücher.example.de")},
		{name: "form plus is space", body: "domain=e+example.com", domain: str("e example.com")},
		{name: "form empty domain", body: "domain=", domain: str("")},
		{name: "form domain without =", body: "domain", domain: str("")},
		{name: "form without domain", body: "other=1"},
		{name: "form trailing newline", body: "domain=e.example.com\n", domain: str("e.example.com")},
		{name: "form first domain wins", body: "domain=a.example.com&domain=b.example.com", domain: str("a.example.com")},
		{name: "truncated JSON", body: `{"domain":`, parseErr: true},
		{name: "JSON trailing garbage", body: `{"domain":"e.example.com"}x`, parseErr: true},
		{name: "JSON two objects", body: `{}{}`, parseErr: true},
		{name: "JSON array", body: `["e.example.com"]`, parseErr: true},
		{name: "JSON string", body: `"e.example.com"`, parseErr: true},
		{name: "JSON invalid UTF-8 is replaced, not refused", body: "{\"domain\":\"\xff.example.com\"}", domain: str("\ufffd.example.com")},
		{name: "form bad escape", body: "domain=%zz", parseErr: true},
		{name: "form semicolon", body: "domain=a;b", parseErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, aerr := decodeBody([]byte(tt.body))
			if tt.parseErr {
				if aerr == nil {
					t.Fatalf("decodeBody(%q) = %+v, want parse_error", tt.body, b)
				}
				if aerr.Status != http.StatusBadRequest || aerr.Type != "invalid_request" || aerr.Code != "parse_error" || aerr.Detail == "" || aerr.Attr != nil {
					t.Errorf("decodeBody(%q): %+v, want 400 invalid_request parse_error with a detail", tt.body, aerr)
				}
				return
			}
			if aerr != nil {
				t.Fatalf("decodeBody(%q): %v", tt.body, aerr)
			}
			switch {
			case tt.domain == nil && b.domain != nil:
				t.Errorf("domain %q, want none", *b.domain)
			case tt.domain != nil && b.domain == nil:
				t.Errorf("no domain, want %q", *tt.domain)
			case tt.domain != nil && *b.domain != *tt.domain:
				t.Errorf("domain %q, want %q", *b.domain, *tt.domain)
			}
			if got, want := b.domainNotString, tt.notString; got != want {
				t.Errorf("domainNotString %v, want %v", got, want)
			}
			if got, want := b.key, tt.key; got != want {
				t.Errorf("key %q, want %q", got, want)
			}
		})
	}
}

func TestReadBody(t *testing.T) {
	tests := []struct {
		name    string
		size    int
		tooLong bool
	}{
		{"empty", 0, false},
		{"1 MiB", maxAPIBody, false},
		{"1 MiB and a byte", maxAPIBody + 1, true},
		{"2 MiB", 2 * maxAPIBody, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, _ := http.NewRequest("POST", "/", strings.NewReader(strings.Repeat(" ", tt.size)))
			data, aerr := readBody(r)
			if tt.tooLong {
				if aerr == nil || aerr.Status != http.StatusRequestEntityTooLarge || aerr.Code != "request_too_large" || aerr.Type != "invalid_request" {
					t.Errorf("readBody(%d bytes) = %d bytes, %v; want 413 request_too_large", tt.size, len(data), aerr)
				}
				return
			}
			if aerr != nil || len(data) != tt.size {
				t.Errorf("readBody(%d bytes) = %d bytes, %v", tt.size, len(data), aerr)
			}
		})
	}
}

// failingReader fails every read.
type failingReader struct{}

func (failingReader) Read([]byte) (int, error) { return 0, io.ErrUnexpectedEOF }

func TestReadBodyFailure(t *testing.T) {
	r, _ := http.NewRequest("POST", "/", failingReader{})
	if _, aerr := readBody(r); aerr == nil || aerr.Code != "parse_error" {
		t.Errorf("readBody of a failing body: %v, want parse_error", aerr)
	}
}

// TestBodyOnce checks that the body is read once and decoded once, whoever
// asks first.
func TestBodyOnce(t *testing.T) {
	r, _ := http.NewRequest("POST", "/", strings.NewReader(`{"domain":"e.example.com"}`))
	body := newBody(r)
	data, aerr := body.bytes()
	if aerr != nil || string(data) != `{"domain":"e.example.com"}` {
		t.Fatalf("bytes() = %q, %v", data, aerr)
	}
	if body.decoded {
		t.Error("bytes() decoded the body")
	}
	first, aerr := body.decode()
	if aerr != nil {
		t.Fatal(aerr)
	}
	second, aerr := body.decode()
	if aerr != nil {
		t.Fatal(aerr)
	}
	if first != second || first.domain == nil || *first.domain != "e.example.com" {
		t.Errorf("decode gave %+v then %+v", first, second)
	}
}

// TestMayHoldKey holds the pre-check that spares parsing to what decoding
// finds: whenever decodeBody finds a key, mayHoldKey said it might.
func TestMayHoldKey(t *testing.T) {
	for _, tt := range []struct {
		body string
		want bool
	}{
		{`{"domain":"e.example.com"}`, false},
		{`domain=e.example.com`, false},
		{`{"domain":`, false},
		{`{"personal_api_key":"phx_k"}`, true},
		{`personal_api_key=phx_k`, true},
		{`{"personal\u005fapi_key":"phx_k"}`, true},
		{`personal%5Fapi_key=phx_k`, true},
	} {
		if got := mayHoldKey([]byte(tt.body)); got != tt.want {
			t.Errorf("mayHoldKey(%s) = %v, want %v", tt.body, got, tt.want)
		}
		if b, aerr := decodeBody([]byte(tt.body)); aerr == nil && b.key != "" && !mayHoldKey([]byte(tt.body)) {
			t.Errorf("decodeBody(%s) finds key %q that mayHoldKey rules out", tt.body, b.key)
		}
	}
}

// FuzzDecodeBody checks that decodeBody never panics, that a refusal is
// always a 400 parse_error with a detail and no body, and that an accepted
// body gives a result.
func FuzzDecodeBody(f *testing.F) {
	f.Add([]byte(`{"domain":"e.example.com"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		b, aerr := decodeBody(data)
		if aerr != nil {
			if aerr.Status != http.StatusBadRequest || aerr.Type != "invalid_request" || aerr.Code != "parse_error" || aerr.Detail == "" || aerr.Attr != nil {
				t.Fatalf("decodeBody(%q): %+v, want 400 invalid_request parse_error with a detail", data, aerr)
			}
			if b != nil {
				t.Fatalf("decodeBody(%q) = %+v with error %v", data, b, aerr)
			}
			return
		}
		if b == nil {
			t.Fatalf("decodeBody(%q) = nil, nil", data)
		}
		if b.domainNotString && b.domain != nil {
			t.Fatalf("decodeBody(%q): domain %q and domainNotString", data, *b.domain)
		}
	})
}
