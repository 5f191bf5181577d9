// check.mjs: checks docs/openapi.yaml the way Ajv-based OpenAPI tools read
// it. Run by docs/openapi_test.go (TestOpenAPIAjvStrict) with the
// packages scripts/ensure-openapi-tools.sh installs; usage:
//
//	node check.mjs openapi.yaml
//
// 1. @seriousme/openapi-schema-validator: the document against the OpenAPI
//    specification's own JSON Schema, and every $ref resolves.
// 2. Ajv in strict mode (every strict option on, as Ajv's default
//    `strict: true`), the way request and response validators built on Ajv
//    compile an OpenAPI document: every schema the document holds
//    (components, parameters, request bodies, responses, headers) must
//    compile, with only the keywords and formats the OpenAPI version
//    defines on top of JSON Schema. Ajv refuses, for example, `nullable`
//    in a schema without `type` (so `nullable` beside `allOf`), an unknown
//    keyword, an unknown format, or `properties` without `type: object`.
// 3. Every example the document gives (a schema's `example`, a media
//    type's `example` and `examples`) is valid against its schema.
//
// It prints one line per problem and exits 1 if there is any.
import { readFileSync } from "node:fs";
import { Validator } from "@seriousme/openapi-schema-validator";
import Ajv from "ajv";
import Ajv2020 from "ajv/dist/2020.js";
import addFormatsModule from "ajv-formats";
import { parse } from "yaml";

const { default: addFormats } = addFormatsModule;

const file = process.argv[2];
if (!file) {
	console.error("usage: node check.mjs openapi.yaml");
	process.exit(2);
}
const text = readFileSync(file, "utf-8");
const doc = parse(text);
const problems = [];

// 1. The document against the specification.
const spec = await new Validator().validate(doc);
if (!spec.valid) {
	const errs = Array.isArray(spec.errors) ? spec.errors : [spec.errors];
	for (const e of errs) {
		problems.push(`specification: ${typeof e === "string" ? e : `${e.instancePath || "/"} ${e.message} ${JSON.stringify(e.params)}`}`);
	}
}

// 2. Every schema through Ajv, strict.
const v31 = typeof doc.openapi === "string" && !doc.openapi.startsWith("3.0");
const AjvClass = v31 ? Ajv2020 : Ajv;
const ajv = new AjvClass({
	strict: true,
	allErrors: true,
	// OpenAPI 3.1 writes a nullable value as a type list with "null".
	allowUnionTypes: v31,
	discriminator: true,
});
addFormats(ajv);
// The formats OpenAPI defines beyond JSON Schema's.
for (const f of ["int32", "int64"]) ajv.addFormat(f, { type: "number", validate: Number.isInteger });
for (const f of ["float", "double"]) ajv.addFormat(f, { type: "number", validate: () => true });
for (const f of ["byte", "binary", "password"]) ajv.addFormat(f, true);
// The Schema Object's keywords that are not JSON Schema's: annotations,
// no validation. (Ajv knows `nullable` and `discriminator` itself.)
ajv.addVocabulary(["example", "xml", "externalDocs"]);

const base = "https://edgeproxy.invalid/openapi.yaml";
// Local references become absolute, so a schema compiled on its own
// still finds the components it refers to.
function absolute(node) {
	if (Array.isArray(node)) return node.map(absolute);
	if (node && typeof node === "object") {
		const out = {};
		for (const [k, v] of Object.entries(node)) {
			out[k] = k === "$ref" && typeof v === "string" && v.startsWith("#/") ? base + v : absolute(v);
		}
		return out;
	}
	return node;
}
for (const [name, schema] of Object.entries(doc.components?.schemas ?? {})) {
	try {
		ajv.addSchema(absolute(schema), `${base}#/components/schemas/${name}`);
	} catch (e) {
		problems.push(`components.schemas.${name}: ${e.message}`);
	}
}

