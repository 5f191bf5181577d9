package docs_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/edgeproxy/edgeproxy/docs"
	"github.com/edgeproxy/edgeproxy/internal/testbin"
)

// openapiCheck runs scripts/openapi-check/check.mjs on the document and
// returns its output and whether it passed.
func openapiCheck(t *testing.T, document []byte) (string, bool) {
	t.Helper()
	node := testbin.Tool(t, "node", "tools")
	dir, err := filepath.Abs(filepath.Join("..", "scripts", "openapi-check"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "@seriousme", "openapi-schema-validator", "package.json")); err != nil {
		testbin.Missing(t, "the npm packages of scripts/openapi-check are not installed", "tools")
	}
	path := filepath.Join(t.TempDir(), "openapi.yaml")
	if err := os.WriteFile(path, document, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(node, filepath.Join(dir, "check.mjs"), path)
	out, err := cmd.CombinedOutput()
	if _, exited := err.(*exec.ExitError); err != nil && !exited {
		t.Fatalf("running check.mjs: %v\n%s", err, out)
	}
	return string(out), err == nil
}

// TestOpenAPIAjvStrict holds openapi.yaml to what Ajv-based OpenAPI tools
// accept (scripts/openapi-check/check.mjs says what that is): the
// specification's JSON Schema, every schema compiled by Ajv in strict
// mode, every example valid against its schema.
func TestOpenAPIAjvStrict(t *testing.T) {
	out, ok := openapiCheck(t, docs.OpenAPI)
	if !ok {
		t.Errorf("openapi.yaml fails the Ajv-based checks:\n%s", out)
	} else {
		t.Log(strings.TrimSpace(out))
	}
}

// TestOpenAPIAjvStrictRefuses shows the check can fail: the same document
// with each of the faults below added is refused, naming the fault.
// The first is the form that once broke Ajv-based tools: nullable beside
// an allOf reference, in a schema without type.
func TestOpenAPIAjvStrictRefuses(t *testing.T) {
	for _, tt := range []struct {
		name, schema, want string
	}{
		{"nullable beside allOf", `
    Bad:
      nullable: true
      allOf:
        - $ref: '#/components/schemas/DNSRecord'
`, `"nullable" cannot be used without "type"`},
		{"unknown keyword", `
    Bad:
      type: string
      nullabel: true
`, `unknown keyword: "nullabel"`},
		{"example against its schema", `
    Bad:
      type: integer
      example: twelve
`, "components.schemas.Bad.example: / must be integer"},
		{"dangling reference", `
    Bad:
      $ref: '#/components/schemas/Nowhere'
`, "Nowhere"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			doc := bytes.Replace(docs.OpenAPI, []byte("\n  schemas:\n"), []byte("\n  schemas:"+tt.schema), 1)
			if bytes.Equal(doc, docs.OpenAPI) {
				t.Fatal("openapi.yaml has no `  schemas:` line to add a schema under")
			}
			out, ok := openapiCheck(t, doc)
			if ok {
				t.Fatalf("the check passed a document with %s:\n%s", tt.name, out)
			}
			if !strings.Contains(out, tt.want) {
				t.Errorf("the check refused the document with %s, but its output does not say %q:\n%s", tt.name, tt.want, out)
			}
		})
	}
}
