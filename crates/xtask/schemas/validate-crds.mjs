// Validates rendered custom resources strictly (unknown fields are errors) with the @kubernetes-models validators.
//
// Usage: node validate-crds.mjs <objects.json>
// The file is a JSON array of {"source": "<dir>", "object": {...}}. Prints one line per error to stdout,
// a summary to stderr, and exits 1 when there is any error.

import { readFileSync, readdirSync, existsSync } from "node:fs";
import { join, dirname } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const modelsDir = join(dirname(fileURLToPath(import.meta.url)), "node_modules", "@kubernetes-models");

// Files under `dir`, recursively (skipping the compiled schemas themselves).
function jsFiles(dir) {
  const files = [];
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory() && entry.name !== "_schemas" && entry.name !== "node_modules") {
      files.push(...jsFiles(path));
    } else if (entry.isFile() && entry.name.endsWith(".js")) {
      files.push(path);
    }
  }
  return files;
}

// Maps "apiVersion kind" to the path of the compiled validator, by reading the model class files.
function buildIndex() {
  const index = new Map();
  for (const pkg of readdirSync(modelsDir)) {
    for (const file of jsFiles(join(modelsDir, pkg))) {
      const text = readFileSync(file, "utf8");
      const apiVersion = text.match(/this\.apiVersion="([^"]+)"/);
      const kind = text.match(/this\.kind="([^"]+)"/);
      const schema = text.match(/import\{validate\}from"(\.[^"]+)"/);
      if (apiVersion && kind && schema) {
        index.set(`${apiVersion[1]} ${kind[1]}`, join(dirname(file), schema[1]));
      }
    }
  }
  return index;
}

// Escapes one JSON pointer segment (RFC 6901).
function escapePointer(key) {
  return String(key).replaceAll("~", "~0").replaceAll("/", "~1");
}

// Wraps `data` in proxies that record, per object node (by JSON pointer), which keys the validator read
// (get and `in`; listing the keys, as Object.keys and for-in do, reads none).
// Child proxies are cached so that the same node keeps one identity.
function recordingProxy(data) {
  const records = new Map();
  const proxies = new Map();
  const wrap = (node, pointer) => {
    if (proxies.has(pointer)) return proxies.get(pointer);
    const record = { read: new Set() };
    records.set(pointer, record);
    const child = (target, key) => {
      const value = Reflect.get(target, key);
      const own = typeof key === "string" && Object.hasOwn(target, key);
      if (!own || value === null || typeof value !== "object") return value;
      return wrap(value, `${pointer}/${escapePointer(key)}`);
    };
    const proxy = new Proxy(node, {
      get(target, key) {
        if (typeof key === "string") record.read.add(key);
        return child(target, key);
      },
      has(target, key) {
        if (typeof key === "string") record.read.add(key);
        return Reflect.has(target, key);
      },
    });
    proxies.set(pointer, proxy);
    return proxy;
  };
  return { proxy: wrap(data, ""), records };
}

// Keys the validator never read, in object nodes it read at least one key of (nodes it never looked into are
// schemaless and stay open). Enumerating keys does not open a node: a map's validator (labels,
// additionalProperties) reads every value after enumerating, while min/maxProperties only counts the keys.
function unknownFields(data, records, pointer = "") {
  const found = [];
  if (data === null || typeof data !== "object") return found;
  const record = records.get(pointer);
  const closed = !Array.isArray(data) && record !== undefined && record.read.size > 0;
  for (const [key, value] of Object.entries(data)) {
    const childPointer = `${pointer}/${escapePointer(key)}`;
    if (closed && !record.read.has(key)) {
      found.push(childPointer);
    } else {
      found.push(...unknownFields(value, records, childPointer));
    }
  }
  return found;
}

// One ajv error as text.
function describeError(error) {
  if (error.message) return error.message;
  const params = Object.entries(error.params ?? {})
    .map(([name, value]) => `${name}=${JSON.stringify(value)}`)
    .join(" ");
  return `${error.keyword} ${params}`.trim();
}

// The error messages, each "<pointer>: <message>", for one object.
async function validateObject(index, object) {
  const key = `${object?.apiVersion} ${object?.kind}`;
  const schemaPath = index.get(key);
  if (!schemaPath) return [`/: no schema for ${key}`];
  const { validate } = await import(pathToFileURL(schemaPath).href);
  const copy = structuredClone(object);
  const { proxy, records } = recordingProxy(copy);
  const errors = [];
  if (!validate(proxy)) {
    for (const error of validate.errors ?? []) {
      errors.push(`${error.instancePath || "/"}: ${describeError(error)}`);
    }
  }
  for (const pointer of unknownFields(copy, records)) {
    errors.push(`${pointer}: unknown field`);
  }
  return errors;
}

async function main() {
  const [file] = process.argv.slice(2);
  if (!file) {
    console.error("usage: node validate-crds.mjs <objects.json>");
    process.exit(2);
  }
  if (!existsSync(modelsDir)) {
    console.error(`${modelsDir} is missing: run npm ci`);
    process.exit(2);
  }
  const index = buildIndex();
  const items = JSON.parse(readFileSync(file, "utf8"));
  let count = 0;
  for (const { source, object } of items) {
    const kind = object?.kind ?? "<no kind>";
    const name = object?.metadata?.name ?? "<no name>";
    const namespace = object?.metadata?.namespace;
    const who = namespace ? `${kind} ${namespace}/${name}` : `${kind} ${name}`;
    for (const error of await validateObject(index, object)) {
      console.log(`${source}: ${who}: ${error}`);
      count += 1;
    }
  }
  console.error(`validate-crds: ${items.length} objects, ${count} errors (${index.size} kinds known)`);
  process.exit(count > 0 ? 1 : 0);
}

await main();