// Every schema of the document, with where it is and the examples given
// for it: [where, schema, [[where, example], ...]].
const found = [];
function media(where, content) {
	for (const [type, mt] of Object.entries(content ?? {})) {
		if (!mt.schema) continue;
		const examples = [];
		if ("example" in mt) examples.push([`${where}.${type}.example`, mt.example]);
		for (const [n, ex] of Object.entries(mt.examples ?? {})) {
			if ("value" in ex) examples.push([`${where}.${type}.examples.${n}`, ex.value]);
		}
		found.push([`${where}.${type}`, mt.schema, examples]);
	}
}
function resolve(obj) {
	while (obj && typeof obj.$ref === "string" && obj.$ref.startsWith("#/")) {
		obj = obj.$ref.slice(2).split("/").reduce((o, k) => o?.[k.replaceAll("~1", "/").replaceAll("~0", "~")], doc);
	}
	return obj;
}
function param(where, p) {
	p = resolve(p);
	if (!p?.schema) return;
	const examples = [];
	if ("example" in p) examples.push([`${where}.example`, p.example]);
	for (const [n, ex] of Object.entries(p.examples ?? {})) {
		if ("value" in ex) examples.push([`${where}.examples.${n}`, ex.value]);
	}
	found.push([where, p.schema, examples]);
}
function response(where, r) {
	r = resolve(r);
	media(where, r?.content);
	for (const [h, hdr] of Object.entries(r?.headers ?? {})) param(`${where}.headers.${h}`, hdr);
}
for (const [path, item] of Object.entries(doc.paths ?? {})) {
	for (const p of item.parameters ?? []) param(`paths.${path}.parameters`, p);
	for (const [method, op] of Object.entries(item)) {
		if (method === "parameters" || typeof op !== "object") continue;
		const where = `paths.${path}.${method}`;
		for (const p of op.parameters ?? []) param(`${where}.parameters`, p);
		if (op.requestBody) media(`${where}.requestBody`, resolve(op.requestBody).content);
		for (const [code, r] of Object.entries(op.responses ?? {})) response(`${where}.responses.${code}`, r);
	}
}
// A schema's own `example`, at any depth of a component.
function schemaExamples(where, schema) {
	if (!schema || typeof schema !== "object") return;
	if (Array.isArray(schema)) {
		schema.forEach((s, i) => schemaExamples(`${where}[${i}]`, s));
		return;
	}
	if ("example" in schema && !schema.$ref) found.push([where, schema, [[`${where}.example`, schema.example]]]);
	for (const [k, v] of Object.entries(schema)) {
		if (k === "example" || k === "examples" || k === "enum" || k === "default") continue;
		schemaExamples(`${where}.${k}`, v);
	}
}
for (const [name, schema] of Object.entries(doc.components?.schemas ?? {})) schemaExamples(`components.schemas.${name}`, schema);

let compiled = 0;
let checked = 0;
for (const [where, schema, examples] of found) {
	let validate;
	try {
		validate = ajv.compile(absolute(schema));
		compiled++;
	} catch (e) {
		problems.push(`${where}: ${e.message}`);
		continue;
	}
	for (const [exWhere, value] of examples) {
		checked++;
		if (!validate(value)) {
			for (const e of validate.errors) problems.push(`${exWhere}: ${e.instancePath || "/"} ${e.message}`);
		}
	}
}
// Components nobody refers to are compiled too.
for (const name of Object.keys(doc.components?.schemas ?? {})) {
	try {
		ajv.getSchema(`${base}#/components/schemas/${name}`);
	} catch (e) {
		problems.push(`components.schemas.${name}: ${e.message}`);
	}
}

for (const p of problems) console.log(p);
console.log(`openapi-check: ${doc.openapi} document; ${compiled} schemas compiled with Ajv strict, ${checked} examples checked, ${problems.length} problems`);
process.exit(problems.length ? 1 : 0);
