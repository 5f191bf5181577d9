package control

import (
	"encoding/base64"
	"strings"
	"testing"
)

func TestHasScope(t *testing.T) {
	tests := []struct {
		scopes []string
		want   string
		ok     bool
	}{
		{[]string{"*"}, ScopeOrgRead, true},
		{[]string{"*"}, ScopeOrgWrite, true},
		{[]string{"organization:read"}, ScopeOrgRead, true},
		{[]string{"organization:read"}, ScopeOrgWrite, false},
		{[]string{"organization:write"}, ScopeOrgRead, true},
		{[]string{"organization:write"}, ScopeOrgWrite, true},
		{[]string{"project:write"}, ScopeOrgRead, false},
		{[]string{"project:write", "organization:read"}, ScopeOrgRead, true},
		{[]string{"organization_member:write"}, ScopeOrgRead, false},
		{[]string{"organization:*"}, ScopeOrgRead, false},
		{[]string{"Organization:read"}, ScopeOrgRead, false},
		{nil, ScopeOrgRead, false},
		{[]string{}, ScopeOrgWrite, false},
	}
	for _, tt := range tests {
		if got := hasScope(tt.scopes, tt.want); got != tt.ok {
			t.Errorf("hasScope(%q, %s) = %v, want %v", tt.scopes, tt.want, got, tt.ok)
		}
	}
}

func TestCheckScopes(t *testing.T) {
	tests := []struct {
		scopes []string
		ok     bool
	}{
		{[]string{"*"}, true},
		{[]string{"organization:read"}, true},
		{[]string{"organization:write", "feature_flag:read"}, true},
		{nil, false},
		{[]string{""}, false},
		{[]string{"organization"}, false},
		{[]string{"organization:admin"}, false},
		{[]string{"Organization:read"}, false},
		{[]string{"organization:read", "**"}, false},
	}
	for _, tt := range tests {
		if err := CheckScopes(tt.scopes); (err == nil) != tt.ok {
			t.Errorf("CheckScopes(%q) = %v, want ok %v", tt.scopes, err, tt.ok)
		}
	}
}

func TestKeyValues(t *testing.T) {
	seen := map[string]bool{}
	for range 100 {
		v := NewKeyValue()
		rest, ok := strings.CutPrefix(v, "phx_")
		if !ok {
			t.Fatalf("key %q does not start with phx_", v)
		}
		raw, err := base64.RawURLEncoding.DecodeString(rest)
		if err != nil || len(raw) != 32 {
			t.Fatalf("key %q: %d random bytes, %v; want 32", v, len(raw), err)
		}
		if seen[v] {
			t.Fatalf("key %q made twice", v)
		}
		seen[v] = true
	}

	// sha256("phx_test"), computed outside Go.
	if got, want := HashKey("phx_test"), "sha256$8ee44936f3b1c80173d2860f716f56dc44bd078df2ff5c4cb9fb4aed6f26860d"; got != want {
		t.Errorf("HashKey(phx_test) = %s, want %s", got, want)
	}

	masks := []struct{ value, want string }{
		{"phx_abcdefghijklmnop", "phx_abcd...mnop"},
		{"short", "****"},
		{"", "****"},
	}
	for _, m := range masks {
		if got := MaskKey(m.value); got != m.want {
			t.Errorf("MaskKey(%q) = %q, want %q", m.value, got, m.want)
		}
	}

	key, value := NewKey(7, "ci", []string{ScopeOrgRead}, []string{"o"})
	if key.Hash != HashKey(value) || key.UserID != 7 || key.Label != "ci" || key.Mask != MaskKey(value) {
		t.Errorf("NewKey = %+v for value %q", key, value)
	}
	if strings.Contains(key.Hash, value) || strings.Contains(key.Mask, value) {
		t.Errorf("NewKey keeps the value in the stored key")
	}
}
