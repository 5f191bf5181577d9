// Package docs holds edgeproxy's documentation that the program itself
// serves: the OpenAPI 3.0 description of the management API, which the
// server answers at GET /api/schema/ (control.Config.Schema).
//
// openapi.yaml is written by hand. Its tests hold it to the server: the
// paths and methods it lists are exactly the ones control.Routes answers;
// every route succeeds against a real API over a real store, and is made
// to refuse in every way that applies to it, with each answer validated
// against the document by kin-openapi (internal/openapitest); every method
// it does not list at a path answers 405. They also check that Ajv-based
// tools accept it in strict mode (scripts/openapi-check). API.md, beside
// it, is the reference for people.
package docs

import _ "embed"

// OpenAPI is the OpenAPI 3.0.3 document of the management API, as YAML.
//
//go:embed openapi.yaml
var OpenAPI []byte
