#!/usr/bin/env bash
# Pushes image.tar to one region's ECR (credentials already set by OIDC), signs the pushed digest
# with cosign keyless, attests the SBOM, and records the digest in digests/<region>/<service>.
# Usage: push-image.sh <service> <aws-region> <registry> <region-directory-name>
set -euo pipefail
service=$1 aws_region=$2 registry=$3 region=$4

# The arguments come from nix/services.toml and repository variables; they become paths, image
# references and promotion branch contents, so anything unexpected stops here.
name_pattern='^[a-z0-9][a-z0-9-]*$'
for value in "$service" "$aws_region" "$region"; do
  [[ $value =~ $name_pattern ]] || { echo "push-image: unexpected name '$value'" >&2; exit 1; }
done
[[ $registry =~ ^[a-z0-9.-]+(:[0-9]+)?$ ]] || { echo "push-image: unexpected registry '$registry'" >&2; exit 1; }

aws ecr get-login-password --region "$aws_region" | skopeo login --username AWS --password-stdin "$registry"
skopeo copy --digestfile digest "docker-archive:image.tar" "docker://$registry/quilla/$service:$GITHUB_SHA"
reference="$registry/quilla/$service@$(cat digest)"
cosign sign --yes "$reference"
cosign attest --yes --type cyclonedx --predicate sbom.cdx.json "$reference"
mkdir -p "digests/$region"
echo "$reference" > "digests/$region/$service"
echo "pushed $reference"
