"""Validates rendered Kubernetes objects strictly (unknown fields are errors) with jsonschema.

Usage: python3 validate.py --kubernetes-version 1.35 [--crds DIR]... [--defer-unknown FILE] <objects.json>

The file is a JSON array of {"source": "<dir>", "object": {...}}. Prints one line per error to stdout,
a summary to stderr, and exits 1 when there is any error.

One validator (jsonschema's Draft 2020-12) for every kind:
- built-in kinds against the strict JSON schemas that the kubernetes-validate package ships for the
  Kubernetes version (the files it validates with itself; read here through importlib.resources);
- custom resources against the `openAPIV3Schema` of their CustomResourceDefinition, found in the
  upstream CRD files under each `--crds` directory, turned into JSON Schema as the API server reads a
  structural schema: an object node keeps only the fields it declares, unless it says
  `x-kubernetes-preserve-unknown-fields: true` (kubernetes.io/docs, "Extend the Kubernetes API with
  CustomResourceDefinitions": pruning, `x-kubernetes-preserve-unknown-fields`,
  `x-kubernetes-embedded-resource`, `x-kubernetes-int-or-string`); `metadata` against ObjectMeta.
  CEL rules (`x-kubernetes-validations`) and formats are not evaluated.

A kind with no schema is an error, or, with --defer-unknown, written to FILE for another validator.
"""

import argparse
import json
import sys
from pathlib import Path

import importlib.resources
import jsonschema
import referencing
import yaml

