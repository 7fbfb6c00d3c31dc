"""Validates rendered built-in Kubernetes objects strictly (unknown fields are errors) with kubernetes-validate.

Usage: python3 validate-builtin.py --kubernetes-version 1.33 <objects.json>
The file is a JSON array of {"source": "<dir>", "object": {...}}. Prints one line per error to stdout,
a summary to stderr, and exits 1 when there is any error.
"""

import argparse
import json
import sys

import kubernetes_validate


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


def errors_of(obj, version):
    """The errors, each "<pointer>: <message>", of one object."""
    if not isinstance(obj, dict) or "apiVersion" not in obj or "kind" not in obj:
        return ["/: not a Kubernetes object (no apiVersion or kind)"]
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        return [f"/: no schema for {obj['apiVersion']} {obj['kind']}"]
    except kubernetes_validate.ValidationError as error:
        # kubernetes-validate reports the best-matching error only; fix it and run again for the next.
        return [f"{pointer(error.path)}: {error.message}"]
    return []


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubernetes-version", required=True, help="e.g. 1.33")
    parser.add_argument("objects", help="JSON array of {source, object}")
    args = parser.parse_args()

    with open(args.objects, encoding="utf-8") as file:
        items = json.load(file)
    count = 0
    for item in items:
        for error in errors_of(item["object"], args.kubernetes_version):
            print(f"{describe(item)}: {error}")
            count += 1
    summary = f"validate-builtin: {len(items)} objects, {count} errors (Kubernetes {args.kubernetes_version})"
    print(summary, file=sys.stderr)
    return 1 if count else 0


if __name__ == "__main__":
    sys.exit(main())