DEFINITIONS = "https://kubernetes.io/api/_definitions.json"
OBJECT_META = {"$ref": f"{DEFINITIONS}#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}
# The keywords whose subschemas constrain values without declaring fields (structural schemas keep
# every field declaration outside them).
VALUE_ONLY = ("allOf", "anyOf", "oneOf", "not")


def pointer(path):
    """The JSON pointer (RFC 6901) of a jsonschema error path; "/" for the whole object."""
    segments = [str(item).replace("~", "~0").replace("/", "~1") for item in path]
    return "/" + "/".join(segments)


def describe(item):
    """`<source>: <Kind> <namespace/name>` for messages."""
    obj = item["object"] if isinstance(item.get("object"), dict) else {}
    metadata = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    kind = obj.get("kind", "<no kind>")
    name = metadata.get("name", "<no name>")
    namespace = metadata.get("namespace")
    who = f"{kind} {namespace}/{name}" if namespace else f"{kind} {name}"
    return f"{item['source']}: {who}"


def builtin_schemas(version):
    """The directory of kubernetes-validate's strict schemas for `version` (e.g. 1.35)."""
    root = importlib.resources.files("kubernetes_validate").joinpath("kubernetes-json-schema")
    directory = root.joinpath(f"v{version}.0-local-strict")
    if not directory.is_dir():
        sys.exit(f"validate: kubernetes-validate has no schemas for Kubernetes {version}")
    return directory


def builtin_file(directory, api_version, kind):
    """kubernetes-validate's file name: `<kind>-<group's first label>-<version>.json` (`deployment-apps-v1`)."""
    group, _, version = api_version.rpartition("/")
    prefix = f"{group.split('.')[0]}-" if group else ""
    return directory.joinpath(f"{kind.lower()}-{prefix}{version}.json")


def structural(schema, root=False):
    """A CRD's OpenAPI v3 schema as JSON Schema 2020-12, closed where the API server would prune."""
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key == "properties":
            out[key] = {name: structural(child) for name, child in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = structural(value)
        elif key in VALUE_ONLY:
            # Value validations only: left open, the enclosing node decides which fields exist.
            out[key] = value
        elif key == "nullable":
            continue
        elif key.startswith("x-kubernetes-"):
            continue
        else:
            out[key] = value
    # OpenAPI 3.0's boolean exclusive bounds are numbers in JSON Schema 2020-12.
    for bound, limit in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(out.get(bound), bool):
            if out.pop(bound) and limit in out:
                out[bound] = out.pop(limit)
    if schema.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    properties = out.setdefault("properties", {}) if schema.get("type") == "object" else None
    if properties is not None:
        if root or schema.get("x-kubernetes-embedded-resource"):
            # An object's apiVersion, kind and metadata are the API server's, declared or not.
            properties.setdefault("apiVersion", {"type": "string"})
            properties.setdefault("kind", {"type": "string"})
            properties["metadata"] = OBJECT_META
        if not schema.get("x-kubernetes-preserve-unknown-fields") and "additionalProperties" not in out:
            out["additionalProperties"] = False
    return out


def crd_schemas(directories, groups):
    """`(apiVersion, kind)` → JSON Schema, from every CRD in `directories` of one of `groups`."""
    schemas = {}
    for directory in directories:
        for path in sorted(Path(directory).rglob("*.y*ml")):
            text = path.read_text(encoding="utf-8")
            # Parse only the files that can define a group we validate (the provider files are large).
            if not any(f"group: {group}\n" in text for group in groups):
                continue
            for document in yaml.load_all(text, Loader=yaml.CSafeLoader):
                if not isinstance(document, dict) or document.get("kind") != "CustomResourceDefinition":
                    continue
                spec = document["spec"]
                for version in spec["versions"]:
                    schema = version.get("schema", {}).get("openAPIV3Schema")
                    if schema is None or not version.get("served", True):
                        continue
                    key = (f"{spec['group']}/{version['name']}", spec["names"]["kind"])
                    schemas[key] = structural(schema, root=True)
    return schemas


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubernetes-version", required=True, help="e.g. 1.35")
    parser.add_argument("--crds", action="append", default=[], help="a directory of CRD YAML files")
    parser.add_argument("--defer-unknown", help="write objects of kinds with no schema here")
    parser.add_argument("objects", help="JSON array of {source, object}")
    args = parser.parse_args()

    with open(args.objects, encoding="utf-8") as file:
        items = json.load(file)
    directory = builtin_schemas(args.kubernetes_version)
    definitions = json.loads(directory.joinpath("_definitions.json").read_text(encoding="utf-8"))
    registry = referencing.Resource.from_contents(definitions) @ referencing.Registry()
    groups = {
        item["object"].get("apiVersion", "").rpartition("/")[0]
        for item in items
        if isinstance(item.get("object"), dict)
    }
    custom = crd_schemas(args.crds, groups - {""})
    validators = {}
    deferred = []
    count = 0
    for item in items:
        obj = item["object"]
        if not isinstance(obj, dict) or "apiVersion" not in obj or "kind" not in obj:
            errors = ["/: not a Kubernetes object (no apiVersion or kind)"]
        else:
            key = (obj["apiVersion"], obj["kind"])
            if key not in validators:
                schema = custom.get(key)
                if schema is None:
                    file = builtin_file(directory, *key)
                    schema = json.loads(file.read_text(encoding="utf-8")) if file.is_file() else None
                validators[key] = schema and jsonschema.Draft202012Validator(schema, registry=registry)
            validator = validators[key]
            if validator is None and args.defer_unknown:
                deferred.append(item)
                continue
            if validator is None:
                errors = [f"/: no schema for {key[0]} {key[1]}"]
            else:
                found = sorted(validator.iter_errors(obj), key=lambda error: list(map(str, error.path)))
                errors = [f"{pointer(error.path)}: {error.message}" for error in found]
        for error in errors:
            print(f"{describe(item)}: {error}")
            count += 1
    if args.defer_unknown:
        with open(args.defer_unknown, "w", encoding="utf-8") as file:
            json.dump(deferred, file)
    summary = (
        f"validate: {len(items)} objects, {count} errors, {len(deferred)} deferred "
        f"(Kubernetes {args.kubernetes_version}, {len(custom)} custom kinds)"
    )
    print(summary, file=sys.stderr)
    return 1 if count else 0


if __name__ == "__main__":
    sys.exit(main())
